"""Several workers started at once on a new database: the migrations and the handler modules' schema, applied by one
of them under the migration lock, never by two at the same time."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest

from tests.support.database import reset_database
from tests.support.processes import REPO, Process, worker_process
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
EXAMPLES = str(REPO / "examples")
WORKERS = 4
TRIALS = 10


async def started_or_ended(workers: list[Process]) -> bool:
    return all(worker.events(event="consuming") or worker.popen.poll() is not None for worker in workers)


async def test_four_workers_started_at_once_on_an_empty_database_all_start(db, tmp_path: Path):
    for trial in range(TRIALS):
        await reset_database()
        await db.execute("DROP TABLE IF EXISTS card_statuses")
        workers = [
            worker_process(tmp_path, "CARD_STATUS_CHANGE", "--handlers", "card_status_change",
                           env={"PYTHONPATH": EXAMPLES}, name=f"trial{trial}-worker{n}")
            for n in range(WORKERS)
        ]  # fmt: skip
        try:
            await eventually(functools.partial(started_or_ended, workers), timeout=60, interval=0.2)
        finally:
            await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in workers))
        failed = [worker.output[-600:] for worker in workers if not worker.events(event="consuming")]
        assert not failed, f"trial {trial + 1}: {len(failed)} of {WORKERS} workers did not start: {failed[0]}"
