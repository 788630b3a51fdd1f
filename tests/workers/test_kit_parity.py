"""The test kit runs a handler the way a worker runs it: each misbehaving handler of tests/support/misbehaving_kind.py
(it commits or rolls back the worker's transaction, raises a BaseException subclass, a CancelledError of its own or
a bug, hangs past HC_HANDLER_TIMEOUT) comes to the same outcome, attempt by attempt and with the same error type,
through `workers.testing.handler_kit` and through a real worker process on RabbitMQ and PostgreSQL. A handler that
is a plain `def` is refused by both, naming it."""

from __future__ import annotations

import asyncio
import json
import signal

import aio_pika
import pytest

from infra import declare
from schemas import topology
from tests.support.database import DATABASE_URL
from tests.support.misbehaving_kind import DELAYS, KIND, Misbehaving
from tests.support.processes import worker_process
from tests.support.waiting import eventually
from workers.outcomes import Outcome
from workers.testing import handler_kit

pytestmark = [pytest.mark.broker, pytest.mark.database]
# "": an innocent event. Not `deaf` (a handler that ignores its cancellation): a worker abandons it and exits past
# it; a test's event loop cannot close around it, so the kit is no place for it.
MISBEHAVIOURS = (
    "commit", "rollback", "base_exception", "cancelled", "raise", "hang", "system_exit", "keyboard_interrupt",
    "commit_and_chain", "rollback_and_chain", "set_session", "commit_after_literal", "",
)  # fmt: skip
HANDLER_TIMEOUT = 0.5
# (attempt, outcome, error type) of each attempt of one event, until it is settled for good.
Attempts = list[tuple[int, str, str | None]]


async def through_the_kit(misbehave: str) -> Attempts:
    """Every attempt of the event through the kit: run, then retried as its retry queue would deliver it."""
    async with handler_kit(
        KIND, DATABASE_URL, modules=["tests.support.misbehaving_kind"], handler_timeout=HANDLER_TIMEOUT
    ) as kit:
        run = await kit.run(Misbehaving(token=f"kit-{misbehave}", misbehave=misbehave))
        runs = [run]
        while run.outcome == Outcome.RETRIED:
            run = await kit.retry(run)
            runs.append(run)
    return [(run.attempt, str(run.outcome), run.error_type) for run in runs]


def through_the_worker(events: list[dict], token: str) -> Attempts:
    """Every attempt of the event as the worker's log tells it: its canonical lines, and the error type of each
    failed attempt."""
    event_id = f"id-{token}"
    failed = {line["attempt"]: line["error_type"] for line in events
              if line.get("event") == "handler failed" and line.get("event_id") == event_id}  # fmt: skip
    return [(line["attempt"], line["outcome"], failed.get(line["attempt"])) for line in events
            if line.get("event") == "message" and line.get("event_id") == event_id]  # fmt: skip


def settled(attempts: Attempts) -> bool:
    return bool(attempts) and attempts[-1][1] not in (Outcome.RETRIED, Outcome.LEFT_FOR_REDELIVERY)


@pytest.mark.parametrize("batch_size", [1, 8])
async def test_each_misbehaving_handler_comes_to_the_same_outcomes_through_the_kit_and_a_worker(
    db, amqp, tmp_path, batch_size
):
    kit = {misbehave: await through_the_kit(misbehave) for misbehave in MISBEHAVIOURS}
    await declare.declare_kind(amqp, KIND, topology.DEFAULT_DELIVERY_LIMIT, DELAYS)
    for misbehave in MISBEHAVIOURS:  # queued before the worker starts: in one batch when batches hold 8
        body = json.dumps({"notify_type": KIND, "token": f"worker-{misbehave}", "misbehave": misbehave}).encode()
        message = aio_pika.Message(body, headers={"event_id": f"id-worker-{misbehave}"}, delivery_mode=2)
        await amqp.default_exchange.publish(message, routing_key=topology.kind_queue(KIND))
    worker = worker_process(
        tmp_path, KIND, "--handlers", "tests.support.misbehaving_kind",
        env={"HC_BATCH_SIZE": str(batch_size), "HC_HANDLER_TIMEOUT": str(HANDLER_TIMEOUT)},
    )  # fmt: skip

    async def all_settled() -> bool:
        events = worker.events()
        return all(settled(through_the_worker(events, f"worker-{misbehave}")) for misbehave in MISBEHAVIOURS)

    try:
        await eventually(all_settled, timeout=40)
    finally:
        worker.signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait)
    events = worker.events()
    by_worker = {misbehave: through_the_worker(events, f"worker-{misbehave}") for misbehave in MISBEHAVIOURS}
    outcomes = {misbehave: [outcome for _, outcome, _ in attempts] for misbehave, attempts in kit.items()}
    assert outcomes == {m: [outcome for _, outcome, _ in attempts] for m, attempts in by_worker.items()}
    assert kit == by_worker


async def test_a_handler_that_is_not_a_coroutine_function_is_refused_by_the_kit_and_by_a_worker(tmp_path):
    with pytest.raises((TypeError, ImportError), match="on_not_async.* is not a coroutine function"):
        async with handler_kit("TEST_NOT_ASYNC", DATABASE_URL, modules=["tests.support.not_async_kind"]):
            pass
    worker = worker_process(tmp_path, "TEST_NOT_ASYNC", "--handlers", "tests.support.not_async_kind")
    code = await asyncio.to_thread(worker.wait)
    lines = worker.output.strip().splitlines()
    assert (code, len(lines)) == (2, 1), worker.output
    assert "tests.support.not_async_kind" in lines[0] and "on_not_async" in lines[0], lines[0]
    assert "is not a coroutine function" in lines[0] and "Traceback" not in worker.output
