"""Effects outside the database, once per notification: a handler hands an effect to the worker (`ctx.after_commit`),
which writes it to the outbox in the handler's own transaction and savepoint, so a rolled-back handler or batch leaves
nothing behind. The relay, one per worker process, performs the committed rows of its kinds with retries and backoff,
passing each one's idempotency key, and deletes each row once done. PostgreSQL delivers the NOTIFY that wakes the
relay only when the transaction commits; a poll finds the rest (a missed wake-up, a row left by a killed worker)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import CollectorRegistry, Counter, Gauge

from infra.backoff import Backoff
from infra.identifiers import IdentifierKey
from workers.database import Transaction
from workers.transaction_guard import GuardedTransaction

log = structlog.get_logger("workers.outbox")
# (payload, idempotency key): the receiving side de-duplicates on the key, the same for every try of one effect.
Effect = Callable[[Any, str], Awaitable[None]]
EFFECTS: dict[str, Effect] = {}
CHANNEL = "hypercard_outbox"  # NOTIFY'd with the kind in the transaction that writes a row
POLL_INTERVAL = 1.0  # seconds between looks at the outbox when no NOTIFY came
ROWS_PER_ROUND = 32  # performed at once by a relay
EFFECT_TIMEOUT = 30.0  # seconds an effect may take before it counts as failed and is tried again
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # then every 60 s until it succeeds


def effect(function: Effect) -> Effect:
    """Register an effect by its module and name, as the relay finds it again in any worker process, after a restart
    too. It is called as `await function(payload, idempotency_key)`, at least once; it must act once per key."""
    EFFECTS[effect_name(function)] = function
    return function


def effect_name(function: Effect) -> str:
    return f"{function.__module__}.{function.__qualname__}"


class Sealer:
    """Seals payloads at rest (AES-256-GCM, a key derived from HC_ID_SECRET, bound to the row's idempotency key), so a
    dump of the outbox shows no one-time code; opens them with HC_ID_SECRET_PREVIOUS too during a rotation."""

    def __init__(self, identifiers: IdentifierKey) -> None:
        keys = [identifiers, *([identifiers.previous] if identifiers.previous else [])]
        self._ciphers = [AESGCM(key.outbox_key()) for key in keys]

    def seal(self, plain: bytes, idempotency_key: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._ciphers[0].encrypt(nonce, plain, idempotency_key.encode())

    def open(self, sealed: bytes, idempotency_key: str) -> bytes:
        for cipher in self._ciphers[:-1]:
            with contextlib.suppress(InvalidTag):
                return cipher.decrypt(sealed[:12], sealed[12:], idempotency_key.encode())
        return self._ciphers[-1].decrypt(sealed[:12], sealed[12:], idempotency_key.encode())


@functools.lru_cache(maxsize=8)
def sealer_for(identifiers: IdentifierKey) -> Sealer:
    return Sealer(identifiers)


async def hand_over(
    tx: Transaction | GuardedTransaction, *, kind: str, idempotency_key: str, event_id: str, function: Effect,
    payload: object, sealer: Sealer | None,
) -> None:  # fmt: skip
    """Write the effect in the handler's transaction; the relay is notified when, and only if, it commits. Without a
    sealer (the handler kit, whose rows are rolled back) the payload is stored as it is."""
    name = effect_name(function)
    if EFFECTS.get(name) is not function:
        raise TypeError(f"{name} is not a registered effect: decorate it with @workers.outbox.effect")
    plain = msgspec.json.encode(payload)
    stored = plain if sealer is None else sealer.seal(plain, idempotency_key)
    await tx.execute(
        """WITH handed AS (
               INSERT INTO hypercard_outbox (kind, effect, idempotency_key, event_id, payload, sealed)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kind, idempotency_key) DO NOTHING)
           SELECT pg_notify($7, $1)""",
        kind, name, idempotency_key, event_id, stored, sealer is not None, CHANNEL,
    )  # fmt: skip


class OutboxMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending = Gauge(
            "hypercard_worker_outbox_pending", "Effects committed and not performed yet, by kind.", ["kind"],
            registry=registry,
        )  # fmt: skip
        self.performed = Counter(
            "hypercard_worker_outbox_performed", "Effects performed and deleted from the outbox.", ["kind"],
            registry=registry,
        )  # fmt: skip
        self.failures = Counter(
            "hypercard_worker_outbox_failures", "Tries of an effect that failed; each is tried again with backoff.",
            ["kind"], registry=registry,
        )  # fmt: skip


class OutboxRelay:
    """Performs the committed outbox rows of `kinds` whose effect this process registered, on a connection of its
    own. Rows are locked while performed (FOR UPDATE SKIP LOCKED): two relays never take the same row, and a row
    held by a worker that died is free again as soon as its connection is gone."""

    def __init__(self, database_url: str, kinds: list[str], metrics: OutboxMetrics, sealer: Sealer) -> None:
        self.database_url = database_url
        self.sealer = sealer
        self.kinds = kinds
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for kind in self.kinds:
            self.metrics.pending.labels(kind)
            self.metrics.performed.labels(kind)
            self.metrics.failures.labels(kind)
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Stop; rows not performed yet stay in the outbox for the next relay of their kind."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, connection: object, pid: int, channel: str, kind: object) -> None:
        if kind in self.kinds:
            self._wake.set()

    async def _run(self) -> None:
        backoff = Backoff(0.5, 10.0)  # while PostgreSQL does not answer: one line per try, not one per second
        while True:
            try:
                connection = await asyncpg.connect(self.database_url)
                try:
                    await connection.add_listener(CHANNEL, self._notified)
                    while True:
                        self._wake.clear()
                        taken = await self._round(connection)
                        backoff.reset()
                        if not taken:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
                finally:
                    await asyncio.shield(connection.close())
            except asyncio.CancelledError:
                raise
            except Exception as error:  # PostgreSQL gone, a bug: the rows wait; the relay starts again
                log.warning("outbox relay failed; starting again", error=type(error).__name__, retry_in=backoff.delay)
                await backoff.wait()

    async def _round(self, connection: asyncpg.Connection) -> int:
        """Perform the due rows (at most ROWS_PER_ROUND, at once); how many were taken."""
        async with connection.transaction():
            rows = await connection.fetch(
                """SELECT id, kind, effect, idempotency_key, event_id, payload, sealed, attempts FROM hypercard_outbox
                   WHERE kind = ANY($1::text[]) AND effect = ANY($2::text[]) AND due_at <= now()
                   ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED""",
                self.kinds, list(EFFECTS), ROWS_PER_ROUND,
            )  # fmt: skip
            failed = await asyncio.gather(*(self._perform(row) for row in rows))
            done = [row["id"] for row, error in zip(rows, failed, strict=True) if error is None]
            await connection.execute("DELETE FROM hypercard_outbox WHERE id = ANY($1::bigint[])", done)
            for row, error in zip(rows, failed, strict=True):
                if error is not None:
                    delay = RETRY_DELAYS[min(row["attempts"], len(RETRY_DELAYS) - 1)]
                    await connection.execute(
                        """UPDATE hypercard_outbox SET attempts = attempts + 1, last_error = $2,
                               due_at = now() + make_interval(secs => $3) WHERE id = $1""",
                        row["id"], error, delay,
                    )  # fmt: skip
            if not rows:
                await self._count_pending(connection)
        return len(rows)

    async def _perform(self, row: asyncpg.Record) -> str | None:
        """Call the row's effect; None when it succeeded, else the type of what it raised (never its text: it may
        quote the payload, a one-time code). Whatever it raises, SystemExit and a CancelledError of its own included,
        is a failed try, caught here: a task re-raises SystemExit and KeyboardInterrupt into the event loop."""
        # Each row is performed in a task of its own (gather): what it logs names its event, and only its.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(event_id=row["event_id"], notify_type=row["kind"])
        try:
            async with asyncio.timeout(EFFECT_TIMEOUT):
                key = row["idempotency_key"]
                plain = self.sealer.open(row["payload"], key) if row["sealed"] else row["payload"]
                await EFFECTS[row["effect"]](msgspec.json.decode(plain), key)
        except BaseException as error:  # a BaseException of the effect's own too: one failed try, not the relay's end
            task = asyncio.current_task()
            if isinstance(error, asyncio.CancelledError) and task is not None and task.cancelling() > 0:
                raise  # the relay's stop
            self.metrics.failures.labels(row["kind"]).inc()
            log.warning("effect failed; it is tried again", effect=row["effect"], attempts=row["attempts"] + 1,
                        error_type=type(error).__name__)  # fmt: skip
            return type(error).__name__
        self.metrics.performed.labels(row["kind"]).inc()
        return None

    async def _count_pending(self, connection: asyncpg.Connection) -> None:
        rows = await connection.fetch(
            "SELECT kind, count(*) AS n FROM hypercard_outbox WHERE kind = ANY($1::text[]) GROUP BY kind", self.kinds
        )
        counts: dict[str, int] = {row["kind"]: row["n"] for row in rows}
        for kind in self.kinds:
            self.metrics.pending.labels(kind).set(counts.get(kind, 0))
