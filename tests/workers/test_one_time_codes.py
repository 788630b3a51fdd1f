"""One-time codes (OPT_CODE) are handed to the notifier once per notification, whatever happens to the batch they
were handled in: the notifier is called by the outbox relay after the commit, never inside a transaction that may be
rolled back and run again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aio_pika
import pytest

from schemas import topology
from schemas.events import OptCode
from tests.support.waiting import eventually
from workers.handlers import auth

pytestmark = [pytest.mark.broker, pytest.mark.database]


async def enqueue(amqp, kind: str, *events: dict) -> None:
    """Put events in the kind's queue before a worker consumes it, so that they are delivered together."""
    for event in events:
        body = json.dumps({"notify_type": kind, **event}).encode()
        key = event.get("token") or event.get("code")
        message = aio_pika.Message(body, headers={"event_id": f"id-{key}"}, delivery_mode=2)
        await amqp.default_exchange.publish(message, routing_key=topology.kind_queue(kind))


class CountingNotifier:
    """Records each one-time code it is asked to deliver."""

    def __init__(self) -> None:
        self.delivered: list[str] = []

    async def deliver(self, event: OptCode, idempotency_key: str) -> None:
        self.delivered.append(event.code)


@pytest.fixture
async def notifier() -> AsyncIterator[CountingNotifier]:
    counting = CountingNotifier()
    auth.set_otp_notifier(counting)
    yield counting
    auth.set_otp_notifier(auth.LogOnlyNotifier())


async def test_a_batch_rollback_never_sends_a_one_time_code_twice(make_worker, db, amqp, notifier):
    """OPT_CODE and TEST_TRACKED share the batches of one worker: seven codes, then an event that waits on a held
    row. The batch is rolled back and handled again one delivery at a time; each code is sent once."""
    codes = [f"{n:06d}" for n in range(100001, 100008)]
    await db.execute("DROP TABLE IF EXISTS test_hot")
    await db.execute("CREATE TABLE test_hot (touched integer NOT NULL); INSERT INTO test_hot VALUES (0)")
    await (await amqp.get_queue(topology.kind_queue("OPT_CODE"))).purge()
    await enqueue(amqp, "OPT_CODE", *[{"card_id": "card-1", "code": code, "create_time": 1710412477} for code in codes])
    async with db.transaction():
        await db.execute("SELECT * FROM test_hot FOR UPDATE")
        await asyncio.sleep(0.3)  # the codes reach the queue first
        await enqueue(amqp, "TEST_TRACKED", {"token": "hot", "touch_hot": True})
        runtime = await make_worker("OPT_CODE", "TEST_TRACKED", batch_size=8, batch_wait=0.3)
        await eventually(lambda: _rolled_back(runtime), timeout=10)
    assert await eventually(lambda: _true(len(notifier.delivered) >= len(codes)), timeout=20)
    await asyncio.sleep(1.0)
    assert sorted(notifier.delivered) == codes


async def _rolled_back(runtime) -> bool:
    return runtime.metrics.batch_rollbacks.labels("lock")._value.get() >= 1  # noqa: SLF001


async def _true(value: bool) -> bool:
    return value
