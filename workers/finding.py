"""`hypercard-find EVENT_ID`: where an event is, and why it is there.

    hypercard-find 3ebc8293f9a3a90600ae36fcb21ce30b                  # every place it is
    hypercard-find 3ebc8293f9a3a90600ae36fcb21ce30b --kind OPEN_CARD # only OPEN_CARD's queues and the holding queues
    hypercard-find 3ebc8293f9a3a90600ae36fcb21ce30b --json           # one JSON document, for scripts

Places: handled (the inbox: kind, when), waiting in its kind's queue, retrying in a retry queue (step, attempt, when
due), held in a dead, invalid, unverified or unrouted queue (why), each with its position; all of them when it is in
several (handled, and a duplicate waiting). Exit 0 when found, 1 when not seen, 2 when the broker or the database
cannot be read. An event a worker is handling at that moment is in none of them.

Queues looked in: for each kind the workers know (the built-in handlers, HC_HANDLERS, entry points; or --kind), its
queue, its retry queues (its schedule, else HC_RETRY_DELAYS) and its dead queue; then hypercard.invalid,
.unverified and .unrouted. Each message waiting at the start is taken once and put back at the tail
(`workers.replay.keep_in_place`: a confirmed copy, then the ack; never a requeue, so no delivery is counted): after a
pass the queue holds the same messages in the same order. A queue holding more than --limit messages is not looked
in at all, and the output says so: a partial pass would move its head to its tail. A queue the broker user may not
read is named and left alone: the deployment's operator user reads the dead and holding queues, the workers' user
the kinds' and retry queues (README "Broker users").

A retry queue's TTL counts from when a message entered it, so a copy put back plainly would wait its whole step
again. It goes back with a TTL of its own, the time left until its `retry_due_at` header (`workers.retries`). Not
basic.get and a requeue, which keeps the position: a requeue counts a delivery, and from RabbitMQ 4.0 a quorum queue
dead-letters a message past 20 of them, here to its kind's queue before its delay ends. RabbitMQ expires messages at
a queue's head only. All messages of a retry queue share its TTL and the copies keep their order, so the queue stays
in order of due time and each copy leaves when due; unless a new retry entered during the pass, ahead of copies not
put back yet, which then leave with it: late by one step (plus the pass) at most. Never lost: expired, a copy goes to
its kind's queue as always. A copy without `retry_due_at` (scheduled by an older worker) waits its step again.

On a terminal a progress line says which queue is being read; Ctrl-C stops between two messages (exit 130). What
is printed from a message is cut, scrubbed and escaped (`infra.terminal.printable`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import aio_pika
import aiohttp
import aiormq
import asyncpg
import structlog

from infra import broker
from infra.commands import EXIT_INTERRUPTED, Interruption, add_version, database_down, quiet_library_logs, why
from infra.management import management_url_setting
from infra.settings import SettingsError, load_settings
from infra.terminal import Progress, printable
from schemas import topology
from workers import database
from workers.inspection import HeldMessage, read
from workers.registry import REGISTRY, Registry, load_handler_modules
from workers.replay import KeepRefused, keep_in_place
from workers.retries import due_at
from workers.settings import WorkerSettings
from workers.status import queue_names

DEFAULT_LIMIT = 10_000
UNROUTED_REASON = "no queue was bound for its kind when it arrived: no worker handles it"


@dataclass(frozen=True)
class Target:
    """A queue to look in, and what a message there is waiting for."""

    queue: str
    state: str  # waiting (a kind's queue) | retrying (a retry queue) | held (dead, invalid, unverified, unrouted)
    step_seconds: float | None = None  # a retry queue's delay


@dataclass
class Place:
    state: str  # handled | waiting | retrying | held
    where: str  # "inbox", or a queue
    kind: str
    at: str | None  # handled: when; in a queue: when the gateway received it
    position: int | None = None  # in a queue: 1 for its head
    of: int | None = None  # the messages in that queue
    attempt: int | None = None  # waiting or retrying: the attempt to come; held: the attempts made
    step_seconds: float | None = None
    due_at: str | None = None  # retrying: when it goes back to its kind's queue
    error_type: str | None = None
    reason: str | None = None  # why it is held, or the last error of a retrying one


@dataclass
class Finding:
    event_id: str
    places: list[Place] = field(default_factory=list)
    looked_in: list[str] = field(default_factory=list)
    not_looked_in: dict[str, int] = field(default_factory=dict)  # queue -> its messages, more than the limit
    refused: list[str] = field(default_factory=list)  # queues this broker user may not read (README "Broker users")
    stopped: list[str] = field(default_factory=list)  # passes that ended early, and why
    interrupted: bool = False  # Ctrl-C: stopped between two messages
    # None: the retry queues were listed by the management API; else the steps looked in, from the schedules alone
    # (a step the workers use and this environment does not name is not looked in).
    steps_from_settings: list[float] | None = None

    @property
    def found(self) -> bool:
        return bool(self.places)


def targets(schedules: dict[str, tuple[float, ...]]) -> list[Target]:
    """Each kind's queue, retry queues and dead queue, then the holding queues every kind shares."""
    found = []
    for kind, delays in schedules.items():
        found.append(Target(topology.kind_queue(kind), "waiting"))
        found += [Target(topology.retry_queue(kind, delay), "retrying", delay) for delay in sorted(set(delays))]
        found.append(Target(topology.dead_queue(kind), "held"))
    holding = (topology.INVALID_QUEUE, topology.UNVERIFIED_QUEUE, topology.UNROUTED_QUEUE)
    return found + [Target(queue, "held") for queue in holding]


def place(target: Target, message: aio_pika.abc.AbstractIncomingMessage, held: HeldMessage, of: int) -> Place:
    found = Place(target.state, target.queue, held.kind, held.received_at, held.position, of, held.attempts)
    found.error_type = held.error_type
    if target.state == "retrying":
        due = due_at(message.headers or {})
        found.step_seconds = target.step_seconds
        found.due_at = due.isoformat(timespec="milliseconds") if due else None
        last_error = (message.headers or {}).get("last_error")
        found.reason = printable(last_error, 500) if last_error else None  # cut, scrubbed, escaped
    elif target.state == "held":
        found.reason = held.reason or (UNROUTED_REASON if target.queue == topology.UNROUTED_QUEUE else None)
    return found


Report = Callable[[str, int, int], None]  # queue, messages looked at, messages in it
Look = tuple[Report, Interruption | None]


class DatabaseUnreachable(Exception):
    """HC_DATABASE_URL's database did not answer (refused, timed out) or refused the login."""


async def look_in(
    connection: aio_pika.abc.AbstractConnection,
    target: Target,
    finding: Finding,
    limit: int,
    look: Look = (lambda *_: None, None),
) -> None:
    """One pass over `target`'s queue (if it exists and holds at most `limit` messages), each message kept in place;
    a retry copy keeps its due time. `look`: what to call after each message, and the Ctrl-C flag."""
    report, interruption = look
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        try:
            queue = await channel.declare_queue(target.queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return  # no such queue (a retry step never used): nothing to look at; the channel is closed
        waiting = queue.declaration_result.message_count or 0
        if waiting > limit:
            finding.not_looked_in[target.queue] = waiting
            return
        for position in range(1, waiting + 1):
            if interruption is not None and interruption.requested:
                finding.interrupted = True
                finding.stopped.append(f"{target.queue}: interrupted after {position - 1} message(s), now at the tail")
                return
            try:
                message = await queue.get(no_ack=False, fail=False)
            except aiormq.exceptions.ChannelAccessRefused:
                finding.refused.append(target.queue)  # nothing taken: the queue is as it was; the channel is closed
                return
            if message is None:
                break
            held = read(message, target.queue, position, datetime.now(UTC))
            if held.event_id == finding.event_id:
                finding.places.append(place(target, message, held, waiting))
            try:
                await keep_in_place(channel, message, target.queue)  # a retry copy keeps its due time
            except KeepRefused as error:
                finding.stopped.append(
                    f"{target.queue}: {error}; stopped after {position - 1} message(s), which are now at the tail"
                )
                break
            report(target.queue, position, waiting)
        finding.looked_in.append(target.queue)
    finally:
        if not channel.is_closed:
            await channel.close()


async def handled(database: database.Transaction, event_id: str) -> list[Place]:
    """The inbox's rows of `event_id` (two per event during a secret rotation: one place per kind)."""
    rows = await database.fetch(
        "SELECT kind, min(handled_at) AS handled_at FROM hypercard_inbox WHERE event_id = $1 GROUP BY kind ORDER BY 2",
        event_id,
    )
    return [
        Place("handled", "inbox", row["kind"], row["handled_at"].isoformat(timespec="milliseconds")) for row in rows
    ]


async def find(
    settings: WorkerSettings,
    event_id: str,
    *,
    kinds: list[str] | None = None,
    limit: int = DEFAULT_LIMIT,
    registry: Registry = REGISTRY,
    report: Report = lambda *_: None,
    interruption: Interruption | None = None,
) -> Finding:
    """Every place `event_id` is: the inbox, then the queues of `kinds` (default: the kinds `registry` handles and
    the kind the inbox names) and the holding queues."""
    try:
        database = await asyncpg.connect(settings.database_url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        raise DatabaseUnreachable(database_down(error)) from error
    try:
        finding = Finding(event_id, await handled(database, event_id))
    finally:
        await database.close()
    wanted = kinds or sorted(set(registry.kinds) | {p.kind for p in finding.places})
    schedules = {
        kind: (registry.registrations[kind].retry_delays if kind in registry.registrations else None)
        or settings.retry_delays
        for kind in wanted
    }
    connection = await broker.connect(settings.amqp_urls)
    if interruption is not None:
        interruption.install()  # from here Ctrl-C stops between two messages; before, it ends the connecting
    try:
        try:  # the retry queues that exist, whatever schedule the workers were given (their HC_RETRY_DELAYS)
            names = await queue_names(str(broker.connection_url(connection)))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError):
            finding.steps_from_settings = sorted({step for delays in schedules.values() for step in delays})
        else:
            for kind in schedules:
                existing = {
                    topology.retry_step(name) for name in names if name.startswith(f"{topology.kind_queue(kind)}.")
                }
                schedules[kind] = tuple(sorted(step for step in existing if step is not None))
        for target in targets(schedules):
            if finding.interrupted:
                break
            await look_in(connection, target, finding, limit, (report, interruption))
    finally:
        await connection.close()
    return finding


def _in(due_at: str | None) -> str:
    """`in 9m43s` until an ISO moment, or `overdue`."""
    if due_at is None:
        return "unknown: no retry_due_at"
    seconds = int((datetime.fromisoformat(due_at) - datetime.now(UTC)).total_seconds())
    return "overdue" if seconds < 0 else f"in {seconds // 60}m{seconds % 60:02d}s"


def render(finding: Finding, retention_days: float) -> str:
    lines = [f"event {printable(finding.event_id, 80)}"]
    for p in finding.places:
        if p.state == "handled":
            lines.append(f"  handled   {p.kind} at {p.at} (inbox)")
            continue
        line = f"  {p.state:<9} {p.where}, {p.position} of {p.of}: {p.kind} received {p.at or '?'}"
        if p.state == "retrying":
            line += f"; attempt {p.attempt} due {p.due_at or '?'} ({_in(p.due_at)}, step {p.step_seconds:g} s)"
            line += f"; last error {p.error_type or '?'}: {p.reason or '-'}"
        elif p.state == "held":
            tries = f"{p.attempt} attempt(s), " if p.attempt is not None else ""
            line += f"; {tries}why: {p.error_type + ': ' if p.error_type else ''}{p.reason or '-'}"
        elif p.attempt is not None:
            line += f"; attempt {p.attempt}"
        lines.append(line)
    if not finding.found:
        lines.append(
            f"  not seen: not in the inbox (handled events are kept {retention_days:g} days) nor in the "
            f"{len(finding.looked_in)} queue(s) looked in; a worker may be handling it at this moment"
        )
    lines.append(f"looked in {len(finding.looked_in)} queue(s) (--json lists them)")
    for queue, messages in finding.not_looked_in.items():
        lines.append(f"not looked in: {queue}, {messages} messages (more than --limit); raise --limit to look")
    if finding.refused:
        shown = ", ".join(finding.refused[:3]) + (", ..." if len(finding.refused) > 3 else "")
        lines.append(f"not looked in, this broker user may not read them: {len(finding.refused)} queue(s) ({shown})")
    lines += [f"stopped early: {why}" for why in finding.stopped]
    if finding.steps_from_settings is not None:
        steps = ", ".join(f"{step:g} s" for step in finding.steps_from_settings)
        lines.append(
            f"retry queues looked in: the steps {steps} only (no management API to list them): give this command the "
            "workers' HC_RETRY_DELAYS, or HC_MANAGEMENT_URL"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hypercard-find", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("event_id", help="the event id of the log lines (a header of every message)")
    parser.add_argument("--kind", action="append", help="look only in this kind's queues (and the holding queues)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="skip a queue holding more messages")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    add_version(parser)
    args = parser.parse_args(argv)
    quiet_library_logs()
    # Handler modules log as they load: kept off stdout, which is the answer's.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        settings = load_settings(WorkerSettings)
        load_handler_modules(settings.handlers)
        management_url_setting(os.environ.get("HC_MANAGEMENT_URL"))
    except (SettingsError, ImportError) as error:
        parser.exit(2, f"hypercard-find: {error}\n")
    kinds = [kind.upper() for kind in args.kind] if args.kind else None
    progress = Progress()

    async def run() -> Finding:
        interruption = Interruption()
        report: Report = lambda queue, at, of: progress.show(f"{queue}: {at} of {of}")  # noqa: E731
        return await find(
            settings, args.event_id, kinds=kinds, limit=args.limit, report=report, interruption=interruption
        )

    try:
        finding = asyncio.run(run())
    except asyncpg.UndefinedTableError:
        parser.exit(2, "hypercard-find: no inbox table in HC_DATABASE_URL's database: has a worker started on it?\n")
    except DatabaseUnreachable as error:
        parser.exit(2, f"hypercard-find: {error}\n")
    except KeyboardInterrupt:
        parser.exit(EXIT_INTERRUPTED, "hypercard-find: interrupted before it looked in the first queue\n")
    except asyncpg.PostgresError as error:
        parser.exit(2, f"hypercard-find: the database refused the query: {type(error).__name__} (HC_DATABASE_URL)\n")
    except Exception as error:
        if (cause := why(error)) is None:
            raise
        parser.exit(2, f"hypercard-find: {cause}\n")
    progress.done()
    if args.json:
        print(json.dumps({**asdict(finding), "found": finding.found}, ensure_ascii=True))
    else:
        print(render(finding, settings.inbox_retention_days))
    for reason in finding.stopped:
        print(f"hypercard-find: stopped early: {reason}", file=sys.stderr)
    if finding.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0 if finding.found else 1)
