"""Delivery semantics: retries with growing delays, dead-lettering with reasons, one effect per event."""

from __future__ import annotations

import json

import aio_pika
import aiormq
import pytest

from schemas import topology
from tests.support.broker import AMQP_URL, take
from tests.support.tracked_kind import ATTEMPT_TIMES, TEST_DELAYS
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
PATH = "/hc_sync/common"


async def send_tracked(gateway, sign, **fields) -> None:
    body = json.dumps({"notify_type": "TEST_TRACKED", **fields}).encode()
    response = await gateway.post(PATH, data=body, headers=sign(body))
    assert response.status == 200


async def effects(db, token: str) -> list:
    return await db.fetch("SELECT attempt, at FROM test_effects WHERE token = $1", token)


async def test_a_user_kind_flows_to_its_worker_not_to_unrouted(gateway, make_worker, db, sign, amqp):
    await make_worker("TEST_TRACKED")
    await send_tracked(gateway, sign, token="a")
    (row,) = await eventually(lambda: effects(db, "a"))
    assert row["attempt"] == 1
    assert await take(amqp, topology.UNROUTED_QUEUE, timeout=0.2) == []


async def test_succeeds_on_the_third_attempt_with_one_effect(gateway, make_worker, db, sign):
    runtime = await make_worker("TEST_TRACKED")
    await send_tracked(gateway, sign, token="third", fail_until=3)
    (row,) = await eventually(lambda: effects(db, "third"))
    assert row["attempt"] == 3
    assert runtime.metrics.retried.labels("TEST_TRACKED")._value.get() == 2


async def test_retry_requested_by_the_handler(gateway, make_worker, db, sign):
    await make_worker("TEST_TRACKED")
    await send_tracked(gateway, sign, token="r", fail_until=2, outcome="retry")
    (row,) = await eventually(lambda: effects(db, "r"))
    assert row["attempt"] == 2


async def test_a_delay_the_handler_computes_is_rounded_to_the_schedule_so_retry_queues_stay_bounded(
    gateway, make_worker, db, sign, amqp
):
    await make_worker("TEST_TRACKED")
    for n, delay in enumerate((0.05, 0.3, 0.33, 99.0)):
        await send_tracked(gateway, sign, token=f"asked-{n}", fail_until=2, outcome="retry", retry_after=delay)
    for n in range(3):
        (row,) = await eventually(lambda n=n: effects(db, f"asked-{n}"))
        assert row["attempt"] == 2
    assert await retry_queue_exists(topology.retry_queue("TEST_TRACKED", 0.4))
    for unbounded in (0.05, 0.3, 0.33, 99.0):  # none of the asked delays got a queue of its own
        assert not await retry_queue_exists(topology.retry_queue("TEST_TRACKED", unbounded))


async def retry_queue_exists(name: str) -> bool:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await (await connection.channel()).declare_queue(name, passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await connection.close()


async def test_failing_handler_is_retried_with_growing_delays_then_dead_lettered(gateway, make_worker, db, sign, amqp):
    runtime = await make_worker("TEST_TRACKED")
    await send_tracked(gateway, sign, token="never", fail_until=99)
    (dead,) = await take(amqp, topology.dead_queue("TEST_TRACKED"), timeout=10)
    assert json.loads(dead.body)["token"] == "never"
    assert dead.headers["error_type"] == "RuntimeError"
    assert dead.headers["error_message"] == "failing attempt 4"
    assert dead.headers["attempts"] == 4  # the first try and the three retries of the schedule
    assert dead.headers["notify_type"] == "TEST_TRACKED" and dead.headers["event_id"]
    assert await effects(db, "never") == []
    assert runtime.metrics.retried.labels("TEST_TRACKED")._value.get() == 3
    assert runtime.metrics.dead_lettered.labels("TEST_TRACKED")._value.get() == 1


async def test_delays_grow_between_attempts(gateway, make_worker, db, sign):
    await make_worker("TEST_TRACKED")
    await send_tracked(gateway, sign, token="timed", fail_until=4)
    await eventually(lambda: effects(db, "timed"))
    times = ATTEMPT_TIMES["timed"]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len(gaps) == 3
    # The schedule is 0.2 s, 0.4 s, 0.8 s: each wait at least its delay, and each longer than the one before.
    for gap, delay in zip(gaps, TEST_DELAYS, strict=True):
        assert gap >= delay * 0.9
    assert gaps[0] < gaps[1] < gaps[2]


async def test_give_up_dead_letters_at_once(gateway, make_worker, db, sign, amqp):
    await make_worker("TEST_TRACKED")
    await send_tracked(gateway, sign, token="g", outcome="give_up")
    (dead,) = await take(amqp, topology.dead_queue("TEST_TRACKED"))
    assert dead.headers["error_type"] == "GiveUp" and dead.headers["attempts"] == 1


async def test_handler_past_its_timeout_is_retried(gateway, make_worker, db, sign, amqp):
    await make_worker("TEST_TRACKED", handler_timeout=0.3, retry_delays=(0.1,))
    await send_tracked(gateway, sign, token="slow", sleep=1.0)
    (dead,) = await take(amqp, topology.dead_queue("TEST_TRACKED"), timeout=10)
    assert dead.headers["error_type"] == "HandlerTimeout"


async def test_a_body_that_does_not_decode_as_its_kind_is_quarantined_with_the_reason(make_worker, db, amqp):
    await make_worker("RECHARGE")
    exchange = await amqp.get_exchange(topology.EVENTS_EXCHANGE)
    await exchange.publish(aio_pika.Message(b'{"notify_type":"RECHARGE"}'), routing_key="hypercard.recharge")
    (kept,) = await take(amqp, topology.INVALID_QUEUE)
    assert kept.headers["validation_error"].startswith("RECHARGE: ") and "card_id" in kept.headers["validation_error"]
    assert not await take(amqp, topology.dead_queue("RECHARGE"), timeout=0.5)
