"""`hypercard-inspect`: what a holding queue holds and why, the queue left exactly as it was."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import pytest

from infra import declare
from schemas import topology
from tests.support.broker import AMQP_URL, take
from tests.support.policies import policy
from tests.support.waiting import eventually
from workers.inspection import HeldMessage, InspectFilter, Inspection, inspect, render

pytestmark = pytest.mark.broker
DEAD = topology.dead_queue("OPEN_CARD")
REASONS = [
    ("GiveUp", "card type 7 is not offered to this merchant"),
    ("DecodeError", "Expected `str`, got `array` - at `$.email`"),
    ("HandlerTimeout", "the handler took longer than 30 s"),
]
BODY = {"notify_type": "OPEN_CARD", "card_type_id": "7", "email": "someone@example.com", "mobile": "13800138000",
        "mobile_code": "86", "result": 1}  # fmt: skip


@pytest.fixture
async def confirm_channel(amqp):
    connection = await aio_pika.connect(AMQP_URL)
    yield await connection.channel(publisher_confirms=True, on_return_raises=True)
    await connection.close()


async def put_dead_letters(amqp) -> list[str]:
    ids = []
    for n, (error_type, error_message) in enumerate(REASONS):
        ids.append(f"dead{n}")
        headers = {"notify_type": "OPEN_CARD", "event_id": f"dead{n}", "received_at": "2026-11-30T10:00:00.000+00:00",
                   "error_type": error_type, "error_message": error_message, "attempts": n + 1}  # fmt: skip
        message = aio_pika.Message(json.dumps(BODY).encode(), headers=headers, delivery_mode=2)
        await amqp.default_exchange.publish(message, routing_key=DEAD)
    return ids


def counts(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[int]:
    return [max((m.headers or {}).get(h, 0) for h in ("x-delivery-count", "x-acquired-count")) for m in messages]


async def test_inspecting_25_times_names_each_reason_and_leaves_the_queue_as_it_was(amqp, confirm_channel):
    ids = await put_dead_letters(amqp)
    with policy(f"^{DEAD.replace('.', '[.]')}$", {"delivery-limit": 20}):  # RabbitMQ 4.0's default limit
        for _ in range(25):
            result = await inspect(confirm_channel, DEAD, InspectFilter())
            assert result.waiting == 3 and not result.stopped
            expected = [(event_id, *reason) for event_id, reason in zip(ids, REASONS, strict=True)]
            assert [(m.event_id, m.error_type, m.reason) for m in result.messages] == expected
            assert [m.attempts for m in result.messages] == [1, 2, 3]
        left = await take(amqp, DEAD)
    assert [m.headers["event_id"] for m in left] == ids
    assert counts(left) == [0, 0, 0]


async def test_filters_and_one_message_shown_with_its_secrets_redacted(amqp, confirm_channel):
    await put_dead_letters(amqp)
    only = await inspect(confirm_channel, DEAD, InspectFilter(error_type="DecodeError"))
    assert [m.event_id for m in only.messages] == ["dead1"]
    older = await inspect(confirm_channel, DEAD, InspectFilter(older_than=60))
    assert len(older.messages) == 3 and all(m.age_seconds > 60 for m in older.messages)
    assert (await inspect(confirm_channel, DEAD, InspectFilter(newer_than=60))).messages == []
    shown = await inspect(confirm_channel, DEAD, InspectFilter(), show="dead2")
    (message,) = shown.messages
    assert message.body["card_type_id"] == "7" and message.body["email"] == "[redacted]"
    assert message.body["mobile"] == "[redacted]"
    assert len(await take(amqp, DEAD)) == 3


async def test_the_command_prints_each_reason(amqp, tmp_path: Path):
    await put_dead_letters(amqp)
    command = [str(Path(sys.executable).parent / "hypercard-inspect"), "dead", "OPEN_CARD"]
    env = {**os.environ, "HC_AMQP_URL": AMQP_URL}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=60)

    listed = await asyncio.to_thread(run)
    assert listed.returncode == 0, listed.stderr
    for error_type, error_message in REASONS:
        assert error_type in listed.stdout and error_message[:40] in listed.stdout
    shown = await asyncio.to_thread(run, "--show", "dead0")
    assert '"card_type_id": "7"' in shown.stdout
    assert "someone@example.com" not in shown.stdout and "13800138000" not in shown.stdout
    as_json = await asyncio.to_thread(run, "--json")
    assert [json.loads(line)["error_type"] for line in as_json.stdout.splitlines()] == [r[0] for r in REASONS]
    assert len(await take(amqp, DEAD)) == 3


def test_a_long_error_type_is_shown_whole_and_the_columns_stay_aligned():
    """`UndefinedTableError` was cut to `UndefinedTableErro` by a fixed 18-character column."""
    held = [
        HeldMessage("hypercard.open_card.dead", 1, "OPEN_CARD", "e9d3", None, None, 3, "UndefinedTableError", "gone"),
        HeldMessage("hypercard.open_card.dead", 2, "OPEN_CARD", "0c1d", None, None, 1, "DecodeError", "not text"),
    ]
    lines = render(Inspection("hypercard.open_card.dead", 2, held)).splitlines()
    assert "UndefinedTableError gone" in lines[2]
    assert lines[1].index("reason") == lines[2].index("gone") == lines[3].index("not text")


async def test_a_retry_copy_inspected_in_its_retry_queue_still_leaves_when_it_was_due(amqp, confirm_channel):
    # hypercard-inspect takes any queue name: a retry queue put back plainly would start its TTL again, a whole step
    # later than due, and an inspection every few minutes would hold it back for good.
    step = topology.retry_queue("OPEN_CARD", 30)
    await amqp.queue_delete(step)
    await declare.declare_retry_queue(amqp, "OPEN_CARD", 30)
    due = datetime.now(UTC) + timedelta(seconds=3)
    headers = {"notify_type": "OPEN_CARD", "event_id": "retrying0", "attempt": 2, "last_error_type": "RuntimeError",
               "retry_due_at": due.isoformat(timespec="milliseconds")}  # fmt: skip
    await amqp.default_exchange.publish(
        aio_pika.Message(json.dumps(BODY).encode(), headers=headers, delivery_mode=2), routing_key=step
    )
    try:
        (held,) = (await inspect(confirm_channel, step, InspectFilter())).messages
        assert (held.event_id, held.attempts) == ("retrying0", 2)
        queue = topology.kind_queue("OPEN_CARD")
        await eventually(lambda: _holds_one(amqp, queue), timeout=8)  # due in 3 s; its step, 30 s, would be too late
        (back,) = await take(amqp, queue)
        assert back.headers["event_id"] == "retrying0"
    finally:
        await amqp.queue_delete(step)  # nothing of this test reaches OPEN_CARD's queue in a later one


async def _holds_one(amqp, queue: str) -> bool:
    return (await amqp.declare_queue(queue, passive=True)).declaration_result.message_count == 1
