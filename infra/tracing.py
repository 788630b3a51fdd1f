"""Tracing is opt-in: on when the `otel` extra is installed and the operator names an exporter the standard way,
`OTEL_TRACES_EXPORTER` (`otlp`, `console`) or an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and `OTEL_SDK_DISABLED` is not `true`. Off, nothing of OpenTelemetry is
imported and the gateway and the workers hold None where they would hold a `Tracing`: a None check is the whole cost.
The spans themselves are `infra.spans`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from infra.settings import SettingsError

if TYPE_CHECKING:
    from infra.spans import Tracing

log = structlog.get_logger("tracing")
EXPORTERS = ("otlp", "console")
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
OTLP_PROTOCOLS = ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")


def requested_exporters(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The span exporters the environment asks for; none: tracing is off. A value this project cannot honour stops
    start-up, naming its variable."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    named = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if not named:
        named = ["otlp"] if any(environ.get(variable, "").strip() for variable in OTLP_ENDPOINTS) else []
    exporters = tuple(name for name in named if name != "none")
    unknown = sorted(set(exporters) - set(EXPORTERS))
    if unknown:
        raise SettingsError(f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} not supported; use otlp, console or none")
    for variable in OTLP_PROTOCOLS:
        protocol = environ.get(variable, "").strip()
        if "otlp" in exporters and protocol and protocol != "http/protobuf":
            raise SettingsError(f"{variable}: {protocol} not supported; the otel extra exports OTLP as http/protobuf")
    return exporters


def start_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The process's `Tracing`, set as OpenTelemetry's global provider too (so a handler's own spans join the
    delivery's trace); None when tracing is off, or asked for without the `otel` extra installed (logged)."""
    exporters = requested_exporters(environ)
    if not exporters:
        return None
    try:
        from infra import spans
    except ImportError as error:
        log.warning("tracing asked for but OpenTelemetry is not installed; running without it: "
                    "install the otel extra (pip install 'hypercard-gateway[otel]')", missing=error.name)  # fmt: skip
        return None
    tracing = spans.process_tracing(service_name, exporters)
    log.info("tracing on", exporters=list(exporters), service=service_name)
    return tracing
