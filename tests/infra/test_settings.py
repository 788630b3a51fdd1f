from __future__ import annotations

import pytest

from infra.settings import SettingsError, load_settings


def test_defaults():
    settings = load_settings({})
    assert settings.amqp_url == "amqp://guest:guest@localhost:5672/" and settings.port == 8080
    assert settings.signature_mode == "enforce" and settings.max_body_bytes == 65536 and settings.allowed_ips == ()


def test_values_and_lists_from_the_environment():
    settings = load_settings(
        {
            "HC_PORT": "9000",
            "HC_ALLOWED_IPS": "10.0.0.0/8, 192.168.1.1",
            "HC_EXTRA_PATHS": "/hc_sync/open=OPEN_CARD,/legacy",
            "HC_AMQP_URL": "amqp://a:5672/,amqp://b:5672/",
            "HC_RETRY_DELAYS": "1,2.5",
        }
    )
    assert settings.port == 9000 and settings.allowed_ips == ("10.0.0.0/8", "192.168.1.1")
    assert settings.extra_path_kinds == {"/hc_sync/open": "OPEN_CARD", "/legacy": None}
    assert settings.amqp_urls == ["amqp://a:5672/", "amqp://b:5672/"] and settings.retry_delays == (1.0, 2.5)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"HC_PORT": "eighty"}, "HC_PORT"),
        ({"HC_PORT": "70000"}, "HC_PORT"),
        ({"HC_SIGNATURE_MODE": "maybe"}, "HC_SIGNATURE_MODE"),
        ({"HC_ALLOWED_IPS": "10.0.0.0/8,not-an-ip"}, "HC_ALLOWED_IPS"),
        ({"HC_TRUSTED_PROXIES": "300.1.1.1"}, "HC_TRUSTED_PROXIES"),
        ({"HC_EXTRA_PATHS": "no-slash"}, "HC_EXTRA_PATHS"),
        ({"HC_MAX_BODY_BYTES": "-1"}, "HC_MAX_BODY_BYTES"),
        ({"HC_PUBLISH_TIMEOUT": "0"}, "HC_PUBLISH_TIMEOUT"),
        ({"HC_RETRY_DELAYS": "1,x"}, "HC_RETRY_DELAYS"),
    ],
)
def test_a_bad_value_names_its_variable(environ, variable):
    with pytest.raises(SettingsError, match=variable):
        load_settings(environ)
