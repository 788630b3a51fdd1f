"""Shared fixtures: signing keys, settings, the gateway app over real HTTP, and the real RabbitMQ."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.app import create_app
from gateway.app_keys import PUBLISHER
from gateway.send_cli import signed_headers
from gateway.server import ContractAppRunner
from gateway.settings import GatewaySettings
from infra import declare
from infra.settings import load_settings
from schemas import topology
from schemas.events import KNOWN_KINDS
from schemas.samples import sample_body
from tests.support.broker import (
    AMQP_URL,
    TEST_VHOST,
    delete_test_vhost,
    ensure_test_vhost,
    forget_kind,
    operator_dead_letters,
)
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.keys import new_key, write_public_keys

USES_BROKER = pytest.StashKey[bool]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run with broker tests starts from an empty vhost of its own, whatever an interrupted run left there; a run
    without them (`-m "not broker"`) asks no broker."""
    if not any(item.get_closest_marker("broker") for item in session.items):
        return
    if TEST_VHOST == "/":
        raise pytest.UsageError("HYPERCARD_TEST_VHOST=/: the suite deletes its vhost when it ends; name one of its own")
    session.stash[USES_BROKER] = True
    delete_test_vhost()
    ensure_test_vhost()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite's queues are deleted whatever the outcome: quorum queues left behind hold the broker's file handles."""
    if session.stash.get(USES_BROKER, False):
        delete_test_vhost()


# The dispositions the suite started with (Ctrl-C raises KeyboardInterrupt, SIGTERM ends the process).
STARTING_DISPOSITIONS = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


@pytest.fixture(autouse=True)
def signal_dispositions_restored() -> Iterator[None]:
    """Code run in the test process (infra.signals.stop_requested, from a test or a fixture of any scope) leaves SIGINT
    and SIGTERM ignored, as a draining process wants; every command a later test starts inherits that, and one that
    relies on asyncio.run's Ctrl-C handling never sees its Ctrl-C. Restored before and after each test."""
    _restore_dispositions()
    yield
    _restore_dispositions()


def _restore_dispositions() -> None:
    for signum, handler in STARTING_DISPOSITIONS.items():
        if signal.getsignal(signum) is not handler and handler is not None:
            signal.signal(signum, handler)


@pytest.fixture(scope="session")
def platform_key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="session")
def other_key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture
def public_key_file(tmp_path: Path, platform_key: rsa.RSAPrivateKey) -> Path:
    return write_public_keys(tmp_path / "platform-public.pem", platform_key)


@pytest.fixture
def sign(platform_key: rsa.RSAPrivateKey) -> Callable[..., dict[str, str]]:
    """Headers for a body, signed like the platform signs (by the platform key unless another is given)."""

    def signer(body: bytes, key: rsa.RSAPrivateKey | None = None, **extra: str) -> dict[str, str]:
        headers = signed_headers(key or platform_key, body, api_key="merchant-1")
        return {**headers, "Content-Type": "application/json", **extra}

    return signer


@pytest.fixture
def sample() -> Callable[[str], bytes]:
    return sample_body


ALL_QUEUES = [
    topology.UNROUTED_QUEUE,
    topology.INVALID_QUEUE,
    topology.UNVERIFIED_QUEUE,
    *(topology.kind_queue(kind) for kind in sorted(KNOWN_KINDS)),
    *(topology.dead_queue(kind) for kind in sorted(KNOWN_KINDS)),
]


@pytest.fixture(scope="session")
def test_vhost() -> Iterator[None]:
    """The suite's own vhost; at the end, no message an operator kept in `/` is gone."""
    before = operator_dead_letters()
    ensure_test_vhost()
    yield
    # After a fault test restarted RabbitMQ its quorum queues may take a moment to report their counts again.
    deadline = time.monotonic() + 60
    while True:
        after = operator_dead_letters()
        gone = {name: count for name, count in before.items() if after.get(name, 0) < count}
        if not gone or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not gone, f"the tests purged or deleted messages in the broker's default vhost /: {gone}"


@pytest.fixture
async def amqp(test_vhost) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on the real broker, with the project's topology declared and every queue purged."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await declare.declare_core(channel)
    for kind in KNOWN_KINDS:
        await declare.declare_kind(channel, kind)
    for name in ALL_QUEUES:
        await (await channel.get_queue(name)).purge()
    await forget_kind(channel, "CARD_STATUS_CHANGE")
    yield channel
    await connection.close()


class ContractTestServer(TestServer):
    """The test server with the gateway's own runner, so malformed HTTP is answered as in production."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return ContractAppRunner(self.app, **kwargs)


GatewayFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_gateway(aiohttp_client, public_key_file: Path) -> GatewayFactory:
    """The real app over real HTTP, connected to the real broker; settings overridden by keyword."""

    async def factory(wait_ready: bool = True, tracing: Any = None, **overrides: object) -> TestClient:
        overrides.setdefault("platform_public_key", str(public_key_file))
        overrides.setdefault("amqp_url", AMQP_URL)
        overrides.setdefault("id_secret", TEST_ID_SECRET)
        app = create_app(load_settings(GatewaySettings, {}, **overrides), tracing)
        client = await aiohttp_client(ContractTestServer(app))
        if wait_ready:
            assert await app[PUBLISHER].wait_ready(10), "the gateway did not connect to RabbitMQ"
        return client

    return factory


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, amqp) -> TestClient:
    return await make_gateway()
