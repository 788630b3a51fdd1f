"""One delivery never stops a worker: tampered messages published straight to a kind's queue are dead-lettered with
the reason, a failure while settling or around a batch stays with its delivery, a loop that ends is started again;
and the events sent afterwards are all handled."""

from __future__ import annotations

import asyncio
import json

import aio_pika
import msgspec
import pytest

from schemas import topology
from schemas.samples import sample_body
from tests.support.broker import AMQP_URL, take
from tests.support.tracked_kind import TEST_DELAYS
from tests.support.waiting import eventually
from workers.outcomes import Outcome
from workers.retries import RetryPublisher

pytestmark = [pytest.mark.broker, pytest.mark.database]
KIND = "TEST_TRACKED"


async def effects(db) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for row in await db.fetch("SELECT token, attempt FROM test_effects ORDER BY attempt"):
        found.setdefault(row["token"], []).append(row["attempt"])
    return found


async def publish(amqp, body: bytes, headers: dict | None) -> None:
    message = aio_pika.Message(body, headers=headers, delivery_mode=2)
    await amqp.default_exchange.publish(message, routing_key=topology.kind_queue(KIND))


def tracked(token: str, **fields: object) -> bytes:
    return json.dumps({"notify_type": KIND, "token": token, **fields}).encode()


async def send_plain(amqp, prefix: str, count: int) -> dict[str, list[int]]:
    for n in range(count):
        await publish(amqp, tracked(f"{prefix}-{n}"), {"event_id": f"id-{prefix}-{n}"})
    return {f"{prefix}-{n}": [1] for n in range(count)}


def contained(runtime, stage: str) -> float:
    return runtime.metrics.contained_failures.labels(KIND, stage)._value.get()  # noqa: SLF001


async def test_tampered_messages_are_set_aside_with_the_reason_and_later_events_are_handled(make_worker, db, amqp):
    runtime = await make_worker(KIND)
    deep = b'{"notify_type": "TEST_TRACKED", "token": "deep", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    other_kind = sample_body("open_card")
    await publish(amqp, deep, {"event_id": "id-deep"})
    await publish(amqp, other_kind, {"event_id": "id-other-kind"})
    bad_attempts = {"two": "two", "minus": -100, "zero": 0, "half": 1.5, "bool": True, "huge": 10**12}
    for token, attempt in bad_attempts.items():
        await publish(amqp, tracked(token), {"event_id": f"id-{token}", "attempt": attempt})
    await publish(amqp, tracked("no-headers"), None)
    await publish(amqp, tracked("bad-received-at"), {"event_id": "id-bad-received-at", "received_at": "yesterday"})
    wanted = {"no-headers": [1], "bad-received-at": [1]} | await send_plain(amqp, "after", 20)

    async def all_handled() -> bool:
        return await effects(db) == wanted

    await eventually(all_handled, timeout=20)
    dead = await take(amqp, topology.dead_queue(KIND))
    reasons = {}
    for message in dead:
        token = msgspec.json.decode(message.body)["token"]
        reasons[token] = (message.headers["error_type"], message.headers["error_message"])
    assert {token: error_type for token, (error_type, _) in reasons.items()} == dict.fromkeys(bad_attempts, "BadHeader")
    assert "attempt header 'two' is not an integer" in reasons["two"][1]
    # A body that is not its kind is an invalid event, kept with its reason as the gateway keeps one: no failure.
    kept = await take(amqp, topology.INVALID_QUEUE)
    invalid = {message.body: message.headers["validation_error"] for message in kept}
    assert invalid.keys() == {deep, other_kind}
    assert "recursion depth" in invalid[deep] and invalid[other_kind].startswith("TEST_TRACKED: ")
    assert contained(runtime, "decode") == 0
    assert contained(runtime, "headers") == len(bad_attempts) + 1  # and the unusable received_at
    assert runtime._batches._loops and not any(t.done() for t in runtime._batches._loops)  # noqa: SLF001


async def test_a_failure_while_settling_or_around_a_batch_stays_with_its_delivery(make_worker, db, amqp):
    runtime = await make_worker(KIND)
    policy = runtime._runner  # noqa: SLF001
    schedule, decode = policy.retry_delays, policy.decode
    failures = {"settle": 1, "batch": 1}

    def retry_delays_failing_once(kind: str) -> tuple[float, ...]:
        if failures["settle"]:
            failures["settle"] -= 1
            raise RuntimeError("injected while settling")
        return schedule(kind)

    async def decode_failing_once(delivery):
        if failures["batch"] and b"batch-fails" in delivery.message.body:
            failures["batch"] -= 1
            raise RuntimeError("injected around the batch")
        return await decode(delivery)

    policy.retry_delays = retry_delays_failing_once
    policy.decode = decode_failing_once
    wanted: dict[str, list[int]] = {}

    async def all_handled() -> bool:
        return await effects(db) == wanted

    for token, fail_until in (("batch-fails", 0), ("settle-fails", 2)):  # one at a time: each alone in its batch
        await publish(amqp, tracked(token, fail_until=fail_until), {"event_id": f"id-{token}"})
        wanted[token] = [max(fail_until, 1)]
        await eventually(all_handled, timeout=20)
    wanted |= await send_plain(amqp, "after", 20)
    await eventually(all_handled, timeout=20)
    assert failures == {"settle": 0, "batch": 0}
    assert contained(runtime, "settle") == 1 and contained(runtime, "batch") == 1
    assert runtime.metrics.loop_restarts._value.get() == 0  # noqa: SLF001
    assert await take(amqp, topology.dead_queue(KIND), timeout=0.5) == []


async def test_a_loop_that_ends_is_started_again_and_counted(make_worker, db, amqp):
    runtime = await make_worker(KIND)
    batches = runtime._batches  # noqa: SLF001
    collect = batches._collect  # noqa: SLF001
    calls = 0

    async def collect_failing_once():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected: the loop itself fails")
        return await collect()

    batches._collect = collect_failing_once  # noqa: SLF001 - the loop takes it at its next batch
    wanted = await send_plain(amqp, "first", 1)

    async def handled() -> bool:
        return await effects(db) == wanted

    await eventually(handled, timeout=10)
    wanted |= await send_plain(amqp, "after", 20)
    await eventually(handled, timeout=20)
    assert calls >= 2
    assert runtime.metrics.loop_restarts._value.get() == 1  # noqa: SLF001


async def test_a_delivery_returned_during_a_database_outage_does_not_count_towards_the_delivery_limit(
    make_worker, db, amqp
):
    """The outage pause returns a copy to the queue's tail and acks the original: the broker's delivery count (what
    HC_DELIVERY_LIMIT is checked against) stays 0, and no attempt is counted."""
    runtime = await make_worker(KIND)
    policy = runtime._runner  # noqa: SLF001
    receive, run_handler, unreachable = policy.receive, policy.run_handler, policy.database_unreachable
    delivery_counts: list[object] = []
    outage = {"left": 2}

    def receive_recording(registration, message, retries, acks):
        if b"outage" in message.body:
            delivery_counts.append((message.headers or {}).get("x-delivery-count"))
        return receive(registration, message, retries, acks)

    async def run_handler_failing(delivery, connection):
        if outage["left"] and b"outage" in delivery.message.body:
            raise ConnectionResetError("as if PostgreSQL had gone away")
        await run_handler(delivery, connection)

    async def unreachable_while_it_lasts(error: Exception) -> bool:
        if isinstance(error, ConnectionResetError):
            outage["left"] -= 1
            return True
        return await unreachable(error)

    policy.receive, policy.run_handler = receive_recording, run_handler_failing
    policy.database_unreachable = unreachable_while_it_lasts
    await publish(amqp, tracked("outage"), {"event_id": "id-outage"})

    async def handled() -> bool:
        return await effects(db) == {"outage": [1]}

    await eventually(handled, timeout=20)
    assert delivery_counts == [None, None, None]
    assert runtime.metrics.outcomes.labels(KIND, "returned")._value.get() == 2  # noqa: SLF001


async def test_a_retry_whose_channel_closed_meanwhile_leaves_the_delivery_for_redelivery(db, amqp):
    """The first retry per delay declares its retry queue: on a channel that closed meanwhile (a broker restart) that
    fails, and the delivery is left for the broker to deliver again, nothing raised."""
    await publish(amqp, tracked("retry-on-closed"), {"event_id": "id-retry-on-closed"})
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        message = await (await channel.get_queue(topology.kind_queue(KIND))).get(timeout=5)
        retries = RetryPublisher(channel, topology.DEFAULT_DELIVERY_LIMIT)
        await channel.close()
        outcome = await retries.retry_or_dead_letter(
            message, KIND, TEST_DELAYS, 1, error_type="RuntimeError", error_message="failed"
        )
    finally:
        await connection.close()
    assert outcome is Outcome.LEFT_FOR_REDELIVERY
    (back,) = await take(amqp, topology.kind_queue(KIND))
    assert msgspec.json.decode(back.body)["token"] == "retry-on-closed"
    assert await take(amqp, topology.retry_queue(KIND, TEST_DELAYS[0]), timeout=0.5) == []


async def test_a_message_that_fails_on_receipt_goes_back_to_its_queue_and_is_handled(make_worker, db, amqp):
    runtime = await make_worker(KIND)
    policy = runtime._runner  # noqa: SLF001
    receive = policy.receive
    failures = {"left": 1}

    def receive_failing_once(registration, message, retries, acks):
        if failures["left"] and b"receive-fails" in message.body:
            failures["left"] -= 1
            raise RuntimeError("injected on receipt")
        return receive(registration, message, retries, acks)

    policy.receive = receive_failing_once
    await publish(amqp, tracked("receive-fails"), {"event_id": "id-receive-fails"})
    wanted = {"receive-fails": [1]} | await send_plain(amqp, "after", 10)

    async def all_handled() -> bool:
        return await effects(db) == wanted

    await eventually(all_handled, timeout=20)
    assert failures == {"left": 0}
    assert contained(runtime, "receive") == 1


async def test_a_handler_that_raises_cancelled_error_does_not_stop_the_worker(make_worker, db, amqp):
    """A CancelledError that is not the worker's own shutdown (a handler's, or a library's future cancelled under it)
    is one delivery's failure: the loop goes on (with the default single loop, a dead loop stops the worker) and the
    delivery is retried with its reason, through the retry schedule, not requeued (which would count towards the
    delivery limit)."""
    runtime = await make_worker(KIND)
    policy = runtime._runner  # noqa: SLF001
    run_handler = policy.run_handler
    raised = {"left": 1}

    async def run_handler_cancelled_once(delivery, connection):
        if b"cancelled" in delivery.message.body and raised["left"]:
            raised["left"] -= 1
            raise asyncio.CancelledError("not the worker's shutdown")
        return await run_handler(delivery, connection)

    policy.run_handler = run_handler_cancelled_once
    wanted = await send_plain(amqp, "cancelled", 1) | {"cancelled-0": [2]}

    async def handled() -> bool:
        return await effects(db) == wanted

    await eventually(handled, timeout=15)
    wanted |= await send_plain(amqp, "after", 20)
    await eventually(handled, timeout=20)
    assert raised["left"] == 0 and runtime.consuming
    assert runtime.metrics.outcomes.labels(KIND, "left_for_redelivery")._value.get() == 0  # noqa: SLF001
