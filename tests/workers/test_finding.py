"""`hypercard-find`: an event found in each place it can be, on the real broker and database, each queue left with
the same messages in the same order, none with a delivery counted, a retry copy still leaving when it was due."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from secrets import token_hex

import aio_pika
import pytest

from infra import declare
from infra.permissions import OPERATOR
from infra.settings import load_settings
from schemas import topology
from tests.support.broker import AMQP_URL, TEST_VHOST, ensure_management_api, take
from tests.support.database import DATABASE_URL
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.policies import rabbitmqctl
from tests.support.tracked_kind import ATTEMPT_TIMES, Tracked, record
from tests.support.waiting import eventually
from workers import database
from workers.app import create_worker
from workers.finding import Finding, find, render
from workers.registry import REGISTRY, Registry
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

pytestmark = [pytest.mark.broker, pytest.mark.database]
KIND = "TEST_TRACKED"
QUEUE = topology.kind_queue(KIND)
DEAD = topology.dead_queue(KIND)
SETTINGS = load_settings(
    WorkerSettings, {}, amqp_url=AMQP_URL, database_url=DATABASE_URL, shutdown_grace=5, id_secret=TEST_ID_SECRET
)


def new_id() -> str:
    return os.urandom(16).hex()  # the shape of a gateway's event id: 32 hex digits


def counts(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[int]:
    return [max((m.headers or {}).get(h, 0) for h in ("x-delivery-count", "x-acquired-count")) for m in messages]


def ids(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[str]:
    return [m.headers["event_id"] for m in messages]


async def send(amqp, event_id: str, routing_key: str = topology.routing_key(KIND), **fields) -> None:
    """Through hypercard.events as the gateway publishes: the body, and the headers its workers and tools read."""
    kind = fields.pop("notify_type", KIND)
    extra = fields.pop("headers", {})
    body = json.dumps({"notify_type": kind, "token": event_id, **fields}).encode()
    headers = {"notify_type": kind, "event_id": event_id, "received_at": datetime.now(UTC).isoformat(), **extra}
    events = await amqp.get_exchange(topology.EVENTS_EXCHANGE)
    await events.publish(aio_pika.Message(body, headers=headers, delivery_mode=2), routing_key=routing_key)


async def messages_in(amqp, queue: str) -> int:
    return (await amqp.declare_queue(queue, passive=True)).declaration_result.message_count


async def holds(amqp, queue: str, n: int) -> bool:
    return await messages_in(amqp, queue) == n


@contextlib.asynccontextmanager
async def worker(registry: Registry = REGISTRY) -> AsyncIterator[WorkerRuntime]:
    runtime = create_worker(SETTINGS, [KIND], registry)
    await runtime.start()
    try:
        assert runtime.consuming, "the worker did not start consuming"
        yield runtime
    finally:
        await runtime.stop()


def with_steps(*steps: float) -> Registry:
    """The test kind's handler, with a retry schedule of `steps` (seconds)."""
    registry = Registry()
    registry.handles(Tracked, retry_delays=steps)(record)
    return registry


@pytest.fixture
async def inbox(db) -> None:
    """A fresh, migrated database (the inbox table exists), and the test kind's queues empty."""
    pool = await database.create_pool(DATABASE_URL, 1)
    await database.migrate(pool)
    await pool.close()


async def look(event_id: str, **options) -> Finding:
    return await find(SETTINGS, event_id, kinds=[KIND], **options)


async def test_handled_from_the_inbox_and_a_duplicate_waiting_in_its_kinds_queue(db, amqp):
    event_id = new_id()
    async with worker():
        await send(amqp, event_id)
        await eventually(lambda: db.fetch("SELECT 1 FROM test_effects WHERE token = $1", event_id))
    handled = await find(SETTINGS, event_id)  # every kind the workers know, as the command looks by default
    (place,) = handled.places
    assert (place.state, place.where, place.kind) == ("handled", "inbox", KIND)
    assert abs((datetime.now(UTC) - datetime.fromisoformat(place.at)).total_seconds()) < 30
    assert QUEUE in handled.looked_in and topology.INVALID_QUEUE in handled.looked_in

    await send(amqp, event_id)  # the platform sent it again, and no worker runs
    again = await look(event_id)
    assert [(p.state, p.where, p.position, p.of) for p in again.places] == [
        ("handled", "inbox", None, None),
        ("waiting", QUEUE, 1, 1),
    ]
    assert ids(await take(amqp, QUEUE)) == [event_id]


async def test_waiting_in_its_kinds_queue_which_is_left_in_order_and_uncounted(inbox, amqp):
    sent = [new_id() for _ in range(5)]
    for event_id in sent:
        await send(amqp, event_id)
    for _ in range(3):
        finding = await look(sent[3])
        (place,) = finding.places
        assert (place.state, place.where, place.kind, place.position, place.of) == ("waiting", QUEUE, KIND, 4, 5)
    over = await look(sent[3], limit=4)  # a queue longer than the limit is not looked in at all
    assert not over.found and over.not_looked_in == {QUEUE: 5}
    left = await take(amqp, QUEUE)
    assert ids(left) == sent and counts(left) == [0] * 5


async def test_retrying_with_its_step_attempt_and_due_time_which_it_keeps(db, amqp):
    step = topology.retry_queue(KIND, 30)
    await amqp.queue_delete(step)
    sent = [new_id() for _ in range(3)]
    thirty = with_steps(30)
    async with worker(thirty):
        for n, event_id in enumerate(sent, start=1):  # one at a time: their copies enter the retry queue in order
            await send(amqp, event_id, fail_until=2)
            await eventually(lambda n=n: holds(amqp, step, n))
    scheduled = datetime.now(UTC)
    finding = await look(sent[1], registry=thirty)
    (place,) = finding.places
    assert (place.state, place.where, place.position, place.of) == ("retrying", step, 2, 3)
    assert (place.attempt, place.step_seconds, place.error_type) == (2, 30, "RuntimeError")
    assert place.reason == "failing attempt 1"
    assert 20 < (datetime.fromisoformat(place.due_at) - scheduled).total_seconds() <= 30
    left = await take(amqp, step)
    assert ids(left) == sent and counts(left) == [0] * 3
    # Each copy was put back with the time it had left, not a whole step again.
    assert all(m.expiration is not None and 0 < m.expiration < 30 for m in left)


async def test_a_retry_copy_looked_at_midway_still_leaves_when_it_was_due(db, amqp):
    await amqp.queue_delete(topology.retry_queue(KIND, 3))
    token = new_id()
    three = with_steps(3)
    async with worker(three):
        await send(amqp, token, fail_until=2)
        await eventually(lambda: holds(amqp, topology.retry_queue(KIND, 3), 1))

        async def looked_at_midway() -> bool:  # each look takes the copy out and puts it back
            (place,) = (await look(token, registry=three)).places
            assert place.state == "retrying"
            return (datetime.fromisoformat(place.due_at) - datetime.now(UTC)).total_seconds() < 1.8

        await eventually(looked_at_midway, interval=0.2)
        looked = time.monotonic()
        await eventually(lambda: db.fetch("SELECT 1 FROM test_effects WHERE token = $1", token), timeout=10)
    first, second = ATTEMPT_TIMES[token]
    # Put back with a whole step again, it would have waited 3 s more than its last look: at least 4.2 s in all.
    assert looked - first > 1.2
    assert 2.8 < second - first < 4.0


async def test_held_in_the_dead_letter_queue_with_its_reason(db, amqp):
    before, event_id, after = new_id(), new_id(), new_id()
    await amqp.default_exchange.publish(
        aio_pika.Message(b"{}", headers={"event_id": before, "notify_type": KIND}), routing_key=DEAD
    )
    async with worker():
        await send(amqp, event_id, outcome="give_up")
        await eventually(lambda: holds(amqp, DEAD, 2))
    await amqp.default_exchange.publish(
        aio_pika.Message(b"{}", headers={"event_id": after, "notify_type": KIND}), routing_key=DEAD
    )
    (place,) = (await look(event_id)).places
    assert (place.state, place.where, place.position, place.of) == ("held", DEAD, 2, 3)
    assert (place.error_type, place.reason, place.attempt) == ("GiveUp", "this event can never be handled", 1)
    left = await take(amqp, DEAD)
    assert ids(left) == [before, event_id, after] and counts(left) == [0] * 3


async def test_held_as_invalid_unverified_or_unrouted_with_the_reason(inbox, amqp):
    invalid, unverified, unrouted, other = new_id(), new_id(), new_id(), new_id()
    why_invalid = "OPEN_CARD: Expected `str`, got `int` - at `$.email`"
    why_unverified = "no signature header"
    await send(amqp, other, topology.INVALID_ROUTING_KEY, notify_type="OPEN_CARD", headers={"validation_error": "x"})
    await send(amqp, invalid, topology.INVALID_ROUTING_KEY, notify_type="OPEN_CARD",
               headers={"validation_error": why_invalid})  # fmt: skip
    await send(amqp, unverified, topology.UNVERIFIED_ROUTING_KEY, headers={"unverified_reason": why_unverified})
    await send(amqp, unrouted, "hypercard.nobody_binds_this", notify_type="NOBODY_BINDS_THIS")
    found = {event_id: (await look(event_id)).places for event_id in (invalid, unverified, unrouted)}
    assert [(p.state, p.where, p.position, p.reason) for p in found[invalid]] == [
        ("held", topology.INVALID_QUEUE, 2, why_invalid)
    ]
    assert [(p.state, p.where, p.reason) for p in found[unverified]] == [
        ("held", topology.UNVERIFIED_QUEUE, why_unverified)
    ]
    ((place,),) = [found[unrouted]]
    assert (place.state, place.where, place.kind) == ("held", topology.UNROUTED_QUEUE, "NOBODY_BINDS_THIS")
    assert "no queue was bound for its kind" in place.reason
    assert ids(left := await take(amqp, topology.INVALID_QUEUE)) == [other, invalid] and counts(left) == [0, 0]
    assert ids(await take(amqp, topology.UNVERIFIED_QUEUE)) == [unverified]
    assert ids(await take(amqp, topology.UNROUTED_QUEUE)) == [unrouted]


async def test_not_seen(inbox, amqp):
    await send(amqp, new_id())
    finding = await look(new_id())
    assert not finding.found and finding.places == []
    assert QUEUE in finding.looked_in and DEAD in finding.looked_in and topology.UNROUTED_QUEUE in finding.looked_in
    assert await messages_in(amqp, QUEUE) == 1


async def test_the_command_says_where_and_exits_1_when_not_seen(inbox, amqp):
    waiting, held = new_id(), new_id()
    await send(amqp, waiting)
    await send(amqp, held, topology.UNVERIFIED_ROUTING_KEY, headers={"unverified_reason": "signature mismatch"})
    command = [str(Path(sys.executable).parent / "hypercard-find")]
    env = {**os.environ, "HC_AMQP_URL": AMQP_URL, "HC_DATABASE_URL": DATABASE_URL}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *args, "--kind", KIND], env=env, capture_output=True, text=True, timeout=60)

    found = await asyncio.to_thread(run, waiting)
    assert found.returncode == 0, found.stderr
    assert f"waiting   {QUEUE}, 1 of 1: {KIND}" in found.stdout
    shown = await asyncio.to_thread(run, held, "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["found"] is True
    assert [(p["state"], p["where"], p["reason"]) for p in document["places"]] == [
        ("held", topology.UNVERIFIED_QUEUE, "signature mismatch")
    ]
    missing = await asyncio.to_thread(run, new_id())
    assert missing.returncode == 1
    assert "not seen: not in the inbox" in missing.stdout
    assert ids(await take(amqp, QUEUE)) == [waiting]
    assert ids(await take(amqp, topology.UNVERIFIED_QUEUE)) == [held]


@pytest.fixture
def operator_url() -> str:
    """A broker user of this run with the operator role's permissions (`infra.permissions`), deleted afterwards."""
    user, password = f"hypercard_find_{token_hex(4)}", token_hex(12)
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", TEST_VHOST, user, OPERATOR.configure, OPERATOR.write, OPERATOR.read)
        yield f"amqp://{user}:{password}@127.0.0.1:5672/{TEST_VHOST}"
    finally:
        rabbitmqctl("delete_user", user)


async def test_with_the_operator_user_the_queues_it_may_not_read_are_named_and_left_alone(inbox, amqp, operator_url):
    waiting, dead = new_id(), new_id()
    await send(amqp, waiting)
    await amqp.default_exchange.publish(
        aio_pika.Message(b"{}", headers={"event_id": dead, "notify_type": KIND, "error_type": "GiveUp"}),
        routing_key=DEAD,
    )
    settings = load_settings(WorkerSettings, {}, amqp_url=operator_url, database_url=DATABASE_URL)
    held = await find(settings, dead, kinds=[KIND])
    assert [(p.state, p.where) for p in held.places] == [("held", DEAD)]
    assert QUEUE in held.refused and QUEUE not in held.looked_in
    assert DEAD in held.looked_in and topology.INVALID_QUEUE in held.looked_in
    assert not (await find(settings, waiting, kinds=[KIND])).found
    left = await take(amqp, QUEUE)
    assert ids(left) == [waiting] and counts(left) == [0]


async def test_a_forged_retry_due_at_years_away_neither_stops_the_search_nor_parks_the_copy(inbox, amqp):
    # Headers are input: anyone who may publish to the default exchange can put a retry copy in a retry queue.
    step = topology.retry_queue(KIND, 30)
    await amqp.queue_delete(step)
    await declare.declare_retry_queue(amqp, KIND, 30)
    forged, sought = new_id(), new_id()
    in_twenty_seconds = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
    for event_id, due in ((forged, "9999-12-31T23:59:59.000+00:00"), (sought, in_twenty_seconds)):
        await amqp.default_exchange.publish(
            aio_pika.Message(b"{}", headers={"event_id": event_id, "notify_type": KIND, "attempt": 2,
                                             "retry_due_at": due}, delivery_mode=2),
            routing_key=step,
        )  # fmt: skip
    finding = await look(sought, registry=with_steps(30))
    assert finding.stopped == []
    assert [(p.state, p.where, p.position) for p in finding.places] == [("retrying", step, 2)]
    assert DEAD in finding.looked_in and topology.UNROUTED_QUEUE in finding.looked_in
    left = await take(amqp, step)
    assert ids(left) == [forged, sought] and counts(left) == [0, 0]
    # Never longer than its queue's step: the queue's TTL would cut it there anyway.
    assert all(m.expiration is not None and m.expiration <= 30 for m in left)


async def test_a_retry_copy_is_found_though_the_operators_retry_delays_differ_from_the_workers(db, amqp, monkeypatch):
    # The workers run with HC_RETRY_DELAYS=45 and the operator's shell has no HC_RETRY_DELAYS: the retry queue the
    # copy waits in is not one the default schedule names. "Not seen" would send the operator hunting a lost event.
    # The management API lists the retry queues that exist; without it, the output says which steps were looked in.
    await asyncio.to_thread(ensure_management_api)
    step = topology.retry_queue(KIND, 45)
    await amqp.queue_delete(step)
    await declare.declare_retry_queue(amqp, KIND, 45)
    token = new_id()
    workers_settings = load_settings(WorkerSettings, {}, amqp_url=AMQP_URL, database_url=DATABASE_URL,
                                     shutdown_grace=5, id_secret=TEST_ID_SECRET, retry_delays=(45,))  # fmt: skip
    registry = Registry()
    registry.handles(Tracked)(record)  # no schedule of its own: HC_RETRY_DELAYS decides
    runtime = create_worker(workers_settings, [KIND], registry)
    await runtime.start()
    try:
        await send(amqp, token, fail_until=2)
        await eventually(lambda: holds(amqp, step, 1))
    finally:
        await runtime.stop()
    try:
        finding = await look(token, registry=registry)  # SETTINGS: the default schedule, no HC_RETRY_DELAYS
        assert [(p.state, p.where) for p in finding.places] == [("retrying", step)]
        assert finding.steps_from_settings is None
        monkeypatch.setenv("HC_MANAGEMENT_URL", "http://127.0.0.1:9")  # no management API answers there
        blind = await look(token, registry=registry)
        assert blind.places == [] and blind.steps_from_settings == sorted(SETTINGS.retry_delays)
        assert "the steps 1 s, 10 s, 60 s, 600 s, 3600 s only (no management API" in render(blind, 30)
    finally:
        await amqp.queue_delete(step)
