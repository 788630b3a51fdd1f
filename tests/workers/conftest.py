from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from infra import declare
from infra.settings import load_settings
from schemas import topology
from tests.workers.effects import CREATE_TABLE, TEST_REGISTRY
from workers.registry import REGISTRY, load_handler_modules
from workers.runtime import WorkerRuntime

DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
load_handler_modules([], use_entry_points=False)


async def reset_database() -> None:
    """A fresh schema: every project table dropped, so the migrations run as on a new machine."""
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND (tablename LIKE 'hypercard_%' OR tablename = 'test_effects')"
        )
        for row in tables:
            await connection.execute(f'DROP TABLE "{row["tablename"]}" CASCADE')
        await connection.execute(CREATE_TABLE)
    finally:
        await connection.close()


TEST_KINDS = ("TEST_TRACKED",)
TEST_DELAYS = (0.2, 0.4, 0.8)


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

    async def factory(*kinds: str, **overrides: object) -> WorkerRuntime:
        overrides.setdefault("database_url", DATABASE_URL)
        overrides.setdefault("amqp_url", "amqp://guest:guest@127.0.0.1:5672/")
        overrides.setdefault("retry_delays", TEST_DELAYS)
        overrides.setdefault("shutdown_grace", 5)
        settings = load_settings({}, **overrides)
        registrations = [(TEST_REGISTRY.registrations.get(k) or REGISTRY.registrations[k]) for k in kinds]
        runtime = WorkerRuntime(settings, registrations)
        await runtime.start()
        assert runtime.consuming, "the worker did not start consuming"
        runtimes.append(runtime)
        return runtime

    yield factory
    for runtime in runtimes:
        await runtime.stop()


async def eventually(check: Callable[[], Awaitable[object]], timeout: float = 10.0, interval: float = 0.05) -> object:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true after {timeout}s: {check.__qualname__}")
        await asyncio.sleep(interval)
