"""Where RabbitMQ's management API is, for a broker URL: the same host, over https when the broker URL is amqps, so
the credentials of a TLS broker never go over plain http unless HC_MANAGEMENT_URL says so."""

from __future__ import annotations

from yarl import URL

HTTP_PORT = 15672
HTTPS_PORT = 15671  # RabbitMQ's management listener over TLS (management.ssl.port)


def management_base(amqp_url: str, explicit: str | None) -> URL:
    """HC_MANAGEMENT_URL when set (the operator chose it); else the broker's host, https on 15671 for amqps."""
    if explicit:
        return URL(explicit)
    url = URL(amqp_url)
    host = url.host or "127.0.0.1"
    if url.scheme == "amqps":
        return URL.build(scheme="https", host=host, port=HTTPS_PORT)
    return URL.build(scheme="http", host=host, port=HTTP_PORT)
