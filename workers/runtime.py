"""A worker's lifecycle: the database pool, the broker connection and its consumers, paused while PostgreSQL is
unreachable (`workers.outage`), and the drain on stop. Deliveries are handled in batches (`workers.batches`), each
run by `workers.delivery.DeliveryRunner`."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Mapping
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

import aio_pika
import asyncpg
import structlog

from infra import broker, declare
from infra.identifiers import identifier_key
from infra.waiting import wait_for_event
from schemas import topology
from workers import database, retention
from workers.acks import ChannelAcks
from workers.batches import Batches
from workers.delivery import DeliveryRunner
from workers.metrics import WorkerMetrics
from workers.outage import DatabaseOutage
from workers.outbox import OutboxMetrics, OutboxRelay, sealer_for
from workers.registry import Registration
from workers.retries import RetryPublisher
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from infra.spans import Tracing

log = structlog.get_logger("workers")


class WorkerRuntime:
    """Consumes the queues of the given kinds until `stop()`; reconnects by itself after a broker restart."""

    def __init__(
        self,
        settings: WorkerSettings,
        registrations: list[Registration],
        metrics: WorkerMetrics | None = None,
        schema_statements: list[str] | None = None,
        tracing: Tracing | None = None,
        module_migrations: Mapping[str, Traversable] | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing  # a span per delivery when tracing is on (infra.tracing)
        self.identifiers = identifier_key(settings)  # raises SettingsError without HC_ID_SECRET
        self.schema_statements = schema_statements or []
        self.module_migrations = dict(module_migrations or {})
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
        self._outage: DatabaseOutage | None = None  # set once the pool is
        # Performs the effects its kinds' handlers handed over (workers.outbox), once committed.
        self._relay = OutboxRelay(
            settings.database_url, sorted(self.registrations), OutboxMetrics(self.metrics.registry),
            sealer_for(self.identifiers),
        )  # fmt: skip
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
        # The migrations and the handlers' schema as HC_MIGRATION_DATABASE_URL's user when set (the DDL user).
        await database.migrate(
            self.pool, self.schema_statements, self.module_migrations,
            migration_url=self.settings.migration_database_url or None,
        )  # fmt: skip
        self._outage = DatabaseOutage(
            self.pool, self.metrics, pause=self._cancel_consumers, resume=self._resume_after_outage,
            stopping=lambda: self._stopping,
        )  # fmt: skip
        self._runner = DeliveryRunner(
            self.pool, self.metrics, self.settings.handler_timeout, self.retry_delays, self._outage.unreachable,
            self.identifiers, self.tracing,
        )  # fmt: skip
        self._batches = Batches(
            self._runner, self.settings.batch_size, self.settings.batch_wait, self.batch_concurrency
        )
        self._batches.start()
        self._relay.start()
        self._pruning = retention.start_pruning(self.settings, self.metrics)
        self._link.start()
        await wait_for_event(self._consuming, wait)

    @property
    def consuming(self) -> bool:
        return self._consuming.is_set()

    @property
    def abandoned_handlers(self) -> int:
        """Handlers still running that ignored their cancellation (workers.delivery.HandlerAbandoned)."""
        return 0 if self._runner is None else len(self._runner.abandoned)

    async def stop(self) -> None:
        """Stop consuming, let in-flight handlers finish within HC_SHUTDOWN_GRACE, leave the rest unacked (the broker
        redelivers them), close."""
        self._stopping = True
        await retention.stop_pruning(self._pruning)
        if self._outage is not None:
            self._outage.cancel()
        await self._cancel_consumers()
        if self._batches is not None:
            if not await self._batches.drained(self.settings.shutdown_grace):
                log.warning(
                    "handlers cut off at shutdown; their messages will be redelivered", count=self._batches.outstanding
                )
            await self._batches.close()
        await self._relay.stop()
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
        if self._outage is None or not self._outage.ongoing:  # during an outage, consuming starts once it ends
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

    async def _resume_after_outage(self) -> None:
        if self._link.connection is not None and not self._stopping:
            try:
                await self._start_consumers()
            except Exception as error:  # the broker went away meanwhile: the reconnect loop starts consuming
                log.warning("could not consume after the outage", error=type(error).__name__)
                self._link.lost()
