"""A test kit for handler authors: run a handler through the worker's own code — its body decoded and its inbox key
claimed as a worker does (`DeliveryRunner.decode`), its handler run in a savepoint (`workers.handling.handle`) with a
real `HandlerContext` and the worker's guarded transaction and timeout, its outcome decided by `DeliveryRunner.settle`
— against a real PostgreSQL, inside one transaction that is rolled back when the kit closes, so a test leaves no row
behind.

    from workers.testing import handler_kit

    async def test_a_change_to_the_same_status_is_skipped():
        async with handler_kit("CARD_STATUS_CHANGE", DATABASE_URL, modules=["card_status_change"]) as kit:
            first = await kit.run(b'{"notify_type": "CARD_STATUS_CHANGE", "card_id": "c1", ...}')
            assert first.outcome == Outcome.HANDLED
            assert await kit.tx.fetchval("SELECT status FROM card_statuses") == "FROZEN"
            assert (await kit.duplicate(first)).outcome == Outcome.DUPLICATE  # a platform retry: no second effect

A run's outcome is what the worker would do with the message: HANDLED, DUPLICATE, SKIPPED, RETRIED (the handler
failed, whatever it raised, and the schedule has a step left), DEAD_LETTERED (GiveUp, the schedule's end),
QUARANTINED (a body that does not decode as its kind: the worker keeps it in hypercard.invalid). Nothing is
published: the copy the worker would publish is kept on the run (`error_type`, `copy_headers`), and a retry is run
with `kit.retry(run)`, as the retry queue would deliver it. This module holds only what a test needs around the
worker's code: the rolled-back transaction, the captured logs and the copies."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aio_pika
import msgspec
import structlog
from aio_pika.abc import AbstractIncomingMessage, HeadersType
from structlog.testing import LogCapture

from infra.identifiers import IdentifierKey
from infra.log_fields import keep_named_fields
from schemas.events import Event
from workers import database, handling
from workers.acks import ChannelAcks
from workers.delivery import DUPLICATE, HANDLED, SAVEPOINT, Delivery, DeliveryRunner, Result, end_savepoint
from workers.metrics import WorkerMetrics
from workers.outcomes import Outcome
from workers.registry import REGISTRY, Registration, Registry, declare_handled_kinds, load_handler_modules
from workers.retries import RetryPublisher
from workers.settings import WorkerSettings
from workers.transaction_guard import HandlerEndedTransaction

DEFAULTS = WorkerSettings()


@dataclass(frozen=True, slots=True)
class Run:
    """One delivery as the kit ran it."""

    event: Event | None  # None: the body did not decode
    body: bytes
    outcome: Outcome
    error: BaseException | None  # what the handler raised (Skip, Retry, GiveUp, a bug, ...); a body's decode error
    attempt: int
    received_at: datetime
    event_id: str
    logs: list[MutableMapping[str, Any]] = field(default_factory=list)  # what the handler logged through ctx.log
    # The headers of the copy the worker would publish: a retry's (`last_error_type`), a dead letter's
    # (`error_type`, `error_message`), a quarantined body's (`validation_error`); empty when there is none.
    copy_headers: Mapping[str, object] = field(default_factory=dict)

    @property
    def error_type(self) -> str | None:
        """The error type the worker writes on the retry or dead-letter copy (`HandlerTimeout` for a timeout)."""
        value = self.copy_headers.get("error_type", self.copy_headers.get("last_error_type"))
        return value if isinstance(value, str) else None


class KeptCopies(RetryPublisher):
    """The worker's retry publisher with nothing published: the copy it would store is kept, and counts as stored."""

    def __init__(self) -> None:
        super().__init__(cast("aio_pika.abc.AbstractChannel", None), delivery_limit=0)
        self.headers: HeadersType = {}

    async def _declare_retry_queue(self, kind: str, delay: float) -> bool:
        return True

    async def _republish(
        self, message: AbstractIncomingMessage, queue: str, extra: HeadersType, *, redeclare: object = None
    ) -> bool:
        self.headers = {**(message.headers or {}), **extra}
        return True


class HandlerKit:
    """A kind's handler on one open transaction (`tx`), in which each run is a savepoint."""

    def __init__(
        self,
        registration: Registration,
        tx: database.Transaction,
        *,
        retry_delays: tuple[float, ...] = DEFAULTS.retry_delays,
        handler_timeout: float = DEFAULTS.handler_timeout,
    ) -> None:
        self.registration = registration
        self.tx = tx  # query what the handler wrote; everything is rolled back when the kit closes
        self.retry_delays = registration.retry_delays or retry_delays
        self.handler_timeout = handler_timeout
        # A secret of the kit's own: inbox keys and event ids behave as in production, without the deployment's.
        self.identifiers = IdentifierKey(secrets.token_hex(32))
        self.runner = DeliveryRunner(
            cast("Any", None), WorkerMetrics(), handler_timeout, lambda _: self.retry_delays, _never_unreachable,
            self.identifiers,
        )  # fmt: skip  # no pool: the kit's runs only take the stages that run on the transaction they are given

    async def run(self, event: Event | bytes | str, *, attempt: int = 1, received_at: datetime | None = None) -> Run:
        """Run the handler on an event, or on a body (bytes or str: a sample, a captured push) decoded as the worker
        decodes it."""
        body = msgspec.json.encode(event) if isinstance(event, Event) else _as_bytes(event)
        return await self._deliver(body, attempt, received_at or datetime.now(UTC))

    async def retry(self, run: Run) -> Run:
        """The same event again as its retry queue delivers it after `run` failed: the next attempt."""
        return await self._deliver(run.body, run.attempt + 1, run.received_at)

    async def duplicate(self, run: Run) -> Run:
        """The same event again as a platform retry or a broker redelivery brings it: same attempt, same id."""
        return await self._deliver(run.body, run.attempt, run.received_at)

    async def _deliver(self, body: bytes, attempt: int, received_at: datetime) -> Run:
        """One delivery through the worker's stages, as a batch takes it: decoded, claimed, its handler in a
        savepoint, settled."""
        event_id = self.identifiers.event_id(body)
        copies = KeptCopies()
        message = aio_pika.Message(body, headers={"event_id": event_id}, message_id=event_id)
        delivery = Delivery(
            registration=self.registration, message=cast("AbstractIncomingMessage", message), retry_publisher=copies,
            acks=ChannelAcks(), arrived=time.perf_counter(), event_id=event_id, attempt=attempt,
            received_at=received_at,
        )  # fmt: skip
        capture = LogCapture()
        # What the handler logs goes through production's context and redaction: what a worker's line would redact
        # shows redacted here, and the kind's business ids in clear.
        self.runner.handler_log = structlog.wrap_logger(
            None, processors=[structlog.contextvars.merge_contextvars, keep_named_fields, capture],
            wrapper_class=structlog.stdlib.BoundLogger,
        )  # fmt: skip
        outcome = await self.runner.decode(delivery)
        if outcome is None:
            self.runner.bind(delivery)
            result = await self._handle(delivery)
            outcome = await self.runner.settle(delivery, result)
            error = result if isinstance(result, BaseException) else None
        else:
            reason = copies.headers.get("validation_error")
            error = msgspec.DecodeError(reason) if isinstance(reason, str) else None
        structlog.contextvars.clear_contextvars()
        return Run(
            delivery.event, body, outcome, error, attempt, received_at, event_id, capture.entries, copies.headers
        )

    async def _handle(self, delivery: Delivery) -> Result:
        """Its claim and its handler in a savepoint of the kit's transaction, as a batch runs it."""
        if delivery.inbox_key is not None and not await database.claim(
            self.tx, delivery.kind, delivery.inbox_key, delivery.event_id
        ):
            return DUPLICATE
        await self.tx.execute(SAVEPOINT)
        result = await handling.handle(self.runner, self.tx, delivery)
        try:
            await end_savepoint(self.tx, failed=False)
        except HandlerEndedTransaction as ended:  # COMMIT AND CHAIN behind the guard: what it wrote is committed
            await self.tx.execute("ROLLBACK AND CHAIN")  # out of the failed release, still in the kit's transaction
            if delivery.inbox_key is not None:  # its retry is no duplicate, as the worker releases it
                await database.release_claim(self.tx, delivery.kind, delivery.inbox_key, delivery.previous_inbox_key)
            return ended if result is HANDLED else result
        return result


@asynccontextmanager
async def handler_kit(
    kind: str,
    database_url: str,
    *,
    modules: Iterable[str] = (),
    registry: Registry = REGISTRY,
    retry_delays: tuple[float, ...] = DEFAULTS.retry_delays,
    handler_timeout: float = DEFAULTS.handler_timeout,
) -> AsyncIterator[HandlerKit]:
    """A kit for `kind`'s handler, after importing `modules` (as `--handlers` does) and applying the migrations and
    the modules' `schema(...)` statements, as a worker does at start. Everything the runs write is rolled back."""
    load_handler_modules(modules, use_entry_points=False)
    declare_handled_kinds(registry)
    if kind not in registry.registrations:
        raise LookupError(f"no handler for {kind}; kinds with a handler: {', '.join(registry.kinds)}")
    pool = await database.create_pool(database_url, size=1)
    try:
        await database.migrate(pool, registry.schema_statements, registry.module_migrations)
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                yield HandlerKit(
                    registry.registrations[kind], connection, retry_delays=retry_delays, handler_timeout=handler_timeout
                )
            finally:
                await transaction.rollback()
    finally:
        await pool.close()


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


async def _never_unreachable(_: Exception) -> bool:
    """The kit's runs are on a transaction already open: a failure is always the handler's."""
    return False
