"""A worker's lifecycle: the database pool, the broker connection and its consumers, pausing while PostgreSQL is
unreachable, and the drain on stop. Deliveries are handled in batches (`workers.batches`), each by the rules of
`workers.delivery.DeliveryRunner`."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aio_pika
import asyncpg
import structlog

from infra import broker, declare
from infra.identifiers import identifier_key
from schemas import topology
from workers import database, retention
from workers.acks import ChannelAcks
from workers.batches import Batches
from workers.delivery import DeliveryRunner
from workers.errors import HandlerError
from workers.metrics import WorkerMetrics
from workers.registry import Registration
from workers.retries import RetryPublisher
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from infra.spans import Tracing

log = structlog.get_logger("workers")
DATABASE_PROBE_TIMEOUT = 2.0
MAX_PROBE_DELAY = 10.0


@dataclass
class DatabaseOutage:
    task: asyncio.Task[None]  # probes until PostgreSQL answers, then consumes again


class WorkerRuntime:
    """Consumes the queues of the given kinds until `stop()`; reconnects by itself after a broker restart."""

    def __init__(
        self,
        settings: WorkerSettings,
        registrations: list[Registration],
        metrics: WorkerMetrics | None = None,
        schema_statements: list[str] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing  # a span per delivery when tracing is on (infra.tracing)
        self.identifiers = identifier_key(settings)  # raises SettingsError without HC_ID_SECRET
        self.schema_statements = schema_statements or []
        self.registrations = {registration.kind: registration for registration in registrations}
        self.metrics = metrics or WorkerMetrics()
        self.metrics.start_series(sorted(self.registrations))
        self.pool: asyncpg.Pool | None = None
        self._runner: DeliveryRunner | None = None
        self._batches: Batches | None = None
        self._consuming = asyncio.Event()
        self._stopping = False
        self._queues: list[tuple[str, aio_pika.abc.AbstractQueue]] = []
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        self._retries: RetryPublisher | None = None
        self._acks: ChannelAcks | None = None
        self._pruning: asyncio.Task[None] | None = None  # inbox retention (workers.retention)
        self._outage: DatabaseOutage | None = None  # set while PostgreSQL does not answer: consumption paused
        self._link = broker.BrokerConnection(
            settings.amqp_urls, self._consume, on_lost=self._not_consuming, stopping=lambda: self._stopping,
            name="worker-connection",
        )  # fmt: skip

    def retry_delays(self, kind: str) -> tuple[float, ...]:
        return self.registrations[kind].retry_delays or self.settings.retry_delays

    @property
    def batch_concurrency(self) -> int:
        """Batches handled at once, each on a connection of its own: enough for HC_PREFETCH deliveries, at most 20.
        By default one: concurrent batches of one process would mostly wait on each other's rows."""
        return min(20, math.ceil(self.settings.prefetch / self.settings.batch_size))

    async def start(self, wait: float = 15.0) -> None:
        # One connection per concurrent batch, and one for the database probe.
        self.pool = await database.create_pool(self.settings.database_url, size=self.batch_concurrency + 1)
        await database.migrate(self.pool)
        for statement in self.schema_statements:
            await self.pool.execute(statement)
        self._runner = DeliveryRunner(
            self.pool, self.metrics, self.settings.handler_timeout, self.retry_delays, self._database_unreachable,
            self.identifiers, self.tracing,
        )  # fmt: skip
        self._batches = Batches(
            self._runner, self.settings.batch_size, self.settings.batch_wait, self.batch_concurrency
        )
        self._batches.start()
        self._pruning = retention.start_pruning(self.settings, self.metrics)
        self._link.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._consuming.wait(), wait)

    @property
    def consuming(self) -> bool:
        return self._consuming.is_set()

    async def stop(self) -> None:
        """Stop consuming, let in-flight handlers finish within HC_SHUTDOWN_GRACE, leave the rest unacked (the broker
        redelivers them), close."""
        self._stopping = True
        await retention.stop_pruning(self._pruning)
        if self._outage is not None:
            self._outage.task.cancel()
        await self._cancel_consumers()
        if self._batches is not None:
            if not await self._batches.drained(self.settings.shutdown_grace):
                log.warning(
                    "handlers cut off at shutdown; their messages will be redelivered", count=self._batches.outstanding
                )
            await self._batches.close()
        await self._link.close()
        if self.pool is not None:
            await self.pool.close()

    async def _consume(self, connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._link.watch(channel)
        await channel.set_qos(prefetch_count=self.settings.prefetch)
        await declare.declare_topology(connection, self.registrations, self.settings.delivery_limit, self.retry_delays)
        self._retries = RetryPublisher(channel, self.settings.delivery_limit)
        assert self._runner is not None
        self._acks = ChannelAcks(frame_failed=self._runner.frame_failed)
        self._queues = []
        for kind in self.registrations:
            self._queues.append((kind, await channel.get_queue(topology.kind_queue(kind))))
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
        self._consuming.clear()
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(tag), 2.0)

    def _not_consuming(self) -> None:
        self._consuming.clear()
        self._consumers = []

    def _handler_for(self, kind: str) -> Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]:
        registration = self.registrations[kind]
        assert self._runner is not None and self._batches is not None
        assert self._retries is not None and self._acks is not None
        runner, batches, retries, acks = self._runner, self._batches, self._retries, self._acks

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            """Queued for the next batch; the batch settles it. Never raises: aio-pika would only log it, and the
            message would stay unacked until the channel closes."""
            try:
                delivery = runner.receive(registration, message, retries, acks)
            except Exception as error:
                await runner.refuse(registration.kind, message, acks, error)
                return
            batches.submit(delivery)

        return on_message

    async def _database_unreachable(self, error: Exception) -> bool:
        """True when PostgreSQL itself does not answer: consumption pauses until it answers again."""
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
        if self._link.connection is not None and not self._stopping:
            try:
                await self._start_consumers()
            except Exception as error:  # the broker went away meanwhile: the reconnect loop starts consuming
                log.warning("could not consume after the outage", error=type(error).__name__)
                self._link.lost()
