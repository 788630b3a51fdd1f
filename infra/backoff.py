"""Exponential backoff with full jitter: the waits between attempts to reach a service that does not answer (the
broker's reconnect loop, the workers' database probe). Each wait is drawn between 0 and the current ceiling, so that
the processes that lost the broker together (a restart) come back spread out, not in lockstep."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Ceilings that double after each failed attempt, up to `ceiling`, and start again from `first` after a
    success; each wait is a random time up to the current one (full jitter)."""

    def __init__(self, first: float, ceiling: float, rng: random.Random | None = None) -> None:
        self.first = first
        self.ceiling = ceiling
        self.delay = first  # the next wait's upper bound
        self._rng = rng or random.Random()

    def next_wait(self) -> float:
        """The next wait (0 to `delay`); the bound after it is twice as long (at most `ceiling`)."""
        wait = self._rng.uniform(0, self.delay)
        self.delay = min(self.delay * 2, self.ceiling)
        return wait

    async def wait(self) -> None:
        await asyncio.sleep(self.next_wait())

    def reset(self) -> None:
        """The attempt succeeded: the next failure waits at most `first` again."""
        self.delay = self.first
