"""Inbox retention: idempotency keys older than HC_INBOX_RETENTION_DAYS are deleted, oldest first, in bounded
batches with a pause between, by one worker at a time, every HC_INBOX_PRUNE_INTERVAL seconds.

The window is far longer than the platform's retries (about 43.6 hours) and the workers' own schedule, so a
retry, a redelivery or a replay inside it is still a duplicate. A round runs on a connection of its own, never one
of the handlers' pool, and holds a session advisory lock: another worker's round finds it taken and skips; closing
the connection releases it, whatever happened. A failed round is logged, counted and tried again at the next."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import asyncpg
import structlog

from workers.metrics import WorkerMetrics
from workers.settings import WorkerSettings

log = structlog.get_logger("workers.retention")
PRUNE_LOCK = 0x4843505255  # "HCPRU": one pruning round at a time across the workers of a database
BATCH_ROWS = 5000
BATCH_PAUSE = 0.1  # seconds between batches: the handlers' transactions get the table in between

# Oldest first through the handled_at index; rows a transaction holds are skipped (they are for the next round).
DELETE_BATCH = """DELETE FROM hypercard_inbox WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM hypercard_inbox WHERE handled_at < $1 ORDER BY handled_at LIMIT $2 FOR UPDATE SKIP LOCKED))"""


@dataclass(frozen=True)
class PruneRound:
    rows: int  # keys deleted
    batches: int  # statements, each deleting at most the batch size


class InboxPruner:
    def __init__(
        self,
        database_url: str,
        metrics: WorkerMetrics,
        *,
        retention_days: float,
        batch_rows: int = BATCH_ROWS,
        batch_pause: float = BATCH_PAUSE,
    ) -> None:
        self.database_url = database_url
        self.metrics = metrics
        self.retention_days = retention_days
        self.batch_rows = batch_rows
        self.batch_pause = batch_pause

    async def prune_once(self) -> PruneRound | None:
        """One round; None when another worker's round holds the lock."""
        connection = await asyncpg.connect(self.database_url, command_timeout=60)
        try:
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK):
                return None
            started = time.monotonic()
            # One cutoff for the whole round, so it ends even while new keys keep coming.
            cutoff = await connection.fetchval("SELECT now() - make_interval(secs => $1)", self.retention_days * 86400)
            deleted = batches = 0
            while True:
                count = int((await connection.execute(DELETE_BATCH, cutoff, self.batch_rows)).split()[-1])
                deleted += count
                batches += 1
                self.metrics.inbox_pruned.inc(count)
                if count < self.batch_rows:
                    break
                await asyncio.sleep(self.batch_pause)
            log.info(
                "inbox pruned", rows=deleted, batches=batches, handled_before=cutoff.isoformat(),
                seconds=round(time.monotonic() - started, 3),
            )  # fmt: skip
            return PruneRound(deleted, batches)
        finally:
            await connection.close()  # ends the session, and with it the advisory lock

    async def run(self, interval: float) -> None:
        """A round now and every `interval` seconds until cancelled; a failed round never ends the loop."""
        while True:
            try:
                await self.prune_once()
            except Exception as error:
                self.metrics.inbox_prune_failures.inc()
                log.warning("inbox pruning failed; trying again at the next round", error=type(error).__name__,
                            detail=str(error)[:200])  # fmt: skip
            await asyncio.sleep(interval)


def start_pruning(settings: WorkerSettings, metrics: WorkerMetrics) -> asyncio.Task[None]:
    """The worker runtime's pruning task (cancel it to stop)."""
    pruner = InboxPruner(settings.database_url, metrics, retention_days=settings.inbox_retention_days)
    return asyncio.create_task(pruner.run(settings.inbox_prune_interval), name="inbox-pruning")


async def stop_pruning(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
