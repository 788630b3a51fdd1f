"""The accounting harness: plays the platform, then accounts for every event it sent.

It sends uniquely identifiable, correctly signed events of all nine kinds at a steady rate over real HTTP, records
every reply, and, like the platform, sends again every event that was not answered code 1 (on a compressed
schedule) until it is. At the end it reads the workers' effects (tests/support/effect_tap.py) in PostgreSQL:
every event answered code 1 must have been handled, and handled once, and its effect outside the database called
once (as many times as it was handled, for CONSUME, whose every notification counts)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

import aio_pika
import aiohttp
import asyncpg
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.send_cli import signed_headers
from gateway.signature import FIELDS_DECODER, readings, rendered_fields
from infra.identifiers import IdentifierKey
from schemas import topology
from schemas.events import KNOWN_KINDS
from schemas.samples import distinct_bodies
from tests.support.broker import AMQP_URL
from tests.support.identifiers import TEST_ID_SECRET

# The platform's schedule is 1 min, 5 min, 30 min ...; compressed here to seconds.
RESEND_AFTER = (0.5, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0)
REFUSED, CUT = -1, 0


@dataclass
class Event:
    kind: str
    body: bytes
    event_id: str
    # Per attempt: 1 (code 1), -HTTP status (any other answer), REFUSED (no connection), CUT (no complete reply).
    replies: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return 1 in self.replies


def make_events(count: int, run: str) -> list[Event]:
    """Events with the ids the gateways give them (they are started with the test secret)."""
    key = IdentifierKey(TEST_ID_SECRET)
    return [
        Event(kind, raw, key.event_id(next(readings({}, rendered_fields(FIELDS_DECODER.decode(raw)))).body))
        for kind, raw in distinct_bodies(count, run)
    ]


@dataclass
class Report:
    sent: int
    accepted: int
    resent: int
    handled: int
    lost: int
    double_effects: int
    consume_repeats: int
    never_accepted: int
    # Effects outside the database: handled events never called (lost), events called more often than handled
    # (double: a call for a handling rolled back, or made twice), and calls a SIGKILLed worker made and the next one
    # made again with the same idempotency key (the documented at-least-once; not counted as double).
    external_lost: int = 0
    double_external: int = 0
    external_repeats_after_kill: int = 0

    cut: int = 0

    def line(self) -> str:
        return (
            f"sent {self.sent}, accepted {self.accepted}, resent {self.resent}, handled {self.handled}, "
            f"lost {self.lost}, double effects {self.double_effects}, external effects lost {self.external_lost}, "
            f"double external effects {self.double_external} (repeated with their key after a SIGKILL: "
            f"{self.external_repeats_after_kill}; CONSUME repeats, idempotent: "
            f"{self.consume_repeats}; never accepted: {self.never_accepted}; cut replies: {self.cut})"
        )


class LoadBalancer:
    """Round robin over the gateways that answer /readyz with 200, checked every `interval` seconds, as HAProxy
    does in the compose deployment: a draining gateway stops getting requests before it stops serving."""

    def __init__(self, urls: list[str], interval: float = 0.2) -> None:
        self.urls = urls
        self.ready = set(urls)
        self.interval = interval
        self._turn = itertools.count()

    def next(self) -> str:
        ready = [url for url in self.urls if url in self.ready] or self.urls
        return ready[next(self._turn) % len(ready)]

    async def check(self, session: aiohttp.ClientSession) -> None:
        while True:
            for url in self.urls:
                readyz = url.replace("/hc_sync/common", "/readyz")
                try:
                    async with session.get(readyz, timeout=aiohttp.ClientTimeout(total=1)) as reply:
                        healthy = reply.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    healthy = False
                (self.ready.add if healthy else self.ready.discard)(url)
            await asyncio.sleep(self.interval)


class PlatformPlayer:
    """Sends events at `rate` per second to the gateways, through a health-checking round robin."""

    def __init__(self, urls: list[str], key: rsa.RSAPrivateKey, rate: float, timeout: float = 10.0) -> None:
        self.balancer = LoadBalancer(urls)
        self.key = key
        self.rate = rate
        self.timeout = timeout
        self.resent = 0

    async def _send(self, session: aiohttp.ClientSession, event: Event) -> bool:
        headers = {**signed_headers(self.key, event.body, "merchant-1"), "Content-Type": "application/json"}
        try:
            async with session.post(self.balancer.next(), data=event.body, headers=headers) as reply:
                code = (await reply.json(content_type=None)).get("code") if reply.content_length != 0 else None
                event.replies.append(1 if reply.status == 200 and code == 1 else -reply.status)
        except aiohttp.ClientConnectorError:
            event.replies.append(REFUSED)  # nobody listening: the platform retries
        except (aiohttp.ClientError, TimeoutError, ValueError):
            event.replies.append(CUT)  # connection dropped or reply incomplete: the platform retries
        return event.accepted

    async def _deliver(self, session: aiohttp.ClientSession, event: Event) -> None:
        if await self._send(session, event):
            return
        for wait in RESEND_AFTER:
            await asyncio.sleep(wait)
            self.resent += 1
            if await self._send(session, event):
                return

    async def play(self, events: list[Event]) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=200)) as session:
            health = asyncio.create_task(self.balancer.check(session))
            tasks = []
            started = time.perf_counter()
            for n, event in enumerate(events):
                delay = started + n / self.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._deliver(session, event)))
            await asyncio.gather(*tasks)
            health.cancel()


async def effects(database_url: str) -> Counter:
    """Handlings committed, per event id (test_effects)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT token, count(*) AS n FROM test_effects GROUP BY token")
    finally:
        await connection.close()
    return Counter({row["token"]: row["n"] for row in rows})


async def external_calls(database_url: str) -> dict[str, list[tuple[str, int]]]:
    """Calls outside the database, per event id: (idempotency key, process that made it), oldest first."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT token, idempotency_key, pid FROM test_external_calls ORDER BY at")
    finally:
        await connection.close()
    calls: dict[str, list[tuple[str, int]]] = {}
    for row in rows:
        calls.setdefault(row["token"], []).append((row["idempotency_key"], row["pid"]))
    return calls


def counted_calls(calls: list[tuple[str, int]], killed: Collection[int]) -> int:
    """An event's calls, but a call that a SIGKILLed worker made and had no time to record as done, made again with
    the same idempotency key by the next worker: the outbox's documented at-least-once, which the receiving side
    absorbs through the key (README, Effects outside the database). Any other repeat counts."""
    per_key = Counter(key for key, _ in calls)
    by_killed = Counter(key for key, pid in calls if pid in killed)
    return sum(max(n - by_killed[key], 1) for key, n in per_key.items())


def calls_allowed(event: Event, seen: Counter) -> tuple[int, int]:
    """How many calls outside the database an event must have had, at least and at most: one once handled. A CONSUME
    handled again (each notification counts) hands its call over again with the same key: the outbox keeps one
    row per key, so it is called again only if the first was done meanwhile."""
    handlings = seen.get(event.event_id, 0)
    return min(handlings, 1), handlings if event.kind == "CONSUME" else min(handlings, 1)


async def account(
    events: list[Event], database_url: str, resent: int, settle: float = 60.0, killed: Collection[int] = ()
) -> Report:
    """Wait until every accepted event has an effect and its call outside the database (or `settle` seconds pass),
    then count. `killed`: the worker processes SIGKILLed during the run."""
    accepted = [event for event in events if event.accepted]
    deadline = time.monotonic() + settle
    while True:
        seen = await effects(database_url)
        calls = await external_calls(database_url)
        missing = [
            e
            for e in accepted
            if e.event_id not in seen or counted_calls(calls.get(e.event_id, []), killed) < calls_allowed(e, seen)[0]
        ]
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # late duplicates would show now
    seen = await effects(database_url)
    calls = await external_calls(database_url)
    called = {e.event_id: counted_calls(calls.get(e.event_id, []), killed) for e in accepted}
    doubles = [e for e in accepted if e.kind != "CONSUME" and seen.get(e.event_id, 0) > 1]
    consume_repeats = sum(seen.get(e.event_id, 0) - 1 for e in accepted if e.kind == "CONSUME" and e.event_id in seen)
    return Report(
        sent=len(events),
        accepted=len(accepted),
        resent=resent,
        handled=sum(1 for e in accepted if e.event_id in seen),
        lost=sum(1 for e in accepted if e.event_id not in seen),
        double_effects=len(doubles),
        consume_repeats=consume_repeats,
        never_accepted=len(events) - len(accepted),
        external_lost=sum(1 for e in accepted if called[e.event_id] < calls_allowed(e, seen)[0]),
        double_external=sum(1 for e in accepted if called[e.event_id] > calls_allowed(e, seen)[1]),
        external_repeats_after_kill=sum(len(calls.get(e.event_id, [])) - called[e.event_id] for e in accepted),
        cut=sum(event.replies.count(CUT) for event in events),
    )


async def dead_letters(url: str = AMQP_URL) -> int:
    """Messages in every dead, invalid, unrouted and unverified queue: 0 after a clean run."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        total = 0
        quarantine = [topology.INVALID_QUEUE, topology.UNROUTED_QUEUE, topology.UNVERIFIED_QUEUE]
        for name in [*(topology.dead_queue(k) for k in KNOWN_KINDS), *quarantine]:
            total += (await channel.declare_queue(name, passive=True)).declaration_result.message_count
        return total
    finally:
        await connection.close()


def assert_every_event_accounted_for(report: Report) -> None:
    assert report.lost == 0, report.line()
    assert report.double_effects == 0, report.line()
    assert report.external_lost == 0, report.line()
    assert report.double_external == 0, report.line()
    assert report.never_accepted == 0, report.line()
    assert report.handled == report.accepted == report.sent, report.line()
