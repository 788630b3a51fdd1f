from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.keys import PUBLISHER
from schemas.settings import load_settings

GatewayFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_gateway(aiohttp_client, public_key_file: Path) -> GatewayFactory:
    """The real app over real HTTP, connected to the real broker; settings overridden by keyword."""

    async def factory(wait_ready: bool = True, **overrides: object) -> TestClient:
        overrides.setdefault("platform_public_key", str(public_key_file))
        overrides.setdefault("amqp_url", "amqp://guest:guest@127.0.0.1:5672/")
        app = create_app(load_settings({}, **overrides))
        client = await aiohttp_client(app)
        if wait_ready:
            assert await app[PUBLISHER].wait_ready(10), "the gateway did not connect to RabbitMQ"
        return client

    return factory


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, amqp) -> TestClient:
    return await make_gateway()
