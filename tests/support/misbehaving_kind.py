"""A test-only kind, TEST_MISBEHAVING, whose handler does what a handler author's code might: commit or roll back
the worker's transaction, raise a BaseException subclass, a CancelledError of its own or a plain bug, or hang. Each
run that returns appends a row to test_effects in a nested savepoint (which must keep working). Registered in worker
subprocesses through `--handlers tests.support.misbehaving_kind`."""

from __future__ import annotations

import asyncio

from schemas.events import Event
from tests.support.database import CREATE_TABLE
from workers import HandlerContext, handles, schema

KIND = "TEST_MISBEHAVING"
DELAYS = (0.2, 0.4)  # two retries, then the dead letter
HANG = 60.0  # seconds a hanging handler sleeps: longer than the handler timeout of the tests that use it


class HandlerQuit(BaseException):
    """What a library might raise that is not an Exception."""


class Misbehaving(Event, tag=KIND):
    """`misbehave`: commit | commit_unguarded | rollback | base_exception | cancelled | raise | hang (past any
    HC_HANDLER_TIMEOUT a test sets), on every attempt; empty: an innocent event."""

    token: str
    misbehave: str = ""

    def idempotency_key(self) -> str:
        return self.token


async def handle(event: Misbehaving, ctx: HandlerContext) -> None:
    async with ctx.tx.transaction():  # a savepoint of the handler's own
        await ctx.tx.execute("INSERT INTO test_effects (kind, token, attempt) VALUES ($1, $2, $3)", KIND,
                             event.token, ctx.attempt)  # fmt: skip
    if event.misbehave == "commit":
        await ctx.tx.execute("COMMIT")
    elif event.misbehave == "commit_unguarded":  # around the guard: a statement prepared, then run
        await (await ctx.tx.prepare("COMMIT")).fetch()
    elif event.misbehave == "rollback":
        await ctx.tx.execute("ROLLBACK")
    elif event.misbehave == "base_exception":
        raise HandlerQuit("a library gave up")
    elif event.misbehave == "cancelled":
        raise asyncio.CancelledError("a library's future was cancelled under the handler")
    elif event.misbehave == "raise":
        raise RuntimeError("a bug in the handler")
    elif event.misbehave == "hang":
        await asyncio.sleep(HANG)


schema(CREATE_TABLE)
handles(Misbehaving, retry_delays=DELAYS)(handle)
