"""The management API is reached with the broker URL's credentials: over https when the broker URL is amqps, never
in clear (issue 26, finding 8). A listener stands where the management API would be and records what it is sent:
on free ports, named as the management API's default ports (the broker's own may be listening on 15672)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest

from infra import management
from infra.broker_setup import set_up
from infra.permissions import GATEWAY
from tests.support.network import free_port
from workers.status import from_management

PASSWORD = "amqps0only0secret"
HOST = "127.0.0.1"


class Listener:
    """Accepts on the management API's ports of HOST and keeps the first bytes of every connection."""

    def __init__(self) -> None:
        self.received: dict[int, bytes] = {}
        self.servers: list[asyncio.Server] = []
        self.http = self.https = 0

    async def start(self, *ports: int) -> None:
        for port in ports:
            self.servers.append(await asyncio.start_server(self._keeper(port), HOST, port, reuse_address=True))

    def _keeper(self, port: int):
        async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                self.received[port] = self.received.get(port, b"") + await asyncio.wait_for(reader.read(4096), 2)
            except TimeoutError:
                pass
            writer.close()

        return keep

    def in_clear(self) -> bool:
        token = base64.b64encode(f"hypercard-admin:{PASSWORD}".encode())
        return any(PASSWORD.encode() in data or token in data for data in self.received.values())


@pytest.fixture
async def listener(monkeypatch) -> AsyncIterator[Listener]:
    http, https = free_port(), free_port()
    monkeypatch.setattr(management, "HTTP_PORT", http)
    monkeypatch.setattr(management, "HTTPS_PORT", https)
    found = Listener()
    await found.start(http, https)
    found.http, found.https = http, https
    yield found
    for server in found.servers:
        server.close()


AMQPS_URL = f"amqps://hypercard-admin:{PASSWORD}@{HOST}:5671/hypercard"


async def test_hypercard_status_never_sends_the_password_of_an_amqps_broker_over_http(listener):
    with pytest.raises((aiohttp.ClientError, OSError, TimeoutError)):
        await from_management(AMQPS_URL)
    assert not listener.in_clear(), "the broker password went in clear to the management API's http port"
    assert listener.https in listener.received, "the management API of an amqps broker is https (15671)"


async def test_the_broker_set_up_never_sends_the_password_of_an_amqps_broker_over_http(listener):
    roles = [(GATEWAY, f"amqps://hypercard-gateway:pw0gateway@{HOST}:5671/hypercard")]
    with pytest.raises((aiohttp.ClientError, OSError, TimeoutError)):
        await set_up(AMQPS_URL, roles, kinds=["OPEN_CARD"], delivery_limit=10)
    assert not listener.in_clear(), "the administrator's password went in clear to the management API's http port"
    assert listener.https in listener.received


@pytest.mark.parametrize(
    ("amqp_url", "explicit", "base"),
    [
        ("amqp://u:p@mq:5672/", None, "http://mq:15672"),
        ("amqps://u:p@mq:5671/", None, "https://mq:15671"),
        ("amqps://u:p@mq:5671/", "https://mq.example:8443", "https://mq.example:8443"),
        ("amqps://u:p@mq:5671/", "http://127.0.0.1:15672", "http://127.0.0.1:15672"),  # stated by the operator
    ],
)
def test_the_management_api_follows_the_broker_url_scheme_unless_named(amqp_url, explicit, base):
    from infra.management import management_base  # new with issue 26: here, so the tests above run on the old code

    assert str(management_base(amqp_url, explicit)) == base
