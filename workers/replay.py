"""`hypercard-replay`: move messages from a dead, invalid, unrouted or unverified queue back into their kind's queue,
through hypercard.to-queue (the operator user's one way in; a kind with no queue yet leaves the message in place).

    hypercard-replay OPEN_CARD                  # everything in hypercard.open_card.dead
    hypercard-replay --from invalid --kind RECHARGE --count 10
    hypercard-replay --from unrouted --event-id 3ebc8293f9a3a90600ae36fcb21ce30b
    hypercard-replay --from unverified --kind OPT_CODE   # after reviewing events whose signature did not vouch
    hypercard-replay OPEN_CARD --dry-run        # list what would move

Each message is published with a confirm before the original is acked: a crash mid-replay leaves a duplicate at
worst (the workers' inbox absorbs it), never a loss. A message that stays (it does not match the filters, it is a
dry run, or it cannot be routed: no readable kind) is published again to the tail of its own queue, then acked: it
is never requeued, so RabbitMQ never counts a delivery of it, and after the pass the messages left are in their
order. Run one replay of a queue at a time.

Each moved event id is printed as it moves (a progress line on a terminal); Ctrl-C stops between two messages and
says what was moved and what remains (exit 130). A copy never carries `user_id`: the broker refuses a publish whose
`user_id` is not the publishing user, so one message of another user would stop every later pass."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aio_pika

from infra import broker
from infra.commands import EXIT_INTERRUPTED, Interruption, add_version, quiet_library_logs, why
from infra.declare import TopologyMissing
from infra.settings import BrokerSettings, SettingsError, load_settings
from infra.terminal import Progress, printable
from schemas import topology
from schemas.events import KIND_NAME
from workers.retries import copy_for_republish, time_left

# Headers of a failed attempt: a replayed message starts again at attempt 1.
FAILURE_HEADERS = {
    "attempt", "error_type", "error_message", "attempts", "failed_at", "last_error", "last_error_type", "retry_due_at"
}  # fmt: skip
# The broker's own counts of a delivered message's deliveries: a copy is a new message, counted from zero.
BROKER_COUNTERS = {"x-delivery-count", "x-acquired-count"}
PUBLISH_TIMEOUT = 10.0
NOT_TAKEN = (aio_pika.exceptions.DeliveryError, aio_pika.exceptions.PublishError, TimeoutError)


@dataclass
class ReplayFilter:
    kind: str | None = None
    event_id: str | None = None
    count: int | None = None

    def matches(self, message: aio_pika.abc.AbstractIncomingMessage) -> bool:
        headers = message.headers or {}
        if self.kind is not None and str(headers.get("notify_type", "")).upper() != self.kind.upper():
            return False
        return self.event_id is None or headers.get("event_id") == self.event_id


def source_queue(source: str) -> str:
    """`invalid`, `unrouted`, `unverified`, a kind (its dead queue), or a queue name."""
    if source in ("invalid", "unrouted", "unverified"):
        return f"hypercard.{source}"
    if source.startswith("hypercard."):
        return source
    return topology.dead_queue(source)


def replay_copy(message: aio_pika.abc.AbstractIncomingMessage, source: str) -> aio_pika.Message:
    drop = FAILURE_HEADERS | BROKER_COUNTERS
    headers = {key: value for key, value in (message.headers or {}).items() if key not in drop}
    headers["replayed_from"] = source
    headers["replayed_at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    return copy_for_republish(message, headers)


def kept_copy(message: aio_pika.abc.AbstractIncomingMessage, expires_in: float | None = None) -> aio_pika.Message:
    """The message as it was, every header and property but `user_id` (a publish by another user than the one it
    names is refused), for the tail of its own queue; `expires_in` (seconds) sets a per-message TTL in place of the
    message's own."""
    return aio_pika.Message(
        message.body,
        headers={key: value for key, value in (message.headers or {}).items() if key not in BROKER_COUNTERS},
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=message.delivery_mode,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=message.expiration if expires_in is None else expires_in,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


@dataclass
class ReplayResult:
    moved: list[str] = field(default_factory=list)  # event ids republished (or, in a dry run, that would be)
    left: list[tuple[str, str]] = field(default_factory=list)  # (event id, why) of matching messages left in place
    stopped: str | None = None  # why the pass ended before its last message, if it did
    interrupted: bool = False  # Ctrl-C: the pass stopped between two messages
    remaining: int | None = None  # messages in the source queue when the pass ended


class KeepRefused(Exception):
    """The broker did not take a message's copy for the tail of its queue."""


async def keep_in_place(
    channel: aio_pika.abc.AbstractChannel, message: aio_pika.abc.AbstractIncomingMessage, queue: str
) -> None:
    """Publish the message again to the tail of `queue` (confirmed), then ack the original: through
    `hypercard.to-queue`, the operator user's one way in; a retry queue, which only a worker's user (or the
    administrator) may read and which nothing binds, through the default exchange. In a retry queue the copy keeps
    its due time: its TTL is the time its `retry_due_at` leaves (`workers.retries
    .time_left`), since the queue's own would start the whole step again. Every operator tool keeps what it leaves
    here: replay, inspect and find alike.

    Never a requeue: that would count a delivery, and from RabbitMQ 4.0 a quorum queue drops (or dead-letters) a
    message delivered more than its delivery limit, 20 unless set. A crash between the confirm and the ack leaves
    the message twice in `queue`: a duplicate, which a replay moves twice and the workers' inbox absorbs."""
    step = topology.retry_step(queue)
    expires_in = time_left(message.headers or {}, step) if step is not None else None
    way_in = channel.default_exchange if step is not None else await to_queue(channel, ensure=False)
    try:
        await way_in.publish(kept_copy(message, expires_in), routing_key=queue, mandatory=True, timeout=PUBLISH_TIMEOUT)
    except NOT_TAKEN as error:
        await message.nack(requeue=True)  # once, for a publish the broker refused: at its place, not lost
        raise KeepRefused(f"the broker did not take its copy: {type(error).__name__}") from error
    await message.ack()


Report = Callable[[ReplayResult], None]


async def to_queue(channel: aio_pika.abc.AbstractChannel, *, ensure: bool = True) -> aio_pika.abc.AbstractExchange:
    """`hypercard.to-queue`, through which the operator tools put a message into a queue by its name."""
    try:
        return await channel.get_exchange(topology.TO_QUEUE_EXCHANGE, ensure=ensure)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        raise TopologyMissing(
            f"{topology.TO_QUEUE_EXCHANGE} does not exist: run hypercard-broker-setup (it declares the topology)"
        ) from None


async def replay(
    channel: aio_pika.abc.AbstractChannel,
    source: str,
    wanted: ReplayFilter,
    dry_run: bool = False,
    *,
    report: Report = lambda _: None,
    interruption: Interruption | None = None,
) -> ReplayResult:
    """Replay the matching messages of `source`, keep the others in place. The channel must have confirms on.
    `report` is called after each message; `interruption`, once requested, ends the pass before the next message.

    One pass takes each message waiting at its start once (basic.get is FIFO: the copies kept at the tail, and
    messages arriving meanwhile, come after them), so the messages kept are in their order when it ends."""
    queue = await channel.declare_queue(source, passive=True)
    waiting = queue.declaration_result.message_count or 0  # a passive declare always answers a count
    way_in = await to_queue(channel)
    result = ReplayResult()
    kept = 0
    for _ in range(waiting):
        if interruption is not None and interruption.requested:
            result.interrupted = True
            break
        if wanted.count is not None and len(result.moved) >= wanted.count and kept == 0:
            break  # nothing went to the tail yet: stopping here leaves the order as it was
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        full = wanted.count is not None and len(result.moved) >= wanted.count
        if not full and wanted.matches(message):
            event_id = printable((message.headers or {}).get("event_id") or message.message_id, 80)
            kind = (message.headers or {}).get("notify_type")
            if not isinstance(kind, str) or not KIND_NAME.match(kind):
                result.left.append((event_id, f"no routable kind in its notify_type header: {printable(kind, 80)}"))
            elif dry_run:
                result.moved.append(event_id)
            else:
                try:
                    await way_in.publish(
                        replay_copy(message, source), routing_key=topology.kind_queue(kind), mandatory=True,
                        timeout=PUBLISH_TIMEOUT,
                    )  # fmt: skip
                except NOT_TAKEN as error:
                    result.left.append((event_id, f"the broker did not take it: {type(error).__name__}"))
                else:
                    await message.ack()  # only after the broker confirmed the copy
                    result.moved.append(event_id)
                    report(result)
                    continue
        try:
            await keep_in_place(channel, message, source)
        except KeepRefused as error:
            result.stopped = f"{error}; the {kept} message(s) kept before it are now at the tail of {source}"
            break
        kept += 1
        report(result)
    return result


async def run(urls: list[str], source: str, wanted: ReplayFilter, dry_run: bool, report: Report) -> ReplayResult:
    interruption = Interruption()
    async with broker.confirming_channel(urls) as channel:
        interruption.install()  # from here Ctrl-C stops between two messages; before, it ends the connecting
        result = await replay(channel, source, wanted, dry_run, report=report, interruption=interruption)
        queue = await channel.declare_queue(source, passive=True)
        result.remaining = queue.declaration_result.message_count
        return result


class Printer:
    """Each moved id on stdout and each message left on stderr as the pass goes; the counts on a terminal."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.progress = Progress()
        self.moved = self.left = 0

    def __call__(self, result: ReplayResult) -> None:
        for event_id in result.moved[self.moved :]:
            print(event_id, flush=True)
        for event_id, reason in result.left[self.left :]:
            self.progress.done()
            print(f"left in {self.queue}: {event_id}: {reason}", file=sys.stderr, flush=True)
        self.moved, self.left = len(result.moved), len(result.left)
        self.progress.show(f"{self.moved} moved, {self.left} left")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hypercard-replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", nargs="?", help="a kind (its dead queue), or use --from")
    parser.add_argument("--from", dest="from_", help="invalid, unrouted, unverified, a kind, or a queue name")
    parser.add_argument("--kind", help="only messages of this notify_type")
    parser.add_argument("--event-id", help="only the message(s) with this event id")
    parser.add_argument("--count", type=int, help="at most this many messages")
    parser.add_argument("--dry-run", action="store_true", help="list the event ids that would move; move nothing")
    add_version(parser)
    args = parser.parse_args(argv)
    quiet_library_logs()
    source = args.from_ or args.source
    if not source:
        parser.error("name a kind or --from invalid|unrouted|unverified|QUEUE")
    try:
        settings = load_settings(BrokerSettings)
    except SettingsError as error:
        parser.exit(2, f"hypercard-replay: {error}\n")
    queue = source_queue(source)
    wanted = ReplayFilter(args.kind, args.event_id, args.count)
    printer = Printer(queue)
    try:
        result = asyncio.run(run(settings.amqp_urls, queue, wanted, args.dry_run, printer))
    except TopologyMissing as error:
        parser.exit(2, f"hypercard-replay: {error}\n")
    except aio_pika.exceptions.ChannelNotFoundEntity:
        parser.exit(2, f"hypercard-replay: no queue {queue} on the broker: name a kind, invalid, unrouted, "
                       "unverified or a queue that exists\n")  # fmt: skip
    except KeyboardInterrupt:  # before the pass began: nothing taken
        parser.exit(EXIT_INTERRUPTED, f"interrupted: moved 0 message(s) from {queue}\n")
    except Exception as error:
        if (cause := why(error)) is None:
            raise
        parser.exit(2, f"hypercard-replay: {cause}\n")
    printer(result)
    printer.progress.done()
    if result.stopped:
        print(f"stopped early: {result.stopped}", file=sys.stderr)
    verb = "would replay" if args.dry_run else "replayed"
    if result.interrupted:
        print(
            f"interrupted: moved {len(result.moved)} message(s) from {queue}; {result.remaining} remain in it",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERRUPTED)
    print(f"{verb} {len(result.moved)} message(s) from {queue}", file=sys.stderr)
    sys.exit(1 if result.left or result.stopped else 0)
