"""A handler is the user's code: whatever it does to the worker's transaction, or whatever it raises, its own
delivery fails (retried with a reason, then dead-lettered with its error_type) and every other event of its batch
is handled exactly once. Real worker processes, RabbitMQ and PostgreSQL; the handlers are
tests/support/misbehaving_kind.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import aio_pika
import pytest

from infra import declare
from schemas import topology
from tests.support.broker import take
from tests.support.misbehaving_kind import DELAYS, HARMLESS, KIND, Misbehaving
from tests.support.processes import worker_process
from tests.support.tracked_kind import ATTEMPT_TIMES, TEST_DELAYS
from tests.support.waiting import eventually
from workers.delivery import UNSETTLED_PAUSE
from workers.registry import Registry

pytestmark = [pytest.mark.broker, pytest.mark.database]
HANDLERS = ["--handlers", "tests.support.misbehaving_kind"]
SENT = 40
EVERY = 8  # one misbehaving event in each eight: one in each full batch
# What the dead letter says; on the code before this test, in batches of 8: commit lost 25 of 35 innocent events,
# rollback 5 (logged handled, nothing committed), a BaseException stalled the kind, a CancelledError dead-lettered
# every event of its batch through the delivery limit.
ERROR_TYPES = {
    "commit": "HandlerEndedTransaction",
    "commit_unguarded": "HandlerEndedTransaction",
    "rollback": "HandlerEndedTransaction",
    "base_exception": "HandlerQuit",
    "cancelled": "CancelledError",
}


async def fresh_queues(amqp) -> None:
    await declare.declare_kind(amqp, KIND, topology.DEFAULT_DELIVERY_LIMIT, DELAYS)
    names = [topology.kind_queue(KIND), topology.dead_queue(KIND), *(topology.retry_queue(KIND, d) for d in DELAYS)]
    for name in names:
        await (await amqp.get_queue(name)).purge()


async def publish(amqp, token: str, misbehave: str = "", sql: str = "") -> None:
    body = json.dumps({"notify_type": KIND, "token": token, "misbehave": misbehave, "sql": sql}).encode()
    message = aio_pika.Message(body, headers={"event_id": f"id-{token}"}, delivery_mode=2)
    await amqp.default_exchange.publish(message, routing_key=topology.kind_queue(KIND))


async def effects(db) -> dict[str, int]:
    rows = await db.fetch("SELECT token, count(*) AS n FROM test_effects WHERE kind = $1 GROUP BY token", KIND)
    return {row["token"]: row["n"] for row in rows}


async def ready_messages(amqp, queue: str) -> int:
    return (await amqp.declare_queue(queue, passive=True)).declaration_result.message_count


# Found by a review of the guard and the worker after the above: on the code before these tests, a COMMIT after a
# literal holding `$` was run (the guard read such a query at its start only) and committed the offender's work, a
# harmless 'a;COMMIT' literal was refused, session statements were let through, SystemExit and KeyboardInterrupt
# ended the batch loop, a COMMIT AND CHAIN behind the guard lost the rest of its batch, and a handler deaf to its
# cancellation held its batch and the worker's stop forever.
LATER = {
    "commit_after_literal": "HandlerEndedTransaction",
    "commit_after_dollar_quote": "HandlerEndedTransaction",
    "set_session": "HandlerChangedSession",
    "set_role": "HandlerChangedSession",
    "reset": "HandlerChangedSession",
    "discard": "HandlerChangedSession",
    "listen": "HandlerChangedSession",
    "unlisten": "HandlerChangedSession",
    "system_exit": "SystemExit",
    "keyboard_interrupt": "KeyboardInterrupt",
    "commit_and_chain": "HandlerEndedTransaction",
    "rollback_and_chain": "HandlerEndedTransaction",
    "deaf": "HandlerTimeout",
}
ERROR_TYPES |= LATER
SESSION = {name for name, error_type in LATER.items() if error_type == "HandlerChangedSession"}
GUARD_CASES = {"commit_after_literal", "commit_after_dollar_quote", *SESSION}
# What these handlers commit themselves, around the guard, stays committed.
COMMITTED_AROUND_THE_GUARD = {"commit_unguarded", "commit_and_chain"}
HANDLER_TIMEOUT = 0.5  # for `deaf`: the worker gives up on it after this and a short grace


def cases() -> list:
    """(misbehave, batch size): every misbehaviour at 1 and 8; the session statements, one path, at 8."""
    found = []
    for misbehave in sorted(ERROR_TYPES):
        for batch_size in [1, 8]:
            if misbehave in SESSION and batch_size == 1 and misbehave != "set_session":
                continue
            found.append(pytest.param(misbehave, batch_size, id=f"{misbehave}-{batch_size}"))
    return found


@pytest.mark.parametrize(("misbehave", "batch_size"), cases())
async def test_a_misbehaving_handler_fails_alone_and_its_batch_is_handled_exactly_once(
    db, amqp, tmp_path, misbehave, batch_size
):
    await fresh_queues(amqp)
    offenders = {f"{misbehave}-{n}" for n in range(0, SENT, EVERY)}
    tokens = [f"{misbehave}-{n}" for n in range(SENT)]
    innocent = [token for token in tokens if token not in offenders]
    # Innocent events of the guard's cases run a statement that only looks like transaction control (only there: a
    # refusal of it would hide what each other case does on the code before it).
    sql = HARMLESS if misbehave in GUARD_CASES else ""
    for token in tokens:  # queued before the worker starts: delivered together, in batches of `batch_size`
        await publish(amqp, token, misbehave if token in offenders else "", sql=sql)
    env = {"HC_BATCH_SIZE": str(batch_size), "HC_PREFETCH": "16"}
    if misbehave == "deaf":
        env["HC_HANDLER_TIMEOUT"] = str(HANDLER_TIMEOUT)
    worker = worker_process(tmp_path, KIND, *HANDLERS, env=env)
    try:
        await eventually(lambda: _logged(worker, event="consuming"), timeout=20)

        async def settled() -> bool:
            handled = (await effects(db)).keys() >= set(innocent)
            return handled and await ready_messages(amqp, topology.dead_queue(KIND)) >= len(offenders)

        with contextlib.suppress(AssertionError):  # the figures below say what did not happen
            await eventually(settled, timeout=30)
        seen = await effects(db)
        lost = [token for token in innocent if token not in seen]
        doubled = [token for token in innocent if seen.get(token, 0) > 1]
        assert not lost and not doubled, (
            f"{misbehave}, batches of {batch_size}: {SENT} sent, {len(lost)} of {len(innocent)} innocent events "
            f"lost, {len(doubled)} handled twice"
        )
        if misbehave not in COMMITTED_AROUND_THE_GUARD:
            assert not [token for token in offenders if token in seen], "a failed delivery's effect was committed"
        dead = await take(amqp, topology.dead_queue(KIND))
        assert sorted(json.loads(m.body)["token"] for m in dead) == sorted(offenders)
        for message in dead:  # retried through the whole schedule with its reason, then dead-lettered with it
            headers = message.headers
            assert (headers["error_type"], headers["attempts"]) == (ERROR_TYPES[misbehave], len(DELAYS) + 1)
            assert headers["last_error_type"] == ERROR_TYPES[misbehave]
        await publish(amqp, f"{misbehave}-after", sql=sql)  # the worker still consumes
        assert await eventually(lambda: _has(effects(db), f"{misbehave}-after"), timeout=10)
        assert not worker.events(event="batch loop ended; starting it again")
    finally:
        worker.signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(worker.wait)
        finally:
            worker.stop()  # killed if it did not stop: it must not consume the next test's events
    assert code == 0, f"the worker exited with {code}"
    # Nothing was left unacked: once the worker's channel closed, no message came back to the queue.
    assert await ready_messages(amqp, topology.kind_queue(KIND)) == 0
    assert (await effects(db)).keys() - offenders == {*innocent, f"{misbehave}-after"}


async def test_a_retry_queue_deleted_while_the_worker_runs_is_declared_again(make_worker, db, amqp):
    """Before: the failing event is requeued in a tight loop (PublishError) until the broker's delivery limit
    dead-letters it without a retry."""
    kind = "TEST_TRACKED"
    runtime = await make_worker(kind)

    async def send_failing_once(token: str) -> None:
        body = json.dumps({"notify_type": kind, "token": token, "fail_until": 2}).encode()
        message = aio_pika.Message(body, headers={"event_id": f"id-{token}"}, delivery_mode=2)
        await amqp.default_exchange.publish(message, routing_key=topology.kind_queue(kind))

        async def settled() -> bool:
            return bool(await attempts_of(db, token)) or await ready_messages(amqp, topology.dead_queue(kind)) > 0

        await eventually(settled, timeout=30)

    await send_failing_once("before-deletion")  # this worker has used the retry queue
    await amqp.queue_delete(topology.retry_queue(kind, TEST_DELAYS[0]))  # an operator deletes it
    await send_failing_once("after-deletion")
    requeued = runtime.metrics.outcomes.labels(kind, "left_for_redelivery")._value.get()  # noqa: SLF001
    dead = await ready_messages(amqp, topology.dead_queue(kind))
    assert await attempts_of(db, "after-deletion") == [2], (
        f"not retried: {requeued:.0f} requeues, {dead} dead-lettered by the broker"
    )
    assert (requeued, dead) == (0, 0)


async def test_a_delivery_whose_dead_letter_is_refused_is_counted_and_paused_before_it_is_tried_again(
    make_worker, db, amqp
):
    """The dead queue is gone (the workers' broker user may not declare it): the dead letter is returned, the
    delivery counted as unsettled and held UNSETTLED_PAUSE before its requeue, not requeued in a tight loop. Once
    the queue is back, it is dead-lettered with its reason."""
    kind = "TEST_TRACKED"
    runtime = await make_worker(kind)
    await amqp.queue_delete(topology.dead_queue(kind))
    body = json.dumps({"notify_type": kind, "token": "unsettled", "outcome": "give_up"}).encode()
    await amqp.default_exchange.publish(
        aio_pika.Message(body, headers={"event_id": "id-unsettled"}, delivery_mode=2),
        routing_key=topology.kind_queue(kind),
    )

    async def tried_three_times() -> bool:
        return len(ATTEMPT_TIMES["unsettled"]) >= 3

    await eventually(tried_three_times, timeout=20)
    unsettled = runtime.metrics.unsettled.labels(kind)._value.get()  # noqa: SLF001
    assert unsettled >= 2
    times = ATTEMPT_TIMES["unsettled"]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert min(gaps) >= UNSETTLED_PAUSE, f"tried again after {min(gaps):.3f}s"
    await declare.declare_kind(amqp, kind, topology.DEFAULT_DELIVERY_LIMIT, TEST_DELAYS)  # the set-up runs again
    (dead,) = await take(amqp, topology.dead_queue(kind), timeout=10)
    assert dead.headers["error_type"] == "GiveUp"


async def attempts_of(db, token: str) -> list[int]:
    return [row["attempt"] for row in await db.fetch("SELECT attempt FROM test_effects WHERE token = $1", token)]


def test_a_handler_that_is_not_a_coroutine_function_is_refused_at_registration():
    def on_misbehaving(event, ctx) -> None:
        pass

    with pytest.raises(TypeError, match="on_misbehaving"):
        Registry().handles(Misbehaving)(on_misbehaving)


async def _has(found, token) -> bool:
    return token in await found


async def _logged(process, **match: str) -> bool:
    return bool(process.events(**match))
