"""Where RabbitMQ's management API is, for a broker URL: the same host, over https when the broker URL is amqps, so
the credentials of a TLS broker never go over plain http unless HC_MANAGEMENT_URL says so."""

from __future__ import annotations

from yarl import URL

from infra.settings import SettingsError

HTTP_PORT = 15672
HTTPS_PORT = 15671  # RabbitMQ's management listener over TLS (management.ssl.port)


def management_url_setting(value: str | None) -> URL | None:
    """HC_MANAGEMENT_URL as set (None when not), refused unless it is an http(s) URL with a host and a valid port.
    The value is not echoed: it may carry credentials."""
    if not value:
        return None
    refused = SettingsError(
        "HC_MANAGEMENT_URL is not the management API's address: give an http:// or https:// URL with a host, such "
        "as http://rabbitmq:15672, or unset it (then the broker's host, port 15672, https on 15671 for amqps)"
    )
    try:
        url = URL(value)
        url.port  # noqa: B018 (yarl checks the port when it is read)
    except ValueError:
        raise refused from None
    if url.scheme not in ("http", "https") or not url.host:
        raise refused
    return url


def management_base(amqp_url: str, explicit: str | None) -> URL:
    """HC_MANAGEMENT_URL when set (the operator chose it); else the broker's host, https on 15671 for amqps."""
    if (chosen := management_url_setting(explicit)) is not None:
        return chosen
    url = URL(amqp_url)
    host = url.host or "127.0.0.1"
    if url.scheme == "amqps":
        return URL.build(scheme="https", host=host, port=HTTPS_PORT)
    return URL.build(scheme="http", host=host, port=HTTP_PORT)
