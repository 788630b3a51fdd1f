"""`hypercard-inspect`: what a holding queue holds and why, without moving anything.

    hypercard-inspect dead OPEN_CARD                 # hypercard.open_card.dead: kind, event id, age, attempts, error
    hypercard-inspect invalid --kind RECHARGE        # hypercard.invalid, with each event's validation_error
    hypercard-inspect unverified --older-than 2h     # hypercard.unverified, with each event's unverified_reason
    hypercard-inspect unrouted --json                # one JSON object per message, for scripts
    hypercard-inspect dead OPEN_CARD --show 3ebc82…  # one message whole: headers, and its body redacted by structure

Each message waiting at the start is looked at once and put back at the tail of its queue (published again with a
confirm, then acked: `workers.replay.keep_in_place`), so after a pass the queue holds the same messages in the same
order, and no delivery of any of them has been counted (from RabbitMQ 4.0 a quorum queue drops a message delivered
more often than its limit); a retry queue's copy with the time it has left until due, not its queue's whole TTL
again (`workers.retries.time_left`). Filters: --kind, --event-id, --error-type, --older-than/--newer-than (s, m, h
or d).

Rows are printed as the pass goes (a progress line on a terminal); Ctrl-C stops between two messages (exit 130).
Everything printed from a message is cut, scrubbed and escaped (`infra.terminal.printable`): a header or body
crafted to drive a terminal or to cost CPU prints as plain text."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import aio_pika

from infra import broker
from infra.commands import EXIT_INTERRUPTED, Interruption, add_version, quiet_library_logs, why
from infra.settings import BrokerSettings, SettingsError, load_settings
from infra.terminal import Progress, printable
from schemas import topology
from workers.body_view import body_view, render_body
from workers.replay import KeepRefused, keep_in_place
from workers.replay import source_queue as replay_source_queue

# The header a holding queue's messages carry their reason in, whichever queue they are in.
REASON_HEADERS = ("error_message", "validation_error", "unverified_reason")
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class HeldMessage:
    """One held message, as an operator reads it: never its body's secrets, never the platform's signature."""

    queue: str
    position: int  # 1 for the head of the queue
    kind: str
    event_id: str
    received_at: str | None
    age_seconds: float | None
    attempts: int | None
    error_type: str | None
    reason: str | None  # error_message, validation_error or unverified_reason, whichever it has
    body: object = None  # only with --show: the body with sensitive fields redacted by structure

    def age(self) -> str:
        if self.age_seconds is None:
            return "?"
        s = int(self.age_seconds)
        if s < 60:
            return f"{s}s"
        if s < 3600:
            return f"{s // 60}m{s % 60:02d}s"
        if s < 86400:
            return f"{s // 3600}h{s % 3600 // 60:02d}m"
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@dataclass
class InspectFilter:
    kind: str | None = None
    event_id: str | None = None
    error_type: str | None = None
    older_than: float | None = None  # seconds
    newer_than: float | None = None

    def matches(self, held: HeldMessage) -> bool:
        if self.kind is not None and held.kind.upper() != self.kind.upper():
            return False
        if self.event_id is not None and held.event_id != self.event_id:
            return False
        if self.error_type is not None and held.error_type != self.error_type:
            return False
        if self.older_than is not None and (held.age_seconds is None or held.age_seconds < self.older_than):
            return False
        return self.newer_than is None or (held.age_seconds is not None and held.age_seconds <= self.newer_than)


@dataclass
class Inspection:
    queue: str
    waiting: int  # messages in the queue when the pass started
    messages: list[HeldMessage] = field(default_factory=list)  # those matching the filters
    stopped: str | None = None  # why the pass ended early, if it did
    looked_at: int = 0  # messages taken and put back so far
    interrupted: bool = False  # Ctrl-C: the pass stopped between two messages


def duration(text: str) -> float:
    """`90s`, `15m`, `2h`, `3d` -> seconds."""
    found = DURATION.fullmatch(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 15m, 2h or 3d")
    return float(found.group(1)) * UNITS[found.group(2)]


def source_queue(source: str, kind: str | None) -> str:
    """`dead KIND`, or what `hypercard-replay` takes: `invalid`, `unrouted`, `unverified`, a kind, a queue name."""
    if source == "dead":
        if not kind:
            raise ValueError("name the kind whose dead letters to inspect: hypercard-inspect dead OPEN_CARD")
        return topology.dead_queue(kind.upper())
    return replay_source_queue(source)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None


def _received_at(headers: Mapping[str, object], message: aio_pika.abc.AbstractIncomingMessage) -> datetime | None:
    text = _text(headers.get("received_at"))
    if text:
        try:
            moment = datetime.fromisoformat(text)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        except ValueError:
            pass
    stamp = message.timestamp
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    return None


def read(message: aio_pika.abc.AbstractIncomingMessage, queue: str, position: int, now: datetime) -> HeldMessage:
    """What an operator needs to know of a held message; free text scrubbed as log lines are."""
    headers = message.headers or {}
    received = _received_at(headers, message)
    reason = next((text for name in REASON_HEADERS if (text := _text(headers.get(name)))), None)
    attempts = _int(headers.get("attempts"))
    return HeldMessage(
        queue=queue,
        position=position,
        kind=printable(headers.get("notify_type") or message.type or "?", 80),
        event_id=printable(headers.get("event_id") or message.message_id or "?", 80),
        received_at=received.isoformat(timespec="seconds") if received else None,
        age_seconds=round((now - received).total_seconds(), 1) if received else None,
        attempts=attempts if attempts is not None else _int(headers.get("attempt")),
        error_type=_printable_or_none(headers.get("error_type") or headers.get("last_error_type")),
        reason=printable(reason, 1000) if reason else None,  # cut, then scrubbed, then escaped
    )


def _printable_or_none(value: object) -> str | None:
    return printable(value, 80) if value else None


Report = Callable[[Inspection, HeldMessage | None], None]


async def inspect(
    channel: aio_pika.abc.AbstractChannel,
    queue_name: str,
    wanted: InspectFilter,
    show: str | None = None,
    *,
    values: bool = False,
    report: Report = lambda _result, _held: None,
    interruption: Interruption | None = None,
) -> Inspection:
    """One pass over the messages waiting in `queue_name`; each is kept in place. The channel must have confirms.
    `report` is called after each message with the one that matched, if it did; `values` shows an unknown kind's
    values with --show; `interruption`, once requested, ends the pass before the next message."""
    queue = await channel.declare_queue(queue_name, passive=True)
    waiting = queue.declaration_result.message_count or 0
    result = Inspection(queue_name, waiting)
    now = datetime.now(UTC)
    for position in range(1, waiting + 1):
        if interruption is not None and interruption.requested:
            result.interrupted = True
            break
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        held = read(message, queue_name, position, now)
        matched = wanted.matches(held) and (show is None or held.event_id == show)
        if matched:
            if show is not None:
                kind = _text(message.headers.get("notify_type") if message.headers else None) or ""
                held.body = body_view(message.body, kind, values=values)
            result.messages.append(held)
        try:
            await keep_in_place(channel, message, queue_name)  # a retry copy keeps its due time
        except KeepRefused as error:
            result.stopped = f"{error}; stopped after {position - 1} message(s), which are now at the tail"
            break
        result.looked_at = position
        report(result, held if matched else None)
    return result


async def run(
    urls: list[str], queue: str, wanted: InspectFilter, show: str | None, values: bool, report: Report
) -> Inspection:
    interruption = Interruption()
    async with broker.confirming_channel(urls) as channel:
        interruption.install()  # from here Ctrl-C stops between two messages; before, it ends the connecting
        return await inspect(channel, queue, wanted, show, values=values, report=report, interruption=interruption)


ERROR_WIDTH = 24  # the error column while rows stream: a longer type pushes its reason right, never cut


def header(width: int) -> str:
    return f"{'#':>4}  {'kind':<20} {'event id':<34} {'age':>7} {'tries':>5}  {'error':<{width}} reason"


def row(held: HeldMessage, width: int) -> str:
    return (
        f"{held.position:>4}  {held.kind[:20]:<20} {held.event_id[:34]:<34} {held.age():>7} "
        f"{held.attempts if held.attempts is not None else '-':>5}  {(held.error_type or '-')[:40]:<{width}} "
        f"{(held.reason or '-')[:200]}"
    )


def render(result: Inspection) -> str:
    lines = [f"{result.queue}: {result.waiting} message(s), {len(result.messages)} shown"]
    if result.messages:
        # The error column as wide as its longest type (UndefinedTableError, ...), within bounds: never cut short.
        width = min(40, max(len("error"), *(len(held.error_type or "-") for held in result.messages)))
        lines.append(header(width))
        lines += [row(held, width) for held in result.messages]
    lines += bodies(result)
    if result.stopped:
        lines.append(f"stopped early: {result.stopped}")
    return "\n".join(lines)  # every value in it was escaped as it was read


def bodies(result: Inspection) -> list[str]:
    lines = []
    for held in result.messages:
        if held.body is not None:
            lines.append(f"\nevent {held.event_id} (body, sensitive fields redacted; an unknown kind's values hidden):")
            lines.append(render_body(held.body))
    return lines


class Streamer:
    """Each matching row printed as the pass reaches it; a progress line with the counts on a terminal."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.progress = Progress()
        self.started = False

    def __call__(self, result: Inspection, held: HeldMessage | None) -> None:
        if held is not None:
            self.progress.done()
            if self.as_json:
                print(json.dumps(asdict(held), ensure_ascii=True), flush=True)
            else:
                if not self.started:
                    print(header(ERROR_WIDTH), flush=True)
                    self.started = True
                print(row(held, ERROR_WIDTH), flush=True)
        self.progress.show(f"{result.looked_at} of {result.waiting} looked at, {len(result.messages)} shown")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hypercard-inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="dead (then a kind), invalid, unrouted, unverified, or a queue name")
    parser.add_argument("dead_kind", nargs="?", help="with `dead`: the kind whose dead queue to read")
    parser.add_argument("--kind", help="only messages of this notify_type")
    parser.add_argument("--event-id", help="only the message(s) with this event id")
    parser.add_argument("--error-type", help="only dead letters with this error type (e.g. DecodeError, GiveUp)")
    parser.add_argument("--older-than", type=duration, help="only messages received longer ago than this (2h, 3d)")
    parser.add_argument("--newer-than", type=duration, help="only messages received within this (15m)")
    parser.add_argument("--show", metavar="EVENT_ID", help="print this event's body, sensitive fields redacted")
    parser.add_argument(
        "--show-values", action="store_true", help="with --show: an unknown kind's values too (they may be secrets)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per message")
    add_version(parser)
    args = parser.parse_args(argv)
    quiet_library_logs()
    try:
        queue = source_queue(args.source, args.dead_kind)
        settings = load_settings(BrokerSettings)
    except (ValueError, SettingsError) as error:
        parser.exit(2, f"hypercard-inspect: {error}\n")
    wanted = InspectFilter(args.kind, args.event_id, args.error_type, args.older_than, args.newer_than)
    if args.show_values:
        print("hypercard-inspect: --show-values prints the values of a kind it does not know: they may hold card "
              "numbers or codes, and are redacted by field name only", file=sys.stderr)  # fmt: skip
    streamer = Streamer(args.json)
    try:
        result = asyncio.run(run(settings.amqp_urls, queue, wanted, args.show, args.show_values, streamer))
    except aio_pika.exceptions.ChannelNotFoundEntity:
        parser.exit(2, f"hypercard-inspect: no queue {queue} on the broker\n")
    except KeyboardInterrupt:
        parser.exit(EXIT_INTERRUPTED, "hypercard-inspect: interrupted before the first message\n")
    except Exception as error:
        if (cause := why(error)) is None:
            raise
        parser.exit(2, f"hypercard-inspect: {cause}\n")
    streamer.progress.done()
    if not args.json:
        print(f"{result.queue}: {result.waiting} message(s), {len(result.messages)} shown")
        for line in bodies(result):
            print(line)
    if result.interrupted:
        print(f"hypercard-inspect: interrupted: looked at {result.looked_at} of {result.waiting} message(s), "
              "which are now at the tail of the queue", file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_INTERRUPTED)
    if result.stopped:
        print(f"hypercard-inspect: stopped early: {result.stopped}", file=sys.stderr)
        sys.exit(1)
