"""A database outage: told apart from a handler's own failure by probing PostgreSQL, consumption paused while it
lasts (deliveries go back to their queue without counting an attempt), and probed with backoff until it answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from infra.backoff import Backoff
from workers import database
from workers.errors import HandlerError
from workers.metrics import WorkerMetrics

log = structlog.get_logger("workers")
FIRST_PROBE_DELAY = 0.5
MAX_PROBE_DELAY = 10.0


class DatabaseOutage:
    """`unreachable(error)` is the delivery runner's question after a failure. On an outage it calls `pause` (stop
    consuming) once, and `resume` once PostgreSQL answers again."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: WorkerMetrics,
        *,
        pause: Callable[[], Awaitable[None]],
        resume: Callable[[], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self._pause = pause
        self._resume = resume
        self._stopping = stopping
        self._probing: asyncio.Task[None] | None = None  # set while PostgreSQL does not answer: consumption paused

    @property
    def ongoing(self) -> bool:
        return self._probing is not None

    async def unreachable(self, error: Exception) -> bool:
        """True when PostgreSQL itself does not answer: consumption pauses until it answers again."""
        if self._probing is not None:
            return True
        if isinstance(error, HandlerError):
            return False
        try:
            await database.probe(self.pool)
        except Exception as probe_error:
            if self._probing is None and not self._stopping():
                self._probing = asyncio.create_task(self._probe_until_it_answers(), name="database-outage")
                self.metrics.paused.set(1)
                log.warning(
                    "database unreachable: consumption paused, deliveries returned without counting an attempt",
                    error=type(probe_error).__name__,
                )
                await self._pause()
            return True
        return False

    def cancel(self) -> None:
        """Stop probing (the worker is stopping)."""
        if self._probing is not None:
            self._probing.cancel()

    async def _probe_until_it_answers(self) -> None:
        backoff = Backoff(FIRST_PROBE_DELAY, MAX_PROBE_DELAY)
        while True:
            await backoff.wait()
            try:
                await database.probe(self.pool)
            except Exception:
                continue
            break
        self._probing = None
        self.metrics.paused.set(0)
        log.info("database answers again: consuming")
        await self._resume()
