"""What happens to one delivery: its headers checked, its body decoded, its inbox key claimed, its handler run
inside a transaction, then its outcome: a copy stored for a retry or a dead letter when it failed, the fate of its
message decided, its frame sent by its channel's `workers.acks.ChannelAcks`, one canonical log line, counted once.
`workers.batches` runs several deliveries in one transaction; this module is what each delivery goes through however
many share it. The connection lifecycle around both is `workers.runtime`.

Headers are input like the body (anyone holding the broker user can publish to a kind's queue): an `attempt` that is
not an integer from 1 to MAX_ATTEMPT dead-letters the message with error_type BadHeader; a `received_at` that is not
an ISO 8601 time with its offset is replaced by the time of delivery; both are counted and logged, never raised.

A handler is someone else's code: whatever it raises (any BaseException, SystemExit, KeyboardInterrupt and a
CancelledError of its own included) fails its delivery alone, and the transaction it is given is the worker's, which
it may not end, nor change the session of (`workers.transaction_guard`). It runs as a task of its own: one deaf to its
cancellation is abandoned HC_HANDLER_TIMEOUT plus ABANDON_GRACE seconds after it started, its connection terminated
so that its transaction can never commit (HandlerAbandoned, a HandlerTimeout). Only the worker's own stop, the
cancellation of its task (`stopping`), ends a loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aio_pika
import asyncpg
import msgspec
import structlog
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.exceptions import AMQPError

from infra.identifiers import IdentifierKey
from infra.redaction import bind_secrets, clear_secrets, scrub
from schemas import topology
from schemas.events import Event
from workers import database
from workers.acks import ChannelAcks, Fate
from workers.context import HandlerContext
from workers.errors import GiveUp, Retry, Skip
from workers.metrics import WorkerMetrics
from workers.outcomes import Outcome
from workers.registry import Registration
from workers.retries import RetryPublisher
from workers.transaction_guard import GuardedTransaction, HandlerEndedTransaction

if TYPE_CHECKING:
    from infra.spans import Span, Tracing

log = structlog.get_logger("workers")
# Asked after a handler failed: is PostgreSQL itself unreachable? (Then the failure is not the event's.)
OutageCheck = Callable[[Exception], Awaitable[bool]]
# What running a delivery's handler came to, before its message is settled: HANDLED, DUPLICATE, or what it raised.
HANDLED = Outcome.HANDLED
DUPLICATE = Outcome.DUPLICATE
Result = Outcome | BaseException
# The highest `attempt` header believed: retry schedules are a handful of steps, never near this.
MAX_ATTEMPT = 1000
# A frame that failed for one of these failed because the channel or the connection is gone.
CHANNEL_GONE = (ChannelInvalidStateError, AMQPError, ConnectionError)
# The keys of a delivery's canonical line that are the line's own, whatever a business id is called.
FINISH_KEYS = frozenset({"event", "event_id", "notify_type", "attempt", "kind", "outcome", "latency_ms"})
NOT_TRACED = contextlib.nullcontext()  # what a span's context manager is while tracing is off
# Seconds a delivery whose retry or dead-letter copy could not be stored is held before it is requeued: no tight loop.
UNSETTLED_PAUSE = 1.0
# Seconds a handler cancelled at HC_HANDLER_TIMEOUT (or at the worker's stop) has to end before it is abandoned.
ABANDON_GRACE = 1.0
# The savepoint a delivery's handler runs in: still there after the handler, or the handler ended the transaction.
SAVEPOINT = "SAVEPOINT delivery"
RELEASE_SAVEPOINT = "RELEASE SAVEPOINT delivery"
ROLLBACK_SAVEPOINT = "ROLLBACK TO SAVEPOINT delivery"
# What PostgreSQL answers about a savepoint of a transaction that ended behind the guard (COMMIT AND CHAIN, ...).
SAVEPOINT_GONE = (asyncpg.exceptions.InvalidSavepointSpecificationError, asyncpg.exceptions.NoActiveSQLTransactionError)


class HandlerAbandoned(TimeoutError):
    """A handler ran past HC_HANDLER_TIMEOUT and ignored its cancellation: it is left running, its connection
    terminated (its transaction rolled back by PostgreSQL, never committed), and its delivery fails (HandlerTimeout).
    The other deliveries of its transaction are handled again, one per transaction."""


@dataclass(eq=False, slots=True, kw_only=True)
class Delivery:
    registration: Registration
    message: aio_pika.abc.AbstractIncomingMessage
    retry_publisher: RetryPublisher  # publishes on the channel the message came on: its delivery tag belongs there
    acks: ChannelAcks  # that channel's acks
    arrived: float  # perf_counter when it was delivered
    event_id: str
    attempt: int  # 1 on the first delivery, 2 on the first retry, ...
    received_at: datetime  # when the gateway received the event
    bad_headers: tuple[str, ...] = ()  # what was wrong with its headers (an `attempt` among them: dead-lettered)
    event: Event | None = None  # set once decoded
    # The inbox row's key: a keyed digest of the event's notification key (None: every notification counts), and
    # the one under HC_ID_SECRET_PREVIOUS during a rotation.
    inbox_key: str | None = None
    previous_inbox_key: str | None = None
    outcome: Outcome | None = None  # set by `finish`, once
    span: Span | None = None  # this attempt's span while tracing is on (infra.spans), from its batch to `finish`

    @property
    def kind(self) -> str:
        return self.registration.kind


class DeliveryRunner:
    """Runs each delivery through its stages (`receive`, `decode`, the handler, `settle`, `conclude`, `finish`): the
    rules every delivery follows, whichever batch it is in."""

    # What a handler's `ctx.log` is bound from: the worker's logger (the test kit's captures what a handler logs).
    handler_log: Any = log

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: WorkerMetrics,
        handler_timeout: float,
        retry_delays: Callable[[str], tuple[float, ...]],
        database_unreachable: OutageCheck,
        identifiers: IdentifierKey,
        tracing: Tracing | None = None,
    ) -> None:
        self.pool = pool
        self.tracing = tracing
        self.identifiers = identifiers
        self.metrics = metrics
        self.handler_timeout = handler_timeout
        self.retry_delays = retry_delays
        self.database_unreachable = database_unreachable
        self.abandoned: set[asyncio.Task[BaseException | None]] = set()  # handlers deaf to their cancellation

    def receive(
        self,
        registration: Registration,
        message: aio_pika.abc.AbstractIncomingMessage,
        retries: RetryPublisher,
        acks: ChannelAcks,
    ) -> Delivery:
        """A delivery as it arrives; never raises on what its headers hold."""
        acks.delivered(message, registration.kind)
        headers = message.headers if isinstance(message.headers, dict) else {}
        attempt, attempt_problem = _attempt(headers)
        received_at, received_problem = _received_at(headers)
        event_id = headers.get("event_id") or message.message_id or ""
        return Delivery(
            registration=registration,
            message=message,
            retry_publisher=retries,
            acks=acks,
            arrived=time.perf_counter(),
            event_id=event_id if isinstance(event_id, str) else repr(event_id)[:100],
            attempt=attempt,
            received_at=received_at,
            bad_headers=tuple(problem for problem in (attempt_problem, received_problem) if problem),
        )

    def trace(self, delivery: Delivery) -> None:
        """Start its span when its batch takes it up: the child of the push's span its headers carry."""
        if self.tracing is None or delivery.span is not None:
            return
        headers = delivery.message.headers if isinstance(delivery.message.headers, dict) else {}
        delivery.span = self.tracing.delivery_started(
            topology.kind_queue(delivery.kind), headers, kind=delivery.kind, event_id=delivery.event_id,
            attempt=delivery.attempt, message_id=delivery.message.message_id,
        )  # fmt: skip

    def traced(self, delivery: Delivery) -> contextlib.AbstractContextManager[object]:
        """Its span as the current one (the parent of spans its handler starts), if it has one."""
        if self.tracing is None or delivery.span is None:
            return NOT_TRACED
        return self.tracing.current(delivery.span)

    def transaction_span(self, deliveries: list[Delivery]) -> contextlib.AbstractContextManager[object]:
        """The span of the transaction these deliveries share, if they are traced."""
        if self.tracing is None:
            return NOT_TRACED
        return self.tracing.transaction([d.span for d in deliveries if d.span is not None])

    def _carried(self, delivery: Delivery, error_type: str) -> dict[str, str]:
        """Its attempt failed: marked so on its span, and the header its retry or dead-letter copy carries to link
        the next attempt's span to this one."""
        if self.tracing is None or delivery.span is None:
            return {}
        self.tracing.failed(delivery.span, error_type)
        return self.tracing.carried(delivery.span)

    def bind(self, delivery: Delivery) -> None:
        """Log lines from here on name this delivery and its business ids, and its one-time code, e-mail and mobile are
        scrubbed from every log line and error header."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**_named(delivery))
        _bind_secrets(delivery)

    async def decode(self, delivery: Delivery) -> Outcome | None:
        """Check its headers, decode its body, compute its keys: None when it is ready for its handler, else what
        became of it (dead-lettered with the reason, or left for redelivery if the dead letter was refused)."""
        if delivery.bad_headers:
            self.bind(delivery)
            for problem in delivery.bad_headers:
                self.contained(delivery, "headers", problem)
            if delivery.bad_headers[0].startswith("attempt"):
                return await self._dead_letter(delivery, "BadHeader", delivery.bad_headers[0])
        try:
            delivery.event = delivery.registration.decoder.decode(delivery.message.body)
        except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError) as error:  # not its kind: no bug of ours
            self.bind(delivery)
            stored = await delivery.retry_publisher.quarantine(delivery.message, f"{delivery.kind}: {error}")
            return Outcome.QUARANTINED if stored else Outcome.LEFT_FOR_REDELIVERY
        try:
            natural_key = delivery.event.idempotency_key()
        except Exception as error:  # a bug in idempotency_key
            self.bind(delivery)
            reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            self.contained(delivery, "decode", reason)
            return await self._dead_letter(delivery, "DecodeError", reason)
        if natural_key is not None:  # it may hold the one-time code in clear: it never leaves this process
            delivery.inbox_key = self.identifiers.inbox_key(natural_key)
            if self.identifiers.previous is not None:
                delivery.previous_inbox_key = self.identifiers.previous.inbox_key(natural_key)
        return None

    async def _dead_letter(self, delivery: Delivery, error_type: str, reason: str) -> Outcome:
        stored = await delivery.retry_publisher.dead_letter(
            delivery.message, delivery.kind, error_type=error_type, error_message=reason, attempts=delivery.attempt,
            trace_headers=self._carried(delivery, error_type),
        )  # fmt: skip
        return Outcome.DEAD_LETTERED if stored else await self._unsettled(delivery)

    async def _unsettled(self, delivery: Delivery) -> Outcome:
        """Its copy could not be stored: counted (an alert), and held a moment before its requeue, which would
        otherwise come straight back."""
        self.metrics.unsettled.labels(delivery.kind).inc()
        await asyncio.sleep(UNSETTLED_PAUSE)
        return Outcome.LEFT_FOR_REDELIVERY

    async def run_handler(self, delivery: Delivery, connection: database.Transaction) -> None:
        """Its handler, in the worker's transaction, as a task of its own: raises what the handler raised,
        HandlerEndedTransaction or HandlerChangedSession if it ended that transaction or changed its session or tried
        to, TimeoutError past HC_HANDLER_TIMEOUT, HandlerAbandoned if it ignored its cancellation."""
        guard = GuardedTransaction(connection)
        context = HandlerContext(
            event_id=delivery.event_id, idempotency_key=delivery.inbox_key, attempt=delivery.attempt,
            received_at=delivery.received_at, log=self.handler_log.bind(), tx=guard, kind=delivery.kind,
            identifiers=self.identifiers,
        )  # fmt: skip
        try:
            await self._handler_task(delivery, context, connection)
        except BaseException as error:
            if stopping(error) or isinstance(error, HandlerAbandoned) or error is guard.refused:
                raise
            ended = guard.ended()
            if ended is None:
                raise
            raise ended from error
        ended = guard.ended()
        if ended is not None:
            raise ended

    async def _handler_task(
        self, delivery: Delivery, context: HandlerContext, connection: database.Transaction
    ) -> None:
        handler = delivery.registration.handler
        task = asyncio.create_task(_contained(handler(delivery.event, context)), name=f"handler {delivery.kind}")
        try:
            if not (await asyncio.wait({task}, timeout=self.handler_timeout))[0]:
                task.cancel()
                if not (await asyncio.wait({task}, timeout=ABANDON_GRACE))[0]:
                    self._abandon(delivery, task, connection)
                    raise HandlerAbandoned(
                        f"the handler ran past HC_HANDLER_TIMEOUT ({self.handler_timeout} s) and ignored its "
                        "cancellation: abandoned, its transaction rolled back"
                    )
        except asyncio.CancelledError:  # the worker's stop: the handler is cancelled too, abandoned if it is deaf
            task.cancel()
            if not (await asyncio.wait({task}, timeout=ABANDON_GRACE))[0]:
                self._abandon(delivery, task, connection)
            raise
        if task.cancelled():
            raise TimeoutError(f"the handler ran past HC_HANDLER_TIMEOUT ({self.handler_timeout} s)")
        error = task.result()
        if error is not None:
            raise error

    def _abandon(
        self, delivery: Delivery, task: asyncio.Task[BaseException | None], connection: database.Transaction
    ) -> None:
        """Leave a handler deaf to its cancellation running, out of reach: its connection is terminated, so nothing
        it did or does can commit. Kept until it ends (`abandoned`); the process exits without it."""
        self.abandoned.add(task)
        task.add_done_callback(self.abandoned.discard)
        connection.terminate()
        self.metrics.contained_failures.labels(delivery.kind, "abandoned").inc()
        log.error("handler ignored its cancellation; abandoned, its connection terminated",
                  timeout_seconds=self.handler_timeout)  # fmt: skip

    async def process_alone(self, delivery: Delivery) -> Outcome:
        """A decoded delivery in a transaction of its own; what became of it."""
        self.bind(delivery)
        try:
            with self.transaction_span([delivery]):
                result = await self._transaction_alone(delivery)
        except BaseException as error:  # Retry, a timeout, a bug, anything: retryable; an outage is not the event's
            if stopping(error):
                raise
            if isinstance(error, HandlerEndedTransaction) and error.lost:
                await self.release_claims([delivery])  # committed by the handler, maybe: its retry is no duplicate
            elif isinstance(error, Exception) and not isinstance(error, Skip | GiveUp):
                if await self.database_unreachable(error):
                    stored = await delivery.retry_publisher.return_to_queue(delivery.message, delivery.kind)
                    return Outcome.RETURNED if stored else await self._unsettled(delivery)
            result = error
        return await self.settle(delivery, result)

    async def release_claims(self, deliveries: list[Delivery]) -> None:
        """Undo these deliveries' claims in a transaction of their own: a handler ended the transaction that took
        them, perhaps committing them with no handling done."""
        async with self.pool.acquire() as connection, connection.transaction():
            for delivery in deliveries:
                if delivery.inbox_key is not None:
                    await database.release_claim(
                        connection, delivery.kind, delivery.inbox_key, delivery.previous_inbox_key
                    )

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[database.Transaction]:
        """A pooled connection in a transaction. A handler abandoned in it (its connection terminated) stays the
        error, not what asyncpg raises when it cannot roll back on that connection."""
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                yield connection
        except asyncpg.InterfaceError as error:
            if isinstance(error.__context__, HandlerAbandoned | asyncio.CancelledError):  # abandoned, or at the stop
                raise error.__context__ from None
            raise

    async def _transaction_alone(self, delivery: Delivery) -> Result:
        async with self.transaction() as connection:
            if delivery.inbox_key is not None and not await database.claim(
                connection, delivery.kind, delivery.inbox_key, delivery.event_id, delivery.previous_inbox_key
            ):
                return DUPLICATE
            await connection.execute(SAVEPOINT)
            try:
                await self.run_handler(delivery, connection)
            except BaseException as error:
                if not (stopping(error) or isinstance(error, HandlerAbandoned | HandlerEndedTransaction)):
                    await end_savepoint(connection, failed=True)
                raise
            await end_savepoint(connection, failed=False)
            return HANDLED

    async def settle(self, delivery: Delivery, result: Result) -> Outcome:
        """Once the transaction its handler ran in has ended: what becomes of it. A failed delivery's retry or
        dead-letter copy is stored (confirmed) before this returns; whatever this raises stays with this delivery."""
        try:
            return await self._settle(delivery, result)
        except Exception as error:
            return self.contained(delivery, "settle", f"{type(error).__name__}: {error}")

    async def _settle(self, delivery: Delivery, result: Result) -> Outcome:
        kind, message = delivery.kind, delivery.message
        if result is HANDLED or result is DUPLICATE:
            return result
        if isinstance(result, Skip):
            log.info("skipped", reason=str(result))
            return Outcome.SKIPPED
        if isinstance(result, GiveUp):
            return await self._dead_letter(delivery, type(result).__name__, str(result))
        delay = result.delay if isinstance(result, Retry) else None
        error_type = "HandlerTimeout" if isinstance(result, TimeoutError) else type(result).__name__
        log.warning("handler failed", error_type=error_type, error=scrub(str(result))[:500])
        outcome = await delivery.retry_publisher.retry_or_dead_letter(
            message, kind, self.retry_delays(kind), delivery.attempt, error_type=error_type, error_message=str(result),
            delay=delay, trace_headers=self._carried(delivery, error_type),
        )  # fmt: skip
        return await self._unsettled(delivery) if outcome is Outcome.LEFT_FOR_REDELIVERY else outcome

    def contained(self, delivery: Delivery, stage: str, reason: str) -> Outcome:
        """A failure kept to this delivery: logged once with its event id, counted by stage. LEFT_FOR_REDELIVERY, for
        the callers that have nothing better to do with it."""
        self.metrics.contained_failures.labels(delivery.kind, stage).inc()
        log.error("failure contained to its delivery", event_id=delivery.event_id, notify_type=delivery.kind,
                  stage=stage, reason=scrub(reason)[:500])  # fmt: skip
        return Outcome.LEFT_FOR_REDELIVERY

    async def conclude(self, outcomes: dict[Delivery, Outcome]) -> None:
        """Decide each message's fate, send the frames (each channel's acks flushed once), then the canonical
        lines: a line says `handled` only once its ack was sent."""
        for delivery, outcome in outcomes.items():
            if outcome.fate is not None:
                delivery.acks.decide(delivery.message, outcome.fate)
        for acks in {delivery.acks for delivery in outcomes}:
            await acks.flush()
        structlog.contextvars.clear_contextvars()  # each canonical line names its own delivery
        for delivery, outcome in outcomes.items():
            self.finish(delivery, outcome)

    def cut_off(self, deliveries: Iterable[Delivery]) -> None:
        """Shutdown grace ran out: no frame, the broker redelivers them once the channel closes."""
        structlog.contextvars.clear_contextvars()
        for delivery in deliveries:
            self.finish(delivery, Outcome.CUT_OFF)

    async def refuse(self, kind: str, message: aio_pika.abc.AbstractIncomingMessage, acks: ChannelAcks,
                     error: Exception) -> None:  # fmt: skip
        """A message that could not even be received: back to its queue. Never raises (the consumer callback)."""
        try:
            self.metrics.contained_failures.labels(kind, "receive").inc()
            log.error("failure contained to its delivery", stage="receive", notify_type=kind,
                      error=f"{type(error).__name__}: {scrub(str(error))[:300]}")  # fmt: skip
            acks.delivered(message, kind)
            acks.decide(message, Fate.REQUEUE)
            await acks.flush()
        except Exception as failure:
            log.error("could not requeue a message that failed on receipt", error=type(failure).__name__)

    def frame_failed(self, kind: str, message: aio_pika.abc.AbstractIncomingMessage, error: Exception) -> None:
        """A frame that could not be sent: decided here, not swallowed. The broker redelivers the message."""
        stage = "channel_closed" if isinstance(error, CHANNEL_GONE) else "ack"
        self.metrics.contained_failures.labels(kind, stage).inc()
        (log.info if stage == "channel_closed" else log.error)(
            "frame not sent; the broker redelivers the message", notify_type=kind, tag=message.delivery_tag,
            error=type(error).__name__,
        )  # fmt: skip

    def finish(self, delivery: Delivery, outcome: Outcome) -> None:
        """The delivery's canonical log line, its latency from delivery to settlement, and its count: once."""
        if delivery.outcome is not None:
            return
        delivery.outcome = outcome
        latency = time.perf_counter() - delivery.arrived
        self.metrics.latency.labels(delivery.kind).observe(latency)
        self.metrics.count(delivery.kind, outcome)
        if self.tracing is not None and delivery.span is not None:
            self.tracing.delivery_ended(delivery.span, str(outcome))
        _bind_secrets(delivery)  # its business ids are on the line: a mobile sent as its trade number is scrubbed
        log.info("message", **_named(delivery), kind=delivery.kind, outcome=str(outcome),
                 latency_ms=round(latency * 1000, 2))  # fmt: skip


def stopping(error: BaseException) -> bool:
    """Is `error` the worker's own stop, its task cancelled, rather than a handler's failure? A CancelledError a
    handler raised of its own (a library's future cancelled under it), a SystemExit or a KeyboardInterrupt it raised,
    are the handler's: the worker stops on its signals (infra.signals), never on an exception."""
    return isinstance(error, asyncio.CancelledError) and cancelling()


def cancelling() -> bool:
    """Is the current task being cancelled (by the worker's stop, a timeout of its own)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _contained(handler: Awaitable[None]) -> BaseException | None:
    """A handler's run in its task: what it raised, returned, so that no SystemExit or KeyboardInterrupt reaches the
    event loop (a task re-raises those there); only the task's own cancellation is raised."""
    try:
        await handler
    except BaseException as error:
        if isinstance(error, asyncio.CancelledError) and cancelling():
            raise
        return error
    return None


async def end_savepoint(connection: database.Transaction, *, failed: bool) -> None:
    """Release the delivery's savepoint, or roll back to it if its handler `failed`. Its savepoint gone, the handler
    ended the worker's transaction behind its guard (COMMIT AND CHAIN, ...): HandlerEndedTransaction, `lost`."""
    try:
        await connection.execute(ROLLBACK_SAVEPOINT if failed else RELEASE_SAVEPOINT)
    except SAVEPOINT_GONE as error:
        raise HandlerEndedTransaction(
            "the handler ended the worker's transaction behind its guard", lost=True
        ) from error


def _bind_secrets(delivery: Delivery) -> None:
    """Its one-time code, e-mail and mobile, and no other delivery's, scrubbed from the log lines written from here."""
    clear_secrets()
    if delivery.event is not None:
        bind_secrets(getattr(delivery.event, name, None) for name in type(delivery.event).sensitive)


def _named(delivery: Delivery) -> dict[str, object]:
    """What names a delivery on its log lines: its event id, kind and attempt, and the business ids of its event (its
    trade, card, ...) once decoded. A user kind's id named like one of the line's own keys is left out."""
    ids = delivery.event.business_id_values() if delivery.event is not None else {}
    own = {"event_id": delivery.event_id, "notify_type": delivery.kind, "attempt": delivery.attempt}
    return {name: value for name, value in ids.items() if name not in FINISH_KEYS} | own


def _attempt(headers: Mapping[str, object]) -> tuple[int, str | None]:
    """The attempt number, and what was wrong with the header if it cannot be believed (then 1)."""
    value = headers.get("attempt", 1)
    if type(value) is int and 1 <= value <= MAX_ATTEMPT:  # not bool, not a float, not a string of digits
        return value, None
    return 1, f"attempt header {scrub(repr(value))[:50]} is not an integer from 1 to {MAX_ATTEMPT}"


def _received_at(headers: Mapping[str, object]) -> tuple[datetime, str | None]:
    """When the gateway received the event; the time of delivery (and a note) when the header says nothing usable."""
    text = headers.get("received_at")
    if text is None:
        return datetime.now(UTC), None
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is not None:
                return parsed, None
    return datetime.now(UTC), f"received_at header {scrub(repr(text))[:60]} is not an ISO 8601 time with an offset"
