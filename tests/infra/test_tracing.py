"""Tracing is opt-in (infra.tracing): off unless the standard OTEL_* variables ask for an exporter, and off it imports
nothing of OpenTelemetry into the gateway or the workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import SettingsError
from infra.tracing import requested_exporters

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "gateway-eu"}, ()),  # naming the service asks for nothing
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, Console"}, ("otlp", "console")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, ()),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"}, ()),
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_ask_for_an_exporter(environ, exporters):
    assert requested_exporters(environ) == exporters


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
         "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ],
)  # fmt: skip
def test_what_cannot_be_honoured_stops_start_up_naming_the_variable(environ, variable):
    with pytest.raises(SettingsError, match=variable):
        requested_exporters(environ)


# The gateway's and a worker's whole set-up, as their CLIs do it, in a fresh interpreter; then which modules of
# OpenTelemetry it imported.
SET_UP = """
import json, sys
from gateway.app import create_app
from gateway.cli import main as gateway_main
from gateway.settings import GatewaySettings
from infra.settings import load_settings
from infra.tracing import start_tracing
from workers.app import create_worker
from workers.cli import main as worker_main
from workers.registry import load_handler_modules
from workers.settings import WorkerSettings

secret = "0123456789abcdef" * 4
gateway = create_app(load_settings(GatewaySettings, {}, signature_mode="off", id_secret=secret),
                     start_tracing("hypercard-gateway"))
load_handler_modules([], use_entry_points=False)
worker = create_worker(load_settings(WorkerSettings, {}, id_secret=secret), ["RECHARGE"],
                       tracing=start_tracing("hypercard-worker"))
print(json.dumps({"traced": worker.tracing is not None,
                  "modules": sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")}))
"""


def set_up(**otel: str) -> dict:
    environ = {name: value for name, value in os.environ.items() if not name.startswith(("OTEL_", "HC_"))}
    result = subprocess.run([sys.executable, "-c", SET_UP], cwd=REPO, env={**environ, **otel}, capture_output=True,
                            text=True, timeout=60, check=True)  # fmt: skip
    return json.loads(result.stdout.splitlines()[-1])


def test_off_nothing_of_opentelemetry_is_imported():
    assert set_up() == {"traced": False, "modules": []}
    assert set_up(OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="console") == {"traced": False, "modules": []}


def test_on_the_gateway_and_the_worker_trace():
    found = set_up(OTEL_TRACES_EXPORTER="console")
    assert found["traced"] and "opentelemetry.sdk.trace" in found["modules"]
