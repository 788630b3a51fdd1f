"""Exponential backoff: the waits between attempts to reach a service that does not answer (the broker's reconnect
loop, the workers' database probe)."""

from __future__ import annotations

import asyncio


class Backoff:
    """Waits that double after each failed attempt, up to `ceiling`, and start again from `first` after a success."""

    def __init__(self, first: float, ceiling: float) -> None:
        self.first = first
        self.ceiling = ceiling
        self.delay = first  # the next wait

    async def wait(self) -> None:
        """Sleep the next wait; the one after it is twice as long (at most `ceiling`)."""
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.ceiling)

    def reset(self) -> None:
        """The attempt succeeded: the next failure waits `first` again."""
        self.delay = self.first
