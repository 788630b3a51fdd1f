"""A test kit for handler authors: run a handler the way a worker runs it — body decoded by its kind's decoder, inbox
key claimed, handler called in a savepoint with a real `HandlerContext` — against a real PostgreSQL, inside one
transaction that is rolled back when the kit closes, so a test leaves no row behind.

    from workers.testing import handler_kit

    async def test_a_change_to_the_same_status_is_skipped():
        async with handler_kit("CARD_STATUS_CHANGE", DATABASE_URL, modules=["card_status_change"]) as kit:
            first = await kit.run(b'{"notify_type": "CARD_STATUS_CHANGE", "card_id": "c1", ...}')
            assert first.outcome == Outcome.HANDLED
            assert await kit.tx.fetchval("SELECT status FROM card_statuses") == "FROZEN"
            assert (await kit.duplicate(first)).outcome == Outcome.DUPLICATE  # a platform retry: no second effect

A run's outcome is what the worker would do with the message: HANDLED, DUPLICATE, SKIPPED, RETRIED (the handler
failed and the schedule has a step left), DEAD_LETTERED (GiveUp, the schedule's end), QUARANTINED (a body that
does not decode as its kind: the worker keeps it in hypercard.invalid),
LEFT_FOR_REDELIVERY (the handler raised CancelledError of its own: the worker contains it and requeues the message).
Nothing is published: a retry is run with `kit.retry(run)`, as the retry queue would deliver it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from structlog.testing import LogCapture

from infra.identifiers import IdentifierKey
from infra.log_fields import keep_named_fields
from infra.redaction import bind_secrets
from schemas.events import Event
from workers import database
from workers.context import HandlerContext
from workers.errors import GiveUp, Skip
from workers.outcomes import Outcome
from workers.registry import REGISTRY, Registration, Registry, declare_handled_kinds, load_handler_modules
from workers.retries import next_retry_delay
from workers.settings import WorkerSettings

DEFAULTS = WorkerSettings()


@dataclass(frozen=True, slots=True)
class Run:
    """One delivery as the kit ran it."""

    event: Event | None  # None: the body did not decode
    body: bytes
    outcome: Outcome
    error: BaseException | None  # what the handler raised (Skip, Retry, GiveUp, a bug, CancelledError), a decode error
    attempt: int
    received_at: datetime
    event_id: str
    logs: list[MutableMapping[str, Any]] = field(default_factory=list)  # what the handler logged through ctx.log


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
        kind = self.registration.kind
        event_id = self.identifiers.event_id(body)
        run = Run(None, body, Outcome.DEAD_LETTERED, None, attempt, received_at, event_id)
        try:
            event = self.registration.decoder.decode(body)
        except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError) as error:  # as the worker: hypercard.invalid
            return replace(run, outcome=Outcome.QUARANTINED, error=error)
        try:
            natural_key = event.idempotency_key()
        except Exception as error:  # as the worker: a bug in idempotency_key — a dead letter
            return replace(run, error=error)
        inbox_key = None if natural_key is None else self.identifiers.inbox_key(natural_key)
        # The lines go through production's redaction, with this event's secrets bound as the worker binds them:
        # what production would redact shows redacted here, and the kind's business ids in clear.
        bind_secrets(getattr(event, name, None) for name in type(event).sensitive)
        capture = LogCapture()
        logger = structlog.wrap_logger(
            None, processors=[keep_named_fields, capture], wrapper_class=structlog.stdlib.BoundLogger
        )
        named = {**event.business_id_values(), "event_id": event_id, "notify_type": kind, "attempt": attempt}
        context = HandlerContext(
            event_id=event_id,
            idempotency_key=inbox_key,
            attempt=attempt,
            received_at=received_at,
            log=logger.bind(**named),
            tx=self.tx,
        )
        run = replace(run, event=event, logs=capture.entries)
        try:
            async with self.tx.transaction():  # a savepoint: a failure undoes this run only, and its claim
                if inbox_key is not None and not await database.claim(self.tx, kind, inbox_key, event_id):
                    return replace(run, outcome=Outcome.DUPLICATE)
                async with asyncio.timeout(self.handler_timeout):
                    await self.registration.handler(event, context)
        except Skip as error:
            return replace(run, outcome=Outcome.SKIPPED, error=error)
        except asyncio.CancelledError as error:
            if _cancelling():  # the test's own task was cancelled: not the handler's outcome
                raise
            return replace(run, outcome=Outcome.LEFT_FOR_REDELIVERY, error=error)  # as workers.batches contains it
        except Exception as error:
            out_of_steps = isinstance(error, GiveUp) or next_retry_delay(attempt, self.retry_delays) is None
            return replace(run, outcome=Outcome.DEAD_LETTERED if out_of_steps else Outcome.RETRIED, error=error)
        return replace(run, outcome=Outcome.HANDLED)


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


def _cancelling() -> bool:
    """True when this task itself was asked to stop, not when the handler raised CancelledError of its own."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body
