"""What happens to one delivery: decode, claim its inbox key, run the handler in the same transaction, then ack,
retry or dead-letter. The connection lifecycle around it is `workers.runtime`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aio_pika
import asyncpg
import msgspec
import structlog

from infra.redaction import bind_secrets, clear_secrets, scrub
from workers import database
from workers.context import HandlerContext
from workers.errors import GiveUp, Retry, Skip
from workers.metrics import WorkerMetrics
from workers.registry import Registration
from workers.retries import RetryPublisher, ack

log = structlog.get_logger("workers")
# Asked after a handler failed: is PostgreSQL itself unreachable? (Then the failure is not the event's.)
OutageCheck = Callable[[Exception], Awaitable[bool]]


class DeliveryPolicy:
    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: WorkerMetrics,
        handler_timeout: float,
        retry_delays: Callable[[str], tuple[float, ...]],
        database_unreachable: OutageCheck,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.handler_timeout = handler_timeout
        self.retry_delays = retry_delays
        self.database_unreachable = database_unreachable

    async def process(
        self, registration: Registration, message: aio_pika.abc.AbstractIncomingMessage, retries: RetryPublisher
    ) -> None:
        """One delivery, with its canonical log line and latency metric."""
        started = time.perf_counter()
        kind = registration.kind
        headers = message.headers or {}
        event_id = str(headers.get("event_id") or message.message_id or "")
        attempt = int(headers.get("attempt", 1))  # type: ignore[arg-type]
        structlog.contextvars.clear_contextvars()
        clear_secrets()
        structlog.contextvars.bind_contextvars(event_id=event_id, notify_type=kind, attempt=attempt)
        outcome = "handled"
        try:
            outcome = await self._handle(registration, message, retries, event_id, attempt, headers)
        except asyncio.CancelledError:
            outcome = "cut_off"  # shutdown grace ran out: left unacked, the broker redelivers it
            raise
        finally:
            latency = time.perf_counter() - started
            self.metrics.latency.labels(kind).observe(latency)
            log.info("message", kind=kind, outcome=outcome, latency_ms=round(latency * 1000, 2))

    async def _handle(
        self,
        registration: Registration,
        message: aio_pika.abc.AbstractIncomingMessage,
        retries: RetryPublisher,
        event_id: str,
        attempt: int,
        headers: dict,
    ) -> str:
        kind = registration.kind
        try:
            event = registration.decoder.decode(message.body)
        except msgspec.MsgspecError as error:
            await retries.dead_letter(message, kind, "DecodeError", str(error), attempt)
            self.metrics.dead_lettered.labels(kind).inc()
            return "dead_lettered"

        # Its one-time code, e-mail, mobile: scrubbed from every log line and error header written from here on.
        bind_secrets(getattr(event, name, None) for name in type(event).sensitive)
        natural_key = event.idempotency_key()
        received_at = _received_at(headers)
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                if natural_key is not None and not await database.claim(connection, kind, natural_key, event_id):
                    duplicate = True
                else:
                    duplicate = False
                    context = HandlerContext(event_id, natural_key, attempt, received_at, log.bind(), connection)
                    async with asyncio.timeout(self.handler_timeout):
                        await registration.handler(event, context)
        except Skip as error:
            await ack(message)
            self.metrics.skipped.labels(kind).inc()
            log.info("skipped", reason=str(error))
            return "skipped"
        except GiveUp as error:
            await retries.dead_letter(message, kind, type(error).__name__, str(error), attempt)
            self.metrics.dead_lettered.labels(kind).inc()
            return "dead_lettered"
        except Exception as error:  # Retry, a timeout, a bug: all retryable; a database outage is not the event's
            if await self.database_unreachable(error):
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)  # back to the queue, no attempt counted
                return "returned"
            delay = error.delay if isinstance(error, Retry) else None
            error_type = "HandlerTimeout" if isinstance(error, TimeoutError) else type(error).__name__
            log.warning("handler failed", error_type=error_type, error=scrub(str(error))[:500])
            scheduled = await retries.retry_or_dead_letter(
                message, kind, self.retry_delays(kind), attempt, error_type, str(error), delay
            )
            (self.metrics.retried if scheduled else self.metrics.dead_lettered).labels(kind).inc()
            return "retried" if scheduled else "dead_lettered"
        await ack(message)
        if duplicate:
            self.metrics.duplicates.labels(kind).inc()
            return "duplicate"
        self.metrics.handled.labels(kind).inc()
        return "handled"


def _received_at(headers: dict) -> datetime:
    text = headers.get("received_at")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text)
    return datetime.now(UTC)
