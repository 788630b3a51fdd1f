"""The reconnect backoff (infra/backoff.py): jittered, so processes that lost the broker together do not all come
back at the same instant (issue 28, finding 6)."""

from __future__ import annotations

import statistics

import pytest

from infra import backoff
from infra.backoff import Backoff


@pytest.fixture
def slept(monkeypatch):
    """The waits asked of asyncio.sleep, none of them slept."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(backoff.asyncio, "sleep", record)
    return waits


async def test_200_processes_after_one_broker_restart_spread_their_reconnects(slept):
    for _ in range(200):  # each process's reconnect loop, its 4th failed attempt (ceiling 4 s of 0.5 .. 5)
        process = Backoff(0.5, 5.0)
        for _ in range(4):
            await process.wait()
    fourth = slept[3::4]
    assert len(fourth) == 200
    assert len({round(wait, 3) for wait in fourth}) > 150, "most processes wait a time of their own"
    assert statistics.pstdev(fourth) > 0.5, f"spread {statistics.pstdev(fourth):.2f} s: in lockstep"
    assert max(fourth) <= 4.0 and min(fourth) >= 0.0
    assert sum(1 for wait in fourth if wait < 2.0) > 40 and sum(1 for wait in fourth if wait > 2.0) > 40


async def test_every_wait_stays_under_the_ceiling_and_a_success_starts_again_small(slept):
    process = Backoff(0.5, 5.0)
    for _ in range(50):
        await process.wait()
    assert max(slept) <= 5.0
    assert statistics.mean(slept[10:]) > 1.5, "the waits still grow towards the ceiling"
    process.reset()
    slept.clear()
    await process.wait()
    assert slept[0] <= 0.5
