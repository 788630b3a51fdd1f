"""The consume loop: deliveries in, handler in a transaction with the inbox row, then ack, retry or dead-letter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import asyncpg
import msgspec
import structlog

from infra import broker, declare
from infra.redaction import bind_secrets, clear_secrets, scrub
from infra.settings import Settings
from workers import database
from workers.context import HandlerContext
from workers.errors import GiveUp, HandlerError, Retry, Skip
from workers.metrics import WorkerMetrics
from workers.registry import Registration
from workers.retries import RetryPublisher, ack

log = structlog.get_logger("workers")
DATABASE_PROBE_TIMEOUT = 2.0
MAX_PROBE_DELAY = 10.0


class WorkerRuntime:
    """Consumes the queues of the given kinds until `stop()`; reconnects by itself after a broker restart."""

    def __init__(
        self,
        settings: Settings,
        registrations: list[Registration],
        metrics: WorkerMetrics | None = None,
        schema_statements: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.schema_statements = schema_statements or []
        self.registrations = {registration.kind: registration for registration in registrations}
        self.metrics = metrics or WorkerMetrics()
        self.pool: asyncpg.Pool | None = None
        self._consuming = asyncio.Event()
        self._lost = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._queues: list[tuple[str, aio_pika.abc.AbstractQueue]] = []
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        self._retries: RetryPublisher | None = None
        self._outage: DatabaseOutage | None = None  # set while PostgreSQL does not answer: consumption paused

    def retry_delays(self, kind: str) -> tuple[float, ...]:
        return self.registrations[kind].retry_delays or self.settings.retry_delays

    async def start(self, wait: float = 15.0) -> None:
        self.pool = await database.create_pool(self.settings.database_url, size=max(2, min(self.settings.prefetch, 20)))
        await database.migrate(self.pool)
        for statement in self.schema_statements:
            await self.pool.execute(statement)
        self._loop_task = asyncio.create_task(self._keep_consuming(), name="worker-consume")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._consuming.wait(), wait)

    @property
    def consuming(self) -> bool:
        return self._consuming.is_set()

    async def stop(self) -> None:
        """Stop consuming, let in-flight handlers finish within HC_SHUTDOWN_GRACE, leave the rest unacked (the broker
        redelivers them), close."""
        self._stopping = True
        if self._outage is not None:
            self._outage.task.cancel()
        await self._cancel_consumers()
        if self._in_flight:
            _, unfinished = await asyncio.wait(set(self._in_flight), timeout=self.settings.shutdown_grace)
            for task in unfinished:
                task.cancel()
            if unfinished:
                log.warning("handlers cut off at shutdown; their messages will be redelivered", count=len(unfinished))
                await asyncio.wait(unfinished, timeout=5)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self._drop()
        if self.pool is not None:
            await self.pool.close()

    async def _keep_consuming(self) -> None:
        await broker.keep_connected(self._consume, self._drop, self._lost, stopping=lambda: self._stopping)

    async def _consume(self) -> None:
        self._connection = await broker.connect(self.settings.amqp_urls)
        self._connection.close_callbacks.add(self._on_close)
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        channel.close_callbacks.add(self._on_close)
        await channel.set_qos(prefetch_count=self.settings.prefetch)
        await declare.declare_core(channel)
        self._retries = RetryPublisher(channel, self.settings.delivery_limit)
        self._queues = []
        for kind in self.registrations:
            queue = await declare.declare_kind(channel, kind, self.settings.delivery_limit, self.retry_delays(kind))
            self._queues.append((kind, queue))
        if self._outage is None:  # during a database outage the outage's task starts consuming once it answers
            await self._start_consumers()

    async def _start_consumers(self) -> None:
        self._consumers = []
        for kind, queue in self._queues:
            tag = await queue.consume(self._handler_for(kind))
            self._consumers.append((queue, tag))
        self._consuming.set()
        log.info("consuming", kinds=sorted(self.registrations), prefetch=self.settings.prefetch)

    async def _cancel_consumers(self) -> None:
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(tag), 2.0)

    def _on_close(self, *_: object) -> None:
        self._consuming.clear()
        self._lost.set()

    async def _drop(self) -> None:
        self._consuming.clear()
        self._consumers = []
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close_callbacks.discard(self._on_close)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5.0)

    def _handler_for(self, kind: str):
        registration = self.registrations[kind]

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._in_flight.add(task)
            try:
                await self._process(registration, message)
            finally:
                self._in_flight.discard(task)

        return on_message

    async def _process(self, registration: Registration, message: aio_pika.abc.AbstractIncomingMessage) -> None:
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
            outcome = await self._handle(registration, message, event_id, attempt, headers)
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
        event_id: str,
        attempt: int,
        headers: dict,
    ) -> str:
        kind = registration.kind
        retries = self._retries
        assert retries is not None and self.pool is not None
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
                    async with asyncio.timeout(self.settings.handler_timeout):
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
            if await self._database_unreachable(error):
                await self._return_unhandled(message)
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


    async def _database_unreachable(self, error: Exception) -> bool:
        """True when PostgreSQL itself does not answer (then the failure is not the event's, and consumption pauses
        until it answers again)."""
        if self._outage is not None:
            return True
        if isinstance(error, HandlerError):
            return False
        assert self.pool is not None
        try:
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), DATABASE_PROBE_TIMEOUT)
        except Exception as probe_error:
            if self._outage is None and not self._stopping:
                self._outage = DatabaseOutage(asyncio.create_task(self._wait_for_database(), name="database-outage"))
                self.metrics.paused.set(1)
                log.warning(
                    "database unreachable: consumption paused, deliveries returned without counting an attempt",
                    error=type(probe_error).__name__,
                )
                await self._cancel_consumers()
            return True
        return False

    async def _return_unhandled(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        with contextlib.suppress(Exception):
            await message.nack(requeue=True)

    async def _wait_for_database(self) -> None:
        """Probe PostgreSQL with backoff; when it answers, consume again."""
        assert self.pool is not None
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await asyncio.wait_for(self.pool.fetchval("SELECT 1"), DATABASE_PROBE_TIMEOUT)
            except Exception:
                delay = min(delay * 2, MAX_PROBE_DELAY)
                continue
            break
        self._outage = None
        self.metrics.paused.set(0)
        log.info("database answers again: consuming")
        if self._connection is not None and not self._stopping:
            try:
                await self._start_consumers()
            except Exception as error:  # the broker went away meanwhile: the reconnect loop starts consuming
                log.warning("could not consume after the outage", error=type(error).__name__)
                self._lost.set()


@dataclass
class DatabaseOutage:
    task: asyncio.Task[None]  # probes until PostgreSQL answers, then consumes again


def _received_at(headers: dict) -> datetime:
    text = headers.get("received_at")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text)
    return datetime.now(UTC)
