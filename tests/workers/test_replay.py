"""hypercard-replay keeps what it does not move where it was: same order, no delivery counted, on the real broker.

RabbitMQ 4.0 to 4.2 drop a quorum queue's message delivered more than 20 times when the queue has no dead-letter
target, as the holding queues have none. The local broker is 3.x (no default limit), so these tests set that
limit of 20 by policy, which 3.x applies the same way."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import shlex
from pathlib import Path

import aio_pika
import pytest

from infra import declare
from schemas import topology
from schemas.topology import HOLDING_POLICY
from tests.support.broker import AMQP_URL, TEST_VHOST, forget_kind, take
from tests.support.policies import effective_policies, policy, rabbitmqctl, wait_for_policy
from workers.replay import ReplayFilter, replay

pytestmark = pytest.mark.broker

RABBITMQ_4_DEFAULT_LIMIT = 20


async def put(channel: aio_pika.abc.AbstractChannel, queue: str, kind: str, event_id: str, **headers) -> None:
    message = aio_pika.Message(
        b'{"notify_type":"%s","n":"%s"}' % (kind.encode(), event_id.encode()),
        headers={"notify_type": kind, "event_id": event_id, **headers},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await channel.default_exchange.publish(message, routing_key=queue)


def delivery_counts(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[int]:
    """RabbitMQ's count of each message's earlier deliveries (3.x: x-delivery-count; 4.x also x-acquired-count)."""
    return [max((m.headers or {}).get(h, 0) for h in ("x-delivery-count", "x-acquired-count")) for m in messages]


@pytest.fixture
async def confirm_channel(amqp):
    connection = await aio_pika.connect(AMQP_URL)
    yield await connection.channel(publisher_confirms=True, on_return_raises=True)
    await connection.close()


def limited(queue: str):
    """RabbitMQ 4.0's default delivery limit on `queue` (pattern matching: re.search, as RabbitMQ does)."""
    return policy(f"^{re.escape(queue)}$", {"delivery-limit": RABBITMQ_4_DEFAULT_LIMIT})


async def test_a_dry_run_25_times_leaves_the_5_messages_in_order_and_counts_no_delivery(amqp, confirm_channel):
    dead = topology.dead_queue("RECHARGE")
    ids = [f"e{n}" for n in range(5)]
    for event_id in ids:
        await put(amqp, dead, "RECHARGE", event_id)
    with limited(dead):
        for _ in range(25):
            assert (await replay(confirm_channel, dead, ReplayFilter(), dry_run=True)).moved == ids
        left = await take(amqp, dead)
    assert [m.headers["event_id"] for m in left] == ids
    assert delivery_counts(left) == [0] * 5
    assert await take(amqp, topology.kind_queue("RECHARGE"), timeout=0.2) == []


async def test_a_filtered_replay_moves_the_matches_and_keeps_the_rest_in_order_uncounted(amqp, confirm_channel):
    kinds = ["CONSUME", "OPERATION", "CONSUME", "OPERATION", "CONSUME", "CONSUME"]
    for n, kind in enumerate(kinds):
        await put(amqp, topology.INVALID_QUEUE, kind, f"{kind[0].lower()}{n}")
    with limited(topology.INVALID_QUEUE):
        result = await replay(confirm_channel, topology.INVALID_QUEUE, ReplayFilter(kind="OPERATION"))
        assert result.moved == ["o1", "o3"] and not result.left
        for _ in range(24):  # looked at again and again, nothing more to move
            assert (await replay(confirm_channel, topology.INVALID_QUEUE, ReplayFilter(kind="OPERATION"))).moved == []
        left = await take(amqp, topology.INVALID_QUEUE)
    assert [m.headers["event_id"] for m in left] == ["c0", "c2", "c4", "c5"]
    assert delivery_counts(left) == [0] * 4
    moved = await take(amqp, topology.kind_queue("OPERATION"))
    assert [m.headers["event_id"] for m in moved] == ["o1", "o3"]


async def test_a_replay_with_a_count_keeps_the_order_of_what_it_leaves(amqp, confirm_channel):
    dead = topology.dead_queue("CONSUME")
    for event_id in ("a", "b", "c", "d", "e"):
        await put(amqp, dead, "CONSUME", event_id)
    result = await replay(confirm_channel, dead, ReplayFilter(event_id="c", count=1))
    assert result.moved == ["c"]
    left = await take(amqp, dead)
    assert [m.headers["event_id"] for m in left] == ["a", "b", "d", "e"]
    assert delivery_counts(left) == [0] * 4


async def test_a_kept_message_keeps_its_headers_and_properties(amqp, confirm_channel):
    unrouted = topology.UNROUTED_QUEUE
    sent_at = datetime.datetime(2026, 11, 30, 12, 0, 1, tzinfo=datetime.UTC)
    headers = {
        "notify_type": "CARD_STATUS_CHANGE", "event_id": "kept", "received_at": "2026-11-30T12:00:01.000+00:00",
        "platform_headers": {"nonce": "n1", "signature": "c2ln"}, "attempts": 3, "error_type": "GiveUp",
    }  # fmt: skip
    original = aio_pika.Message(
        b'{"notify_type":"CARD_STATUS_CHANGE"}', headers=headers, content_type="application/json",
        content_encoding="utf-8", delivery_mode=aio_pika.DeliveryMode.PERSISTENT, priority=3, correlation_id="c-1",
        reply_to="nowhere", message_id="m-1", timestamp=sent_at, type="CARD_STATUS_CHANGE", app_id="hypercard-gateway",
    )  # fmt: skip
    await amqp.default_exchange.publish(original, routing_key=unrouted)
    for _ in range(3):
        await replay(confirm_channel, unrouted, ReplayFilter(kind="OTHER"))
    (kept,) = await take(amqp, unrouted)
    assert kept.body == original.body
    assert {key: kept.headers[key] for key in headers} == headers and delivery_counts([kept]) == [0]
    properties = ("content_type", "content_encoding", "priority", "correlation_id", "reply_to", "message_id",
                  "timestamp", "type", "app_id", "delivery_mode")  # fmt: skip
    assert {name: getattr(kept, name) for name in properties} == {name: getattr(original, name) for name in properties}


async def test_a_copy_the_broker_refuses_stops_the_pass_and_loses_nothing(amqp, confirm_channel):
    dead = topology.dead_queue("OPERATION")
    for event_id in ("a", "b", "c"):
        await put(amqp, dead, "OPERATION", event_id)
    # Full (RabbitMQ counts the ready messages): the copy of the message in hand is refused.
    with policy(f"^{re.escape(dead)}$", {"max-length": 1, "overflow": "reject-publish"}):
        result = await replay(confirm_channel, dead, ReplayFilter(), dry_run=True)
    assert result.moved == ["a"] and result.stopped is not None and "did not take its copy" in result.stopped
    left = await take(amqp, dead)
    assert sorted(m.headers["event_id"] for m in left) == ["a", "b", "c"]


async def test_the_readmes_holding_policy_sets_the_limit_on_the_holding_queues_only(amqp):
    """The command the README gives operators, run as given (in the tests' vhost): RabbitMQ takes it, and it is in
    effect on every holding queue, a user kind's dead queue too, and on no queue a worker consumes."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith(f"rabbitmqctl set_policy -p / {HOLDING_POLICY}")]
    command = shlex.split(line)
    assert command[5:7] == [topology.HOLDING_PATTERN, json.dumps(topology.holding_policy_definition())]
    command[command.index("-p") + 1] = TEST_VHOST
    await declare.declare_kind(amqp, "LOW_BALANCE", retry_delays=(1.0,))
    try:
        rabbitmqctl(*command[1:])
        holding = [topology.INVALID_QUEUE, topology.UNVERIFIED_QUEUE, topology.UNROUTED_QUEUE,
                   topology.dead_queue("RECHARGE"), topology.dead_queue("LOW_BALANCE")]  # fmt: skip
        await asyncio.to_thread(wait_for_policy, holding, HOLDING_POLICY)
        in_effect = effective_policies()
        consumed = [topology.kind_queue("RECHARGE"), topology.kind_queue("LOW_BALANCE"),
                    topology.retry_queue("LOW_BALANCE", 1.0)]  # fmt: skip
        assert [in_effect[name] for name in consumed] == ["", "", ""]
    finally:
        rabbitmqctl("clear_policy", "-p", TEST_VHOST, HOLDING_POLICY)
        await forget_kind(amqp, "LOW_BALANCE")


async def test_a_crash_between_keeping_a_copy_and_acking_leaves_a_duplicate_never_a_loss(
    amqp, confirm_channel, monkeypatch
):
    unverified = topology.UNVERIFIED_QUEUE
    await put(amqp, unverified, "OPT_CODE", "held")

    async def crash(self, *args, **kwargs):
        raise ConnectionError("replay process died")

    monkeypatch.setattr(aio_pika.IncomingMessage, "ack", crash)
    with pytest.raises(ConnectionError):
        await replay(confirm_channel, unverified, ReplayFilter(), dry_run=True)
    await confirm_channel.close()  # the dying process's channel goes away: the original returns to its queue
    monkeypatch.undo()
    assert [m.headers["event_id"] for m in await take(amqp, unverified)] == ["held", "held"]


async def test_a_dry_run_over_a_retry_queue_keeps_each_copys_due_time(amqp, confirm_channel):
    """`--from` takes any queue: a retry copy a replay leaves goes back with the time it has left (the review found
    replay, unlike find and inspect, put it back plainly: its TTL started the whole step again)."""
    step = topology.retry_queue("OPEN_CARD", 30)
    await amqp.queue_delete(step)
    await declare.declare_retry_queue(amqp, "OPEN_CARD", 30)
    due = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=3)
    await put(amqp, step, "OPEN_CARD", "retrying1", attempt=2, retry_due_at=due.isoformat(timespec="milliseconds"))
    try:
        result = await replay(confirm_channel, step, ReplayFilter(), dry_run=True)
        assert result.moved == ["retrying1"]
        queue = topology.kind_queue("OPEN_CARD")
        for _ in range(80):  # due in 3 s; its step, 30 s, would be far too late
            if (await amqp.declare_queue(queue, passive=True)).declaration_result.message_count == 1:
                break
            await asyncio.sleep(0.1)
        (back,) = await take(amqp, queue)
        assert back.headers["event_id"] == "retrying1" and back.headers["attempt"] == 2
    finally:
        await amqp.queue_delete(step)
