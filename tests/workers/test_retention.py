"""Inbox retention on the real PostgreSQL: keys past the window go, keys inside it stay and still make a retry a
duplicate, in bounded batches, one pruner at a time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from infra.settings import SettingsError, load_settings
from tests.support.database import DATABASE_URL, reset_database
from tests.support.network import free_port
from tests.support.waiting import eventually
from workers import database
from workers.metrics import WorkerMetrics
from workers.retention import InboxPruner, PruneRound
from workers.settings import WorkerSettings

pytestmark = pytest.mark.database
PATH = "/hc_sync/common"


@pytest.fixture
async def inbox() -> AsyncIterator[asyncpg.Connection]:
    """A fresh, migrated database."""
    await reset_database()
    pool = await database.create_pool(DATABASE_URL, 2)
    await database.migrate(pool)
    await pool.close()
    connection = await asyncpg.connect(DATABASE_URL)
    yield connection
    await connection.close()


async def add_keys(db: asyncpg.Connection, prefix: str, count: int, age_days: float) -> None:
    await db.execute(
        """INSERT INTO hypercard_inbox (kind, idempotency_key, event_id, handled_at)
           SELECT 'TEST', $1 || n, 'e' || n, now() - make_interval(secs => $3) FROM generate_series(1, $2) AS n""",
        prefix, count, age_days * 86400,
    )  # fmt: skip


async def keys(db: asyncpg.Connection, prefix: str) -> int:
    return await db.fetchval("SELECT count(*) FROM hypercard_inbox WHERE idempotency_key LIKE $1 || '%'", prefix)


def pruner(metrics: WorkerMetrics | None = None, **options) -> InboxPruner:
    return InboxPruner(DATABASE_URL, metrics or WorkerMetrics(), retention_days=30, **options)


async def test_keys_past_the_window_are_deleted_and_keys_inside_it_kept(inbox):
    await add_keys(inbox, "old", 40, age_days=31)
    await add_keys(inbox, "aging", 20, age_days=29.9)
    await add_keys(inbox, "new", 10, age_days=0)
    metrics = WorkerMetrics()
    assert await pruner(metrics).prune_once() == PruneRound(rows=40, batches=1)
    assert (await keys(inbox, "old"), await keys(inbox, "aging"), await keys(inbox, "new")) == (0, 20, 10)
    assert metrics.inbox_pruned._value.get() == 40


async def test_batches_are_bounded(inbox):
    await add_keys(inbox, "old", 23, age_days=45)
    assert await pruner(batch_rows=5, batch_pause=0).prune_once() == PruneRound(rows=23, batches=5)
    assert await keys(inbox, "old") == 0


async def test_two_pruners_at_once_only_one_prunes(inbox):
    await add_keys(inbox, "old", 20_000, age_days=40)
    first, second = WorkerMetrics(), WorkerMetrics()
    rounds = await asyncio.gather(
        pruner(first, batch_rows=1000, batch_pause=0.02).prune_once(),
        pruner(second, batch_rows=1000, batch_pause=0.02).prune_once(),
    )
    assert sorted(rounds, key=lambda r: r is None) == [PruneRound(rows=20_000, batches=21), None]
    assert first.inbox_pruned._value.get() + second.inbox_pruned._value.get() == 20_000
    assert await keys(inbox, "old") == 0


async def test_a_failing_round_is_counted_and_the_next_one_tries_again(inbox):
    metrics = WorkerMetrics()
    unreachable = InboxPruner(f"postgresql://postgres@127.0.0.1:{free_port()}/x", metrics, retention_days=30)
    task = asyncio.create_task(unreachable.run(interval=0.05))
    try:
        await eventually(lambda: reached(metrics.inbox_prune_failures, 3))
        assert not task.done()
    finally:
        task.cancel()


async def reached(counter, value: float) -> bool:
    return counter._value.get() >= value


@pytest.mark.broker
async def test_a_retry_inside_the_window_is_still_a_duplicate_one_past_it_is_handled_again(
    gateway, make_worker, db, sign
):
    runtime = await make_worker("TEST_TRACKED", inbox_prune_interval=0.2)

    async def send(token: str) -> None:
        body = json.dumps({"notify_type": "TEST_TRACKED", "token": token}).encode()
        assert (await gateway.post(PATH, data=body, headers=sign(body))).status == 200

    async def effects(token: str, count: int = 1) -> bool:
        return await db.fetchval("SELECT count(*) FROM test_effects WHERE token = $1", token) == count

    await send("past")
    await eventually(lambda: effects("past"))
    await db.execute("UPDATE hypercard_inbox SET handled_at = now() - interval '31 days'")
    await send("inside")
    await eventually(lambda: effects("inside"))
    recent = "handled_at > now() - interval '1 day'"
    await db.execute(f"UPDATE hypercard_inbox SET handled_at = now() - interval '29 days' WHERE {recent}")
    await eventually(lambda: reached(runtime.metrics.inbox_pruned, 1))  # the worker's own pruning round
    assert await db.fetchval("SELECT count(*) FROM hypercard_inbox") == 1
    await send("inside")  # the platform's retry, inside the window
    await send("past")
    await eventually(lambda: effects("past", 2))
    await eventually(lambda: reached(runtime.metrics.duplicates.labels("TEST_TRACKED"), 1))
    assert await effects("inside") and runtime.metrics.inbox_pruned._value.get() == 1


def test_a_window_shorter_than_the_platforms_retries_is_refused_naming_the_variable():
    with pytest.raises(SettingsError, match="HC_INBOX_RETENTION_DAYS"):
        load_settings(WorkerSettings, {"HC_INBOX_RETENTION_DAYS": "1"})
    assert load_settings(WorkerSettings, {}).inbox_retention_days == 30
