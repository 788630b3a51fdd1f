"""Many batches at a time on one channel (HC_BATCH_SIZE below HC_PREFETCH): each batch acks, retries and
dead-letters its own deliveries while the others do theirs. No ack covers another batch's delivery, none is sent
twice (the broker would close the channel with 406 PRECONDITION_FAILED), and every event is handled once."""

from __future__ import annotations

import asyncio
import json

import aio_pika
import pytest

from schemas import topology
from tests.support.broker_log import BrokerLog
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
KIND = "TEST_TRACKED"
EVENTS = 400


async def effects(db) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for row in await db.fetch("SELECT token, attempt FROM test_effects ORDER BY attempt"):
        found.setdefault(row["token"], []).append(row["attempt"])
    return found


@pytest.mark.parametrize(("batch_size", "prefetch"), [(1, 32), (8, 64)])
async def test_half_the_events_fail_once_under_many_loops_and_each_is_handled_once(
    make_worker, db, amqp, batch_size, prefetch
):
    log = BrokerLog()
    runtime = await make_worker(KIND, batch_size=batch_size, prefetch=prefetch, batch_wait=0.005)
    assert runtime.batch_concurrency > 1
    channel = runtime._retries.channel  # noqa: SLF001 - the channel the worker consumes and acks on
    closed: list[object] = []
    channel.close_callbacks.add(lambda _channel, reason=None: closed.append(reason))

    wanted = {}
    for n in range(EVENTS):
        token = f"loop-{n}"
        fails = n % 2 == 0
        wanted[token] = [2] if fails else [1]
        body = json.dumps({"notify_type": KIND, "token": token, "fail_until": 2 if fails else 0}).encode()
        message = aio_pika.Message(body, headers={"event_id": f"id-{token}"}, delivery_mode=2)
        await amqp.default_exchange.publish(message, routing_key=topology.kind_queue(KIND))

    async def all_handled() -> bool:
        return len(await effects(db)) == EVENTS

    await eventually(all_handled, timeout=60, interval=0.2)
    await asyncio.sleep(1.5)  # a delivery acked twice, or requeued after an ack, would show by now
    assert await effects(db) == wanted
    assert closed == [], f"the broker closed the worker's channel: {closed}"
    assert runtime._retries.channel is channel  # noqa: SLF001 - never reconnected
    assert log.channel_errors() == []
    metrics = runtime.metrics
    assert metrics.handled.labels(KIND)._value.get() == EVENTS  # noqa: SLF001
    assert metrics.retried.labels(KIND)._value.get() == EVENTS / 2  # noqa: SLF001
    assert metrics.dead_lettered.labels(KIND)._value.get() == 0  # noqa: SLF001
