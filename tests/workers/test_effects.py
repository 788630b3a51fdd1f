"""Effects outside the database, once per handled event: handed to the worker in the handler's transaction
(`ctx.after_commit`), performed by the worker's outbox relay only once that transaction committed, never for a
rolled-back handler or batch, and not lost when the worker is killed between the commit and the call."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from infra import declare
from schemas import topology
from tests.support.database import DATABASE_URL
from tests.support.external_kind import TEST_DELAYS, calls
from tests.support.processes import worker_process
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
KIND = "TEST_EXTERNAL"


@pytest.fixture
async def external(db, amqp, tmp_path: Path, monkeypatch) -> Path:
    """TEST_EXTERNAL's queues empty, a fresh calls file, and test_hot: one row that a test can hold locked."""
    await declare.declare_kind(amqp, KIND, topology.DEFAULT_DELIVERY_LIMIT, TEST_DELAYS)
    for name in (
        topology.kind_queue(KIND),
        topology.dead_queue(KIND),
        *(topology.retry_queue(KIND, d) for d in TEST_DELAYS),
    ):
        await (await amqp.get_queue(name)).purge()
    await db.execute("DROP TABLE IF EXISTS test_hot")
    await db.execute("CREATE TABLE test_hot (touched integer NOT NULL); INSERT INTO test_hot VALUES (0)")
    made = tmp_path / "calls.txt"
    monkeypatch.setenv("HYPERCARD_TEST_EXTERNAL_FILE", str(made))
    return made


async def enqueue(amqp, kind: str, *events: dict) -> None:
    """Put events in the kind's queue before a worker consumes it, so that they are delivered together."""
    for event in events:
        body = json.dumps({"notify_type": kind, **event}).encode()
        key = event.get("token") or event.get("code")
        message = aio_pika.Message(body, headers={"event_id": f"id-{key}"}, delivery_mode=2)
        await amqp.default_exchange.publish(message, routing_key=topology.kind_queue(kind))


def made_calls(path: Path) -> Counter[str]:
    """Completed calls per token."""
    return Counter(line.split()[0] for line in calls(str(path)) if not line.startswith(("failed ", "started ")))


async def all_called(path: Path, tokens: list[str]) -> bool:
    return set(made_calls(path)) >= set(tokens)


async def test_a_batch_rolled_back_by_a_lock_timeout_calls_each_service_once(make_worker, db, amqp, external):
    """One delivery of a batch of 8 waits on a row held by another transaction: the batch, seven handlers already
    run, is rolled back and its deliveries handled one per transaction. Each call is made once, after its commit."""
    tokens = [f"batch-{n}" for n in range(8)]
    await enqueue(amqp, KIND, *[{"token": t, "touch_hot": n == 7} for n, t in enumerate(tokens)])
    async with db.transaction():
        await db.execute("SELECT * FROM test_hot FOR UPDATE")
        runtime = await make_worker(KIND, batch_size=8, batch_wait=0.5)
        await eventually(lambda: _rolled_back(runtime), timeout=10)
        called = set(made_calls(external))  # first: a call made after this read may follow a commit after it
        committed = {row["token"] for row in await _committed_effects()}
        assert called <= committed  # no call for a transaction that has not committed
    assert await eventually(lambda: all_called(external, tokens), timeout=20)
    await asyncio.sleep(1.0)  # a second call would show now
    assert made_calls(external) == Counter({token: 1 for token in tokens})
    assert await db.fetchval("SELECT count(*) FROM test_effects") == 8
    keys = [line.split()[1] for line in calls(str(external))]
    assert len(set(keys)) == 8  # one idempotency key per notification
    assert await db.fetchval("SELECT count(*) FROM hypercard_outbox") == 0  # each row deleted once performed


async def test_a_handler_that_fails_after_handing_its_call_over_calls_once_for_the_attempt_that_commits(
    make_worker, db, amqp, external
):
    tokens = [f"fails-{n}" for n in range(4)]
    await enqueue(amqp, KIND, *[{"token": t, "fail_first": n == 1} for n, t in enumerate(tokens)])
    runtime = await make_worker(KIND, batch_size=8, batch_wait=0.2)
    assert await eventually(lambda: all_called(external, tokens), timeout=20)
    await asyncio.sleep(1.0)
    assert made_calls(external) == Counter({token: 1 for token in tokens})
    assert runtime.metrics.retried.labels(KIND)._value.get() == 1  # noqa: SLF001 - the failed attempt did happen


async def test_a_failing_call_is_retried_with_the_same_idempotency_key_until_it_succeeds(
    make_worker, db, amqp, external
):
    await enqueue(amqp, KIND, {"token": "flaky", "failing_calls": 2})
    await make_worker(KIND)
    assert await eventually(lambda: all_called(external, ["flaky"]), timeout=20)
    lines = calls(str(external))
    assert [line.split()[0] for line in lines] == ["failed", "failed", "flaky"]
    assert len({line.split()[-1] for line in lines}) == 1  # the receiving side can tell it is one call
    assert await eventually(lambda: _outbox_empty(db))


@pytest.mark.parametrize("failure", ["quit", "cancelled"])
async def test_an_effect_raising_a_base_exception_fails_one_try_and_the_relay_goes_on(
    make_worker, db, amqp, external, failure
):
    """Before: the BaseException (or the effect's own CancelledError) ended the relay; no effect was performed
    again, the one that raised included, until the worker restarted."""
    await enqueue(amqp, KIND, {"token": "raises", "failing_calls": 2, "failure": failure}, {"token": "beside"})
    runtime = await make_worker(KIND)
    assert await eventually(lambda: all_called(external, ["raises", "beside"]), timeout=20)
    await enqueue(amqp, KIND, {"token": "after"})  # the relay still performs what is handed over later
    assert await eventually(lambda: all_called(external, ["after"]), timeout=20)
    lines = calls(str(external))
    assert [line.split()[:2] for line in lines if "raises" in line][:2] == [["failed", "raises"]] * 2
    assert made_calls(external) == Counter({"raises": 1, "beside": 1, "after": 1})
    failures = runtime.metrics.registry.get_sample_value("hypercard_worker_outbox_failures_total", {"kind": KIND})
    assert failures == 2
    assert await eventually(lambda: _outbox_empty(db))


async def test_a_worker_killed_between_the_commit_and_the_call_makes_it_after_restart(db, amqp, external, tmp_path):
    await enqueue(amqp, KIND, {"token": "killed"})
    handlers = [KIND, "--handlers", "tests.support.external_kind"]
    env = {"HYPERCARD_TEST_EXTERNAL_FILE": str(external)}
    first = worker_process(tmp_path, *handlers, env=env | {"HYPERCARD_TEST_EXTERNAL_STALL": "killed"}, name="first")
    try:
        await eventually(lambda: _true(any(line == "started killed" for line in calls(str(external)))), timeout=30)
        first.signal(signal.SIGKILL)
        first.wait()
    finally:
        first.stop()
    assert await db.fetchval("SELECT count(*) FROM test_effects WHERE token = 'killed'") == 1  # committed
    assert made_calls(external) == Counter()  # and the call not made
    [payload] = await db.fetchval("SELECT array_agg(payload) FROM hypercard_outbox")
    assert b"killed" not in payload  # sealed at rest: a dump of the outbox shows no payload (a one-time code) in clear
    second = worker_process(tmp_path, *handlers, env=env, name="second")
    try:
        assert await eventually(lambda: all_called(external, ["killed"]), timeout=30)
        await asyncio.sleep(1.0)
    finally:
        second.stop()
    assert made_calls(external) == Counter({"killed": 1})
    assert await db.fetchval("SELECT count(*) FROM hypercard_outbox") == 0
    assert not second.events(event="message", outcome="handled")  # the message was acked by the first worker


async def _rolled_back(runtime) -> bool:
    return runtime.metrics.batch_rollbacks.labels("lock")._value.get() >= 1  # noqa: SLF001


async def _committed_effects() -> list:
    """test_effects as another transaction sees it: the rows committed so far."""
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        return await connection.fetch("SELECT token FROM test_effects")
    finally:
        await connection.close()


async def _outbox_empty(db) -> bool:
    return await db.fetchval("SELECT count(*) FROM hypercard_outbox") == 0


async def _true(value: bool) -> bool:
    return value
