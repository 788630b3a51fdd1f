"""Test-only event kinds and handlers: each handled event appends a row to test_effects, so a test can count
effects exactly. Loaded in-process by the tests and by worker subprocesses through --handlers."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from schemas.events import Event
from workers import GiveUp, HandlerContext, Retry
from workers.registry import Registry

TEST_REGISTRY = Registry()
# When each attempt started, by token: failed attempts roll their transaction back, so they are kept here.
ATTEMPT_TIMES: defaultdict[str, list[float]] = defaultdict(list)
CREATE_TABLE = """CREATE TABLE IF NOT EXISTS test_effects (
    kind text NOT NULL, token text NOT NULL, attempt integer NOT NULL, at timestamptz NOT NULL DEFAULT now())"""


class Tracked(Event, tag="TEST_TRACKED"):
    """`fail_until`: attempts below it fail; `sleep`: seconds the handler takes; `outcome`: retry|give_up|boom;
    `retry_after`: the delay a retrying handler asks for."""

    token: str
    fail_until: int = 0
    sleep: float = 0.0
    outcome: str = ""
    retry_after: float = 0.0

    def idempotency_key(self) -> str:
        return self.token


async def record(event: Tracked, ctx: HandlerContext) -> None:
    ATTEMPT_TIMES[event.token].append(time.monotonic())
    if event.sleep:
        await asyncio.sleep(event.sleep)
    if event.outcome == "give_up":
        raise GiveUp("this event can never be handled")
    if ctx.attempt < event.fail_until:
        if event.outcome == "retry":
            raise Retry("not yet", delay=event.retry_after or None)
        raise RuntimeError(f"failing attempt {ctx.attempt}")
    await ctx.tx.execute(
        "INSERT INTO test_effects (kind, token, attempt) VALUES ($1, $2, $3)", event.kind(), event.token, ctx.attempt
    )


TEST_REGISTRY.handles(Tracked, retry_delays=(0.2, 0.4, 0.8))(record)
