from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from gateway.settings import GatewaySettings
from infra.settings import KNOWN_VARIABLES, BrokerSettings, SettingsError, env_name, load_settings
from workers.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]


def test_defaults():
    settings = load_settings(GatewaySettings, {})
    assert settings.amqp_url == "amqp://guest:guest@localhost:5672/" and settings.port == 8080
    assert settings.signature_mode == "enforce" and settings.max_body_bytes == 65536 and settings.allowed_ips == ()
    assert settings.gateway_metrics_port == 9101 and settings.api_key == ()
    worker = load_settings(WorkerSettings, {})
    assert worker.metrics_port == 9100 and worker.retry_delays == (1.0, 10.0, 60.0, 600.0, 3600.0)


def test_values_and_lists_from_the_environment():
    environ = {
        "HC_PORT": "9000",
        "HC_ALLOWED_IPS": "10.0.0.0/8, 192.168.1.1",
        "HC_EXTRA_PATHS": "/hc_sync/open=OPEN_CARD,/legacy",
        "HC_AMQP_URL": "amqp://a:5672/,amqp://b:5672/",
        "HC_API_KEY": "old-key, new-key",
        "HC_RETRY_DELAYS": "1,2.5",
    }
    settings = load_settings(GatewaySettings, environ)
    assert settings.port == 9000 and settings.allowed_ips == ("10.0.0.0/8", "192.168.1.1")
    assert settings.extra_path_kinds == {"/hc_sync/open": "OPEN_CARD", "/legacy": None}
    assert settings.amqp_urls == ["amqp://a:5672/", "amqp://b:5672/"] and settings.api_key == ("old-key", "new-key")
    assert load_settings(WorkerSettings, environ).retry_delays == (1.0, 2.5)


def test_what_both_processes_must_agree_on_is_one_setting_in_one_place():
    environ = {"HC_DELIVERY_LIMIT": "7"}
    assert {load_settings(kind, environ).delivery_limit for kind in (GatewaySettings, WorkerSettings)} == {7}
    assert issubclass(GatewaySettings, BrokerSettings) and issubclass(WorkerSettings, BrokerSettings)
    assert "delivery_limit" not in GatewaySettings.__annotations__ | WorkerSettings.__annotations__


@pytest.mark.parametrize(
    ("kind", "environ", "variable"),
    [
        (GatewaySettings, {"HC_PORT": "eighty"}, "HC_PORT"),
        (GatewaySettings, {"HC_PORT": "70000"}, "HC_PORT"),
        (GatewaySettings, {"HC_SIGNATURE_MODE": "maybe"}, "HC_SIGNATURE_MODE"),
        (GatewaySettings, {"HC_ALLOWED_IPS": "10.0.0.0/8,not-an-ip"}, "HC_ALLOWED_IPS"),
        (GatewaySettings, {"HC_TRUSTED_PROXIES": "300.1.1.1"}, "HC_TRUSTED_PROXIES"),
        (GatewaySettings, {"HC_EXTRA_PATHS": "no-slash"}, "HC_EXTRA_PATHS"),
        (GatewaySettings, {"HC_MAX_BODY_BYTES": "-1"}, "HC_MAX_BODY_BYTES"),
        (GatewaySettings, {"HC_PUBLISH_TIMEOUT": "0"}, "HC_PUBLISH_TIMEOUT"),
        (WorkerSettings, {"HC_RETRY_DELAYS": "1,x"}, "HC_RETRY_DELAYS"),
        (WorkerSettings, {"HC_DELIVERY_LIMIT": "0"}, "HC_DELIVERY_LIMIT"),
    ],
)
def test_a_bad_value_names_its_variable(kind, environ, variable):
    with pytest.raises(SettingsError, match=variable):
        load_settings(kind, environ)


def test_a_misspelt_variable_stops_start_up_naming_the_setting_it_resembles():
    with pytest.raises(SettingsError, match=r"HC_ALLOWED_IP\b.*HC_ALLOWED_IPS"):
        load_settings(GatewaySettings, {"HC_ALLOWED_IP": "10.0.0.0/8"})
    with pytest.raises(SettingsError, match=r"HC_API_KEYS.*HC_API_KEY\b"):
        load_settings(WorkerSettings, {"HC_API_KEYS": "merchant-1"})


def test_one_environment_serves_every_process_of_the_project():
    """docker-compose gives every service one environment: a worker accepts the gateway's settings and the
    variables the tools read, and the other way round."""
    environ = {
        "HC_ALLOWED_IPS": "10.0.0.0/8", "HC_API_KEY": "merchant-1", "HC_PROCESSES": "2",
        "HC_DATABASE_URL": "postgresql://db/hypercard", "HC_RETRY_DELAYS": "1,2", "HC_MANAGEMENT_URL": "http://mq:15672",
        "HC_SEND_URL": "http://127.0.0.1:8080/hc_sync/common",
    }  # fmt: skip
    assert load_settings(WorkerSettings, environ).retry_delays == (1.0, 2.0)
    assert load_settings(GatewaySettings, environ).allowed_ips == ("10.0.0.0/8",)
    assert load_settings(BrokerSettings, environ).amqp_url  # hypercard-status and hypercard-replay


def variables_named_in_the_repository() -> set[str]:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    names: set[str] = set()
    for name in files:
        path = REPO / name
        if path.is_file() and path not in {REPO / "infra/settings.py", Path(__file__)}:
            names |= set(re.findall(r"\bHC_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="ignore")))
    return names


def test_every_variable_of_the_project_is_known_and_every_known_one_is_used():
    fields = {env_name(f.name) for kind in (GatewaySettings, WorkerSettings) for f in msgspec.structs.fields(kind)}
    assert fields <= KNOWN_VARIABLES, f"add {fields - KNOWN_VARIABLES} to infra.settings.KNOWN_VARIABLES"
    assert variables_named_in_the_repository() == KNOWN_VARIABLES


@pytest.mark.parametrize(
    ("command", "typo", "meant"),
    [
        (["hypercard-gateway"], "HC_ALLOWED_IP", "HC_ALLOWED_IPS"),
        (["hypercard-worker", "--all"], "HC_API_KEYS", "HC_API_KEY"),
    ],
)
def test_a_process_given_a_misspelt_variable_does_not_start(command, typo, meant):
    # Nothing to reach: a process that started anyway would only retry its connections until the timeout.
    unreachable = {"HC_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/", "HC_DATABASE_URL": "postgresql://127.0.0.1:1/x"}
    env = {**os.environ, **unreachable, typo: "10.0.0.0/8"}
    script = Path(sys.executable).parent / command[0]
    result = subprocess.run([str(script), *command[1:]], capture_output=True, text=True, timeout=20, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert typo in result.stderr and meant in result.stderr and "Traceback" not in result.stderr


# Each of these started the gateway with its safeguard off and no word (issue 26, finding 7).
@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"HC_ALLOWED_IPS": ""}, "HC_ALLOWED_IPS"),
        ({"HC_ALLOWED_IPS": ","}, "HC_ALLOWED_IPS"),
        ({"HC_API_KEY": " , "}, "HC_API_KEY"),
        ({"HC_TRUSTED_PROXIES": " "}, "HC_TRUSTED_PROXIES"),
    ],
    ids=["HC_ALLOWED_IPS=", "HC_ALLOWED_IPS=,", "HC_API_KEY=' , '", "HC_TRUSTED_PROXIES=' '"],
)
def test_a_list_that_is_set_but_empty_once_split_stops_start_up(environ, variable):
    with pytest.raises(SettingsError, match=rf"{variable}: set but empty"):
        load_settings(GatewaySettings, environ)


@pytest.mark.parametrize("name", ["hc_allowed_ips", "Hc_Api_Key", "hc_signature_mode"])
def test_a_lower_case_variable_stops_start_up_naming_the_upper_case_setting(name):
    with pytest.raises(SettingsError, match=rf"{name} \(did you mean {name.upper()}\?\)"):
        load_settings(GatewaySettings, {name: "10.0.0.0/8"})


@pytest.mark.parametrize(
    "proxies", ["0.0.0.0/0", "::/0", "0.0.0.0/0,::/0", "0.0.0.0/1,128.0.0.0/1", "10.0.0.0/8,::/0"]
)
def test_trusted_proxies_covering_every_address_are_refused_without_the_override(proxies):
    """Trusting every address as a proxy lets any client choose the address the allow-list sees."""
    with pytest.raises(SettingsError, match="HC_TRUSTED_PROXIES: .* every .* address.*HC_TRUST_ANY_PROXY"):
        load_settings(GatewaySettings, {"HC_TRUSTED_PROXIES": proxies})
    overridden = load_settings(GatewaySettings, {"HC_TRUSTED_PROXIES": proxies, "HC_TRUST_ANY_PROXY": "true"})
    assert overridden.trusted_proxies == tuple(proxies.split(","))


def test_trusted_proxies_of_a_network_are_accepted():
    assert load_settings(GatewaySettings, {"HC_TRUSTED_PROXIES": "172.16.0.0/12,fd00::/8"}).trusted_proxies == (
        "172.16.0.0/12",
        "fd00::/8",
    )
