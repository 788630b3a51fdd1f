"""A test-only event kind, TEST_TRACKED, and its handler: each handled event appends a row to test_effects, so a
test can count effects exactly. Importing this module registers it (in-process, and in worker subprocesses through
`--handlers tests.support.tracked_kind`)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from schemas.events import Event
from tests.support.database import CREATE_TABLE
from workers import GiveUp, HandlerContext, Retry, Skip, handles, schema

# When each attempt started, by token: failed attempts roll their transaction back, so they are kept here.
ATTEMPT_TIMES: defaultdict[str, list[float]] = defaultdict(list)


class Tracked(Event, tag="TEST_TRACKED"):
    """`fail_until`: attempts below it fail; `sleep`: seconds the handler takes (`outcome` pg_sleep: in a query, while
    it fails); `outcome`: retry|give_up|skip|write_then_fail|pg_sleep; `retry_after`: the delay a retrying handler
    asks for; `touch_hot`: also adds 1 to the one row of test_hot (a row every such event updates)."""

    token: str
    fail_until: int = 0
    sleep: float = 0.0
    outcome: str = ""
    retry_after: float = 0.0
    touch_hot: bool = False

    def idempotency_key(self) -> str:
        return self.token


async def record(event: Tracked, ctx: HandlerContext) -> None:
    ATTEMPT_TIMES[event.token].append(time.monotonic())
    failing = ctx.attempt < event.fail_until
    if event.outcome == "pg_sleep":
        if failing:
            await ctx.tx.execute("SELECT pg_sleep($1)", event.sleep)
    elif event.sleep:
        await asyncio.sleep(event.sleep)
    if event.outcome == "give_up":
        raise GiveUp("this event can never be handled")
    if event.outcome == "skip":
        raise Skip("nothing to do")
    if event.outcome == "write_then_fail" and failing:
        await ctx.tx.execute("INSERT INTO test_effects (kind, token, attempt) VALUES ($1, $2, $3)", event.kind(),
                             event.token, ctx.attempt)  # fmt: skip
    if ctx.attempt < event.fail_until:
        if event.outcome == "retry":
            raise Retry("not yet", delay=event.retry_after or None)
        raise RuntimeError(f"failing attempt {ctx.attempt}")
    if event.touch_hot:
        await ctx.tx.execute("UPDATE test_hot SET touched = touched + 1")
    await ctx.tx.execute(
        "INSERT INTO test_effects (kind, token, attempt) VALUES ($1, $2, $3)", event.kind(), event.token, ctx.attempt
    )


TEST_DELAYS = (0.2, 0.4, 0.8)
schema(CREATE_TABLE)
handles(Tracked, retry_delays=TEST_DELAYS)(record)
