"""Crafted messages through hypercard-inspect, hypercard-replay --dry-run and hypercard-find, the real programs on
the real broker (issue 26, finding 4): each tool reads the whole queue, prints no control character, costs no CPU a
message chooses, and leaves every message where it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import aio_pika
import pytest

from schemas import topology
from tests.support.broker import AMQP_URL, TEST_VHOST, amqp_url
from tests.support.database import DATABASE_URL
from workers.inspection import InspectFilter, inspect

pytestmark = pytest.mark.broker
BIN = os.path.dirname(sys.executable)
DEAD = topology.dead_queue("RECHARGE")
ESCAPES = "\x1b]0;owned-title\x07\x1b[2J"
CONTROL = [chr(n) for n in range(32) if chr(n) != "\n"] + ["\x7f", "\x9b"]
OTHER_USER = f"{TEST_VHOST}_other"
OTHER_URL = amqp_url().replace("guest:guest", f"{OTHER_USER}:other-secret")
ORDER = ["before", "escaped", "long", "deep", "theirs", "after"]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def other_user(test_vhost):
    """A second broker user: a message it published carries `user_id` = its name, which no other user may copy."""
    _rabbitmqctl("add_user", OTHER_USER, "other-secret")
    _rabbitmqctl("set_permissions", "-p", TEST_VHOST, OTHER_USER, ".*", ".*", ".*")
    yield OTHER_URL
    _rabbitmqctl("delete_user", OTHER_USER)


def held(event_id: str, body: bytes = b'{"notify_type":"RECHARGE"}', **headers: object) -> aio_pika.Message:
    headers = {"notify_type": "RECHARGE", "event_id": event_id, "attempts": 6, "error_type": "GiveUp", **headers}
    return aio_pika.Message(body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


def nested(depth: int) -> bytes:
    return b'{"notify_type":"RECHARGE","x":' + b"[" * depth + b"]" * depth + b"}"


@pytest.fixture
async def crafted(amqp, other_user):
    """hypercard.recharge.dead holding, in order: a plain message, one whose notify_type, event id and reason carry
    terminal escapes, one with a 60 KB error_message, one whose body is nested 900 deep, one published by another
    broker user (user_id set), and a plain one after them."""
    queue = await amqp.get_queue(DEAD)
    await queue.purge()
    publish = amqp.default_exchange.publish
    await publish(held("before"), routing_key=DEAD)
    escaped = held("escaped", notify_type=ESCAPES + "RECHARGE", error_message=ESCAPES + "ALL QUEUES EMPTY")
    escaped.headers["error_type"] = ESCAPES
    await publish(escaped, routing_key=DEAD)
    await publish(held("long", error_message="a" * 60_000), routing_key=DEAD)
    await publish(held("deep", body=nested(900)), routing_key=DEAD)
    connection = await aio_pika.connect(other_user)
    try:
        channel = await connection.channel(publisher_confirms=True)
        theirs = held("theirs")
        theirs.user_id = OTHER_USER
        await channel.default_exchange.publish(theirs, routing_key=DEAD)
    finally:
        await connection.close()
    await publish(held("after"), routing_key=DEAD)
    return queue


async def event_ids(channel, queue_name: str) -> list[str]:
    """The event ids now in the queue, in order, each put back at once (a pass the tests make, as the tools do)."""
    queue = await channel.declare_queue(queue_name, passive=True)
    found = []
    for _ in range(queue.declaration_result.message_count or 0):
        message = await queue.get(no_ack=True)
        found.append(message.headers["event_id"])
        await channel.default_exchange.publish(
            aio_pika.Message(message.body, headers=message.headers), routing_key=queue_name
        )
    return found


def tool(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.path.join(BIN, args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HC_AMQP_URL": AMQP_URL, "HC_DATABASE_URL": DATABASE_URL, **(env or {})},
    )


def assert_no_control_character(result: subprocess.CompletedProcess) -> None:
    printed = result.stdout + result.stderr
    raw = sorted({repr(c) for c in CONTROL if c in printed})
    assert not raw, f"printed raw control characters {raw}: {printed[:300]!r}"
    assert "Traceback" not in printed, printed[-2000:]


async def test_inspect_reads_all_6_crafted_messages_twice_and_prints_no_control_character(amqp, crafted):
    for _ in range(2):  # the message of another user must not break the next pass either
        result = tool("hypercard-inspect", "dead", "RECHARGE")
        assert result.returncode == 0, result.stderr
        assert_no_control_character(result)
        assert "6 message(s), 6 shown" in result.stdout
        for event_id in ORDER:
            assert event_id in result.stdout
        assert "owned-title" in result.stdout  # shown, escaped
    assert await event_ids(amqp, DEAD) == ORDER


async def test_inspect_json_carries_no_control_character(amqp, crafted):
    result = tool("hypercard-inspect", "dead", "RECHARGE", "--json")
    assert result.returncode == 0, result.stderr
    assert_no_control_character(result)
    assert [json.loads(line)["event_id"] for line in result.stdout.splitlines()] == ORDER


async def test_replay_dry_run_lists_all_6_crafted_messages_twice_and_prints_no_control_character(amqp, crafted):
    for _ in range(2):
        result = tool("hypercard-replay", "RECHARGE", "--dry-run")
        assert_no_control_character(result)
        assert "escaped" in result.stderr and "owned-title" in result.stderr  # left: no routable kind
        for event_id in ("before", "long", "deep", "theirs", "after"):
            assert event_id in result.stdout.split()
        assert "would replay 5 message(s)" in result.stderr
    assert await event_ids(amqp, DEAD) == ORDER


async def test_find_reads_past_every_crafted_message_and_prints_no_control_character(amqp, crafted, make_worker):
    await make_worker("TEST_TRACKED")  # the inbox table, as a worker leaves it
    for event_id in ("escaped", "theirs", "after"):
        result = tool("hypercard-find", event_id, "--kind", "RECHARGE")
        assert result.returncode == 0, result.stdout + result.stderr
        assert_no_control_character(result)
        assert DEAD in result.stdout
    assert "owned-title" in tool("hypercard-find", "escaped", "--kind", "RECHARGE").stdout
    assert await event_ids(amqp, DEAD) == ORDER


async def test_inspecting_a_60_kb_error_message_costs_under_100_ms_of_cpu_not_6_5_s(amqp, crafted):
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        started = time.process_time()
        result = await inspect(channel, DEAD, InspectFilter(event_id="long"))
        spent = time.process_time() - started
    assert [held.event_id for held in result.messages] == ["long"]
    assert len(result.messages[0].reason or "") <= 1000
    assert spent < 0.1, f"a pass over 6 messages, one with a 60 KB error_message, took {spent:.2f} s of CPU"


async def test_show_of_a_body_nested_900_deep_says_not_decodable_without_a_traceback(amqp, crafted):
    result = tool("hypercard-inspect", "dead", "RECHARGE", "--show", "deep")
    assert result.returncode == 0, result.stderr
    assert "not decodable" in result.stdout
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stdout + result.stderr
    assert await event_ids(amqp, DEAD) == ORDER


async def test_show_of_an_unknown_kind_gives_field_names_and_lengths_not_values(amqp):
    body = b'{"notify_type":"MYSTERY_KIND","card_no":"4111111111111111","cvv":"987","expiry":"12/29"}'
    message = aio_pika.Message(body, headers={"notify_type": "MYSTERY_KIND", "event_id": "mystery"})
    await amqp.default_exchange.publish(message, routing_key=topology.UNROUTED_QUEUE)
    result = tool("hypercard-inspect", "unrouted", "--show", "mystery")
    assert result.returncode == 0, result.stderr
    for name in ("card_no", "cvv", "expiry"):
        assert name in result.stdout
    for value in ("4111111111111111", "987", "12/29"):
        assert value not in result.stdout, result.stdout
    assert "16" in result.stdout  # the card number's length
    shown = tool("hypercard-inspect", "unrouted", "--show", "mystery", "--show-values")
    assert shown.returncode == 0 and "12/29" in shown.stdout
    assert "values" in shown.stderr.lower()  # the warning
    assert [m.headers["event_id"] for m in [await (await amqp.get_queue(topology.UNROUTED_QUEUE)).get()]] == ["mystery"]
