"""What happens to one delivery: decode, claim its inbox key, run its handler inside a transaction, then ack, retry
or dead-letter. `workers.batches` runs several deliveries in one transaction; this module is what each delivery
goes through however many share it. The connection lifecycle around both is `workers.runtime`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import asyncpg
import msgspec
import structlog

from infra.identifiers import IdentifierKey
from infra.redaction import bind_secrets, clear_secrets, scrub
from schemas.events import Event
from workers import database
from workers.acks import ChannelAcks
from workers.context import HandlerContext
from workers.errors import GiveUp, Retry, Skip
from workers.metrics import WorkerMetrics
from workers.registry import Registration
from workers.retries import RetryPublisher

log = structlog.get_logger("workers")
# Asked after a handler failed: is PostgreSQL itself unreachable? (Then the failure is not the event's.)
OutageCheck = Callable[[Exception], Awaitable[bool]]
# What running a delivery's handler came to, before its message is settled: HANDLED, DUPLICATE, or what it raised.
HANDLED = "handled"
DUPLICATE = "duplicate"
Result = str | Exception


@dataclass(eq=False, slots=True)
class Delivery:
    registration: Registration
    message: aio_pika.abc.AbstractIncomingMessage
    retries: RetryPublisher  # publishes on the channel the message came on: its delivery tag belongs there
    acks: ChannelAcks  # that channel's acks
    arrived: float  # perf_counter when it was delivered
    event_id: str
    attempt: int  # 1 on the first delivery, 2 on the first retry, ...
    received_at: datetime  # when the gateway received the event
    event: Event | None = None  # set once decoded
    # The inbox row's key: a keyed digest of the event's notification key (None: every notification counts), and
    # the one under HC_ID_SECRET_PREVIOUS during a rotation.
    inbox_key: str | None = None
    previous_inbox_key: str | None = None

    @property
    def kind(self) -> str:
        return self.registration.kind


class DeliveryPolicy:
    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: WorkerMetrics,
        handler_timeout: float,
        retry_delays: Callable[[str], tuple[float, ...]],
        database_unreachable: OutageCheck,
        identifiers: IdentifierKey,
    ) -> None:
        self.pool = pool
        self.identifiers = identifiers
        self.metrics = metrics
        self.handler_timeout = handler_timeout
        self.retry_delays = retry_delays
        self.database_unreachable = database_unreachable

    def receive(
        self,
        registration: Registration,
        message: aio_pika.abc.AbstractIncomingMessage,
        retries: RetryPublisher,
        acks: ChannelAcks,
    ) -> Delivery:
        headers = message.headers or {}
        acks.delivered(message)
        return Delivery(
            registration,
            message,
            retries,
            acks,
            time.perf_counter(),
            str(headers.get("event_id") or message.message_id or ""),
            int(headers.get("attempt", 1)),  # type: ignore[arg-type]
            _received_at(headers),
        )

    def bind(self, delivery: Delivery) -> None:
        """Log lines from here on name this delivery, and its one-time code, e-mail and mobile are scrubbed from
        every log line and error header."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            event_id=delivery.event_id, notify_type=delivery.kind, attempt=delivery.attempt
        )
        clear_secrets()
        if delivery.event is not None:
            bind_secrets(getattr(delivery.event, name, None) for name in type(delivery.event).sensitive)

    async def decode(self, delivery: Delivery) -> bool:
        """Decode the body and compute its keys; a body that does not decode is dead-lettered (False)."""
        try:
            delivery.event = delivery.registration.decoder.decode(delivery.message.body)
        except msgspec.MsgspecError as error:
            self.bind(delivery)
            message, kind = delivery.message, delivery.kind
            await delivery.retries.dead_letter(message, kind, "DecodeError", str(error), delivery.attempt)
            delivery.acks.settled_elsewhere(message)
            self.metrics.dead_lettered.labels(kind).inc()
            self.finish(delivery, "dead_lettered")
            return False
        natural_key = delivery.event.idempotency_key()  # may hold the code in clear: it never leaves this process
        if natural_key is not None:
            delivery.inbox_key = self.identifiers.inbox_key(natural_key)
            if self.identifiers.previous is not None:
                delivery.previous_inbox_key = self.identifiers.previous.inbox_key(natural_key)
        return True

    async def run_handler(self, delivery: Delivery, connection: asyncpg.Connection) -> None:
        context = HandlerContext(
            delivery.event_id, delivery.inbox_key, delivery.attempt, delivery.received_at, log.bind(), connection
        )
        async with asyncio.timeout(self.handler_timeout):
            await delivery.registration.handler(delivery.event, context)

    async def process_alone(self, delivery: Delivery) -> None:
        """A decoded delivery in a transaction of its own, settled, with its canonical log line."""
        self.bind(delivery)
        outcome = "cut_off"  # shutdown grace ran out: left unacked, the broker redelivers it
        try:
            outcome = await self._handle_alone(delivery)
            await delivery.acks.flush()
        finally:
            self.finish(delivery, outcome)

    async def _handle_alone(self, delivery: Delivery) -> str:
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                if delivery.inbox_key is not None and not await database.claim(
                    connection, delivery.kind, delivery.inbox_key, delivery.event_id, delivery.previous_inbox_key
                ):
                    result: Result = DUPLICATE
                else:
                    await self.run_handler(delivery, connection)
                    result = HANDLED
        except Exception as error:  # Retry, a timeout, a bug: all retryable; a database outage is not the event's
            if not isinstance(error, Skip | GiveUp) and await self.database_unreachable(error):
                with contextlib.suppress(Exception):
                    await delivery.message.nack(requeue=True)  # back to the queue, no attempt counted
                delivery.acks.settled_elsewhere(delivery.message)
                return "returned"
            result = error
        return await self.settle(delivery, result)

    async def settle(self, delivery: Delivery, result: Result) -> str:
        """Once the transaction its handler ran in has ended: retry or dead-letter the message now, or mark it to be
        acked by the next `acks.flush()`; the outcome."""
        kind, message = delivery.kind, delivery.message
        if result == HANDLED or result == DUPLICATE:
            delivery.acks.ack_later(message)
            (self.metrics.handled if result == HANDLED else self.metrics.duplicates).labels(kind).inc()
            return str(result)
        if isinstance(result, Skip):
            delivery.acks.ack_later(message)
            self.metrics.skipped.labels(kind).inc()
            log.info("skipped", reason=str(result))
            return "skipped"
        assert isinstance(result, Exception)
        delivery.acks.settled_elsewhere(message)  # acked once its copy is stored, or requeued
        if isinstance(result, GiveUp):
            await delivery.retries.dead_letter(message, kind, type(result).__name__, str(result), delivery.attempt)
            self.metrics.dead_lettered.labels(kind).inc()
            return "dead_lettered"
        delay = result.delay if isinstance(result, Retry) else None
        error_type = "HandlerTimeout" if isinstance(result, TimeoutError) else type(result).__name__
        log.warning("handler failed", error_type=error_type, error=scrub(str(result))[:500])
        scheduled = await delivery.retries.retry_or_dead_letter(
            message, kind, self.retry_delays(kind), delivery.attempt, error_type, str(result), delay
        )
        (self.metrics.retried if scheduled else self.metrics.dead_lettered).labels(kind).inc()
        return "retried" if scheduled else "dead_lettered"

    def finish(self, delivery: Delivery, outcome: str) -> None:
        """The delivery's canonical log line and its latency, from delivery to settlement."""
        latency = time.perf_counter() - delivery.arrived
        self.metrics.latency.labels(delivery.kind).observe(latency)
        log.info(
            "message",
            event_id=delivery.event_id,
            notify_type=delivery.kind,
            attempt=delivery.attempt,
            kind=delivery.kind,
            outcome=outcome,
            latency_ms=round(latency * 1000, 2),
        )


def _received_at(headers: dict) -> datetime:
    text = headers.get("received_at")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text)
    return datetime.now(UTC)
