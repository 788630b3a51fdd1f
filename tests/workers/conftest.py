from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from infra import declare
from infra.settings import load_settings
from schemas import topology
from tests.support.broker import AMQP_URL
from tests.support.database import DATABASE_URL, reset_database
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.tracked_kind import TEST_DELAYS  # importing it registers TEST_TRACKED, as --handlers does
from workers.app import create_worker
from workers.registry import load_handler_modules
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

load_handler_modules([], use_entry_points=False)


TEST_KINDS = ("TEST_TRACKED",)


@pytest.fixture
async def db(amqp) -> AsyncIterator[asyncpg.Connection]:
    """A fresh database, and the test kinds' queues empty."""
    await reset_database()
    for kind in TEST_KINDS:
        await declare.declare_kind(amqp, kind, topology.DEFAULT_DELIVERY_LIMIT, TEST_DELAYS)
        for delay in TEST_DELAYS:
            await (await amqp.get_queue(topology.retry_queue(kind, delay))).purge()
        for queue in (topology.kind_queue(kind), topology.dead_queue(kind)):
            await (await amqp.get_queue(queue)).purge()
    connection = await asyncpg.connect(DATABASE_URL)
    yield connection
    await connection.close()


WorkerFactory = Callable[..., Awaitable[WorkerRuntime]]


@pytest.fixture
async def make_worker(db) -> AsyncIterator[WorkerFactory]:
    runtimes: list[WorkerRuntime] = []

    async def factory(*kinds: str, tracing: Any = None, **overrides: object) -> WorkerRuntime:
        overrides.setdefault("database_url", DATABASE_URL)
        overrides.setdefault("amqp_url", AMQP_URL)
        overrides.setdefault("retry_delays", TEST_DELAYS)
        overrides.setdefault("shutdown_grace", 5)
        overrides.setdefault("id_secret", TEST_ID_SECRET)
        settings = load_settings(WorkerSettings, {}, **overrides)
        runtime = create_worker(settings, list(kinds), tracing=tracing)
        await runtime.start()
        assert runtime.consuming, "the worker did not start consuming"
        runtimes.append(runtime)
        return runtime

    yield factory
    for runtime in runtimes:
        await runtime.stop()


