"""Deliveries handled in batches: one transaction and one claim statement for many, a savepoint per handler, acks
after the commit; a failure retries only its own message, a kill mid-batch loses nothing and doubles nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import aio_pika
import asyncpg
import msgspec
import pytest
import structlog

from infra.settings import load_settings
from schemas import topology
from tests.support.broker import TEST_VHOST, take
from tests.support.database import DATABASE_URL
from tests.support.processes import worker_process
from tests.support.waiting import eventually
from workers.settings import WorkerSettings

pytestmark = [pytest.mark.broker, pytest.mark.database]
KIND = "TEST_TRACKED"


async def enqueue(amqp, *events: dict) -> None:
    """Put events in the kind's queue before a worker consumes it, so that they are delivered together."""
    for event in events:
        body = json.dumps({"notify_type": KIND, **event}).encode()
        message = aio_pika.Message(body, headers={"event_id": f"id-{event['token']}"}, delivery_mode=2)
        await amqp.default_exchange.publish(message, routing_key=topology.kind_queue(KIND))


async def effects(db) -> dict[str, list[int]]:
    rows = await db.fetch("SELECT token, attempt FROM test_effects ORDER BY attempt")
    found: dict[str, list[int]] = {}
    for row in rows:
        found.setdefault(row["token"], []).append(row["attempt"])
    return found


async def test_one_transaction_for_many_and_a_failure_retries_only_its_own_message(make_worker, db, amqp):
    plain = [{"token": f"plain-{n}"} for n in range(20)]
    await enqueue(
        amqp,
        *plain[:10],
        {"token": "write-then-fail", "outcome": "write_then_fail", "fail_until": 2},
        {"token": "give-up", "outcome": "give_up"},
        {"token": "skip", "outcome": "skip"},
        {"token": "plain-3"},  # the same notification again, in the same batch
        {"token": "slow-query", "outcome": "pg_sleep", "sleep": 5, "fail_until": 2},
        *plain[10:],
    )
    runtime = await make_worker(KIND, handler_timeout=0.5)

    wanted = {event["token"]: [1] for event in plain} | {"write-then-fail": [2], "slow-query": [2]}
    assert await eventually(lambda: _equal(effects(db), wanted), timeout=20)
    # Claimed in one statement: the inbox rows of the batch share their transaction.
    transactions = await db.fetchval("SELECT count(DISTINCT xmin::text) FROM hypercard_inbox")
    assert transactions < len(wanted) / 2
    assert runtime.metrics.batch_size._sum.get() >= 20  # noqa: SLF001
    (dead,) = await take(amqp, topology.dead_queue(KIND))
    assert msgspec.json.decode(dead.body)["token"] == "give-up"
    assert dead.headers["error_type"] == "GiveUp"

    async def every_delivery_counted() -> bool:  # the 25 sent and the 2 retries: no delivery is left to come
        counted = {name: getattr(runtime.metrics, name).labels(KIND)._value.get() for name in  # noqa: SLF001
                   ("handled", "duplicates", "skipped", "retried", "dead_lettered")}  # fmt: skip
        return counted == {"handled": 22, "duplicates": 1, "skipped": 1, "retried": 2, "dead_lettered": 1}

    await eventually(every_delivery_counted)
    await eventually(lambda: _none_unsettled(KIND))
    assert await effects(db) == wanted


async def test_a_batch_of_one_per_transaction_when_the_size_is_1(make_worker, db, amqp):
    await enqueue(amqp, *[{"token": f"single-{n}"} for n in range(6)], {"token": "single-2"},
                  {"token": "fails", "fail_until": 2})  # fmt: skip
    runtime = await make_worker(KIND, batch_size=1)
    wanted = {f"single-{n}": [1] for n in range(6)} | {"fails": [2]}
    assert await eventually(lambda: _equal(effects(db), wanted), timeout=10)
    assert await db.fetchval("SELECT count(DISTINCT xmin::text) FROM hypercard_inbox") == len(wanted)
    assert runtime.metrics.batch_size._sum.get() == 0  # noqa: SLF001


async def test_a_batch_held_up_by_another_transactions_lock_is_handled_one_delivery_at_a_time(make_worker, db, amqp):
    """Another transaction holds a row the batch updates for longer than the batch's lock timeout: the batch is rolled
    back (it might otherwise be half of a deadlock) and its deliveries handled one per transaction, once each."""
    await db.execute("DROP TABLE IF EXISTS test_hot")
    await db.execute("CREATE TABLE test_hot (touched integer NOT NULL); INSERT INTO test_hot VALUES (0)")
    tokens = [f"hot-{n}" for n in range(10)]
    await enqueue(amqp, *[{"token": t, "touch_hot": n % 2 == 0} for n, t in enumerate(tokens)])
    async with db.transaction():
        await db.execute("SELECT * FROM test_hot FOR UPDATE")  # held while the worker starts and takes its batch
        runtime = await make_worker(KIND, batch_wait=0.2)
        # The batch gave up on the lock, and the first of its deliveries, alone now, waits for the row.
        await eventually(lambda: _gauge_at_least(runtime.metrics.batch_rollbacks.labels("lock"), 1))
        await eventually(lambda: _waiting_on_a_lock(db))
        assert await _other_connection_effects() == 0  # nothing committed while the row is held
    wanted = {token: [1] for token in tokens}
    assert await eventually(lambda: _equal(effects(db), wanted), timeout=20)
    assert await db.fetchval("SELECT touched FROM test_hot") == 5
    assert runtime.metrics.retried.labels(KIND)._value.get() == 0  # noqa: SLF001 - contention is not the event's fault
    assert runtime.metrics.batch_size._sum.get() >= 10  # noqa: SLF001 - it was tried as a batch first
    assert runtime.metrics.batch_rollbacks.labels("lock")._value.get() >= 1  # noqa: SLF001


async def test_worker_killed_mid_batch_loses_nothing_and_doubles_nothing(db, amqp, tmp_path):
    tokens = [f"k-{n}" for n in range(30)]
    # The batch's 16th handler takes 3 s: the first fifteen are done inside the open transaction when the kill comes.
    await enqueue(amqp, *[{"token": t, "sleep": 3.0 if n == 15 else 0} for n, t in enumerate(tokens)])
    first = worker_process(tmp_path, KIND, "--handlers", "tests.support.tracked_kind", name="first",
                           env={"HC_BATCH_SIZE": "64", "HC_PREFETCH": "64", "HC_BATCH_WAIT": "0.5"})  # fmt: skip
    try:
        await eventually(lambda: _queue_taken(amqp), timeout=20)
        # The kill lands inside the batch: its transaction idle for a while after the savepoint of its 16th handler
        # (the one that sleeps), the first fifteen handled in it.
        await eventually(lambda: _batch_held_in_a_handler(db), timeout=20)
        first.signal(signal.SIGKILL)
        first.wait()
    finally:
        first.stop()
    assert await effects(db) == {}  # the batch was cut before its commit: nothing of it is visible
    assert await db.fetchval("SELECT count(*) FROM hypercard_inbox") == 0

    second = worker_process(tmp_path, KIND, "--handlers", "tests.support.tracked_kind", name="second")
    try:
        wanted = {token: [1] for token in tokens}
        assert await eventually(lambda: _equal(effects(db), wanted), timeout=30)
        await eventually(lambda: _none_unsettled(KIND), timeout=30)  # every delivery had its frame: none comes back
        assert await effects(db) == wanted
    finally:
        second.stop()
    # One canonical line per delivery, each naming its own event, though they shared a transaction.
    lines = second.events(event="message", outcome="handled")
    assert sorted(line["event_id"] for line in lines) == sorted(f"id-{token}" for token in tokens)
    assert {line["notify_type"] for line in lines} == {KIND}


async def test_an_ack_never_covers_a_delivery_another_batch_is_still_handling(db, amqp, tmp_path):
    """Two batches at a time; the first holds a slow handler while the second commits and acks. Acked with
    `multiple=True`, the second's ack would cover the first batch's deliveries too, and the kill would lose them."""
    slow, fast = "slow", [f"fast-{n}" for n in range(12)]
    await enqueue(amqp, {"token": slow, "sleep": 5.0}, *[{"token": t} for t in fast])
    env = {"HC_BATCH_SIZE": "4", "HC_PREFETCH": "8", "HC_BATCH_WAIT": "0.2"}
    first = worker_process(tmp_path, KIND, "--handlers", "tests.support.tracked_kind", name="first", env=env)
    try:
        await eventually(lambda: _handled(db, fast[4:]), timeout=20)
        first.signal(signal.SIGKILL)
        first.wait()
    finally:
        first.stop()
    assert slow not in await effects(db)  # its batch was cut before its commit

    second = worker_process(tmp_path, KIND, "--handlers", "tests.support.tracked_kind", name="second")
    try:
        wanted = {token: [1] for token in [slow, *fast]}
        assert await eventually(lambda: _equal(effects(db), wanted), timeout=30)
    finally:
        second.stop()


def test_batch_size_is_bounded_by_postgresqls_subtransaction_cache():
    assert load_settings(WorkerSettings, {"HC_BATCH_SIZE": "64"}).batch_size == 64
    for wrong in ("0", "65"):
        with pytest.raises(Exception, match="HC_BATCH_SIZE|batch_size"):
            load_settings(WorkerSettings, {"HC_BATCH_SIZE": wrong})


async def _equal(found, wanted) -> bool:
    return await found == wanted


async def _other_connection_effects() -> int:
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        return await connection.fetchval("SELECT count(*) FROM test_effects")
    finally:
        await connection.close()


async def _handled(db, tokens: list[str]) -> bool:
    return set(tokens) <= set(await effects(db))


async def _gauge_at_least(metric, value: float) -> bool:
    return metric._value.get() >= value  # noqa: SLF001


async def _waiting_on_a_lock(db) -> bool:
    return await db.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )


async def _batch_held_in_a_handler(db) -> bool:
    return await db.fetchval(
        """SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database()
           AND state = 'idle in transaction' AND query = 'RELEASE SAVEPOINT delivery; SAVEPOINT delivery'
           AND now() - state_change > interval '0.5 s'"""
    )


async def unsettled(kind: str) -> int:
    """Messages in the kind's queue, ready or delivered and not settled yet (a passive declare counts only the
    ready ones)."""
    command = ["rabbitmqctl", "-q", "list_queues", "-p", TEST_VHOST, "--no-table-headers", "name", "messages"]
    listing = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60, check=True)
    rows = dict(line.split("\t") for line in listing.stdout.splitlines() if "\t" in line)
    return int(rows[topology.kind_queue(kind)])


async def _none_unsettled(kind: str) -> bool:
    return await unsettled(kind) == 0


async def _queue_taken(amqp) -> bool:
    queue = await amqp.declare_queue(topology.kind_queue(KIND), passive=True)
    return queue.declaration_result.message_count == 0


async def test_closing_starts_no_new_loop(make_worker, db, amqp):
    """Stopping cancels the batch loops: none is started again, counted or logged as if it had ended on its own, and
    no loop task is left behind."""
    runtime = await make_worker(KIND, prefetch=16, batch_size=4)
    await enqueue(amqp, *[{"token": f"close-{n}"} for n in range(8)])
    assert await eventually(lambda: _equal(effects(db), {f"close-{n}": [1] for n in range(8)}), timeout=10)
    loops = [task for task in asyncio.all_tasks() if task.get_name().startswith("batches-")]
    assert len(loops) == runtime.batch_concurrency > 1  # the loops the stop must end, all of them running
    with structlog.testing.capture_logs() as logs:
        await runtime.stop()
    assert all(task.done() for task in loops)
    assert [task for task in asyncio.all_tasks() if task.get_name().startswith("batches-")] == []
    assert runtime.metrics.loop_restarts._value.get() == 0  # noqa: SLF001
    assert [line for line in logs if line["event"] == "batch loop ended; starting it again"] == []
