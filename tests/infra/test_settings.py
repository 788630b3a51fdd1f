from __future__ import annotations

import pytest

from gateway.settings import GatewaySettings
from infra.settings import BrokerSettings, SettingsError, load_settings
from workers.settings import WorkerSettings


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
