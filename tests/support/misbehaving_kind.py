"""A test-only kind, TEST_MISBEHAVING, whose handler does what a handler author's code might: commit or roll back
the worker's transaction (through the guard, hidden after a literal, or around it), change the pooled connection's
session, raise a BaseException subclass (SystemExit and KeyboardInterrupt included), a CancelledError of its own or
a plain bug, hang, or ignore its cancellation past HC_HANDLER_TIMEOUT. Each run that returns appends a row to
test_effects in a nested savepoint (which must keep working). Registered in worker subprocesses through
`--handlers tests.support.misbehaving_kind`."""

from __future__ import annotations

import asyncio
import os

from schemas.events import Event
from tests.support.database import CREATE_TABLE
from workers import HandlerContext, handles, outbox, schema

KIND = "TEST_MISBEHAVING"
DELAYS = (0.2, 0.4)  # two retries, then the dead letter
HANG = 60.0  # seconds a hanging handler sleeps: longer than the handler timeout of the tests that use it


class HandlerQuit(BaseException):
    """What a library might raise that is not an Exception."""


# Statements sent through the guard (ctx.tx.execute): each ends the transaction or changes the session, however it
# hides its transaction control. '\\' is a whole literal (standard_conforming_strings), the `$` a dollar quote's
# look-alike.
STATEMENTS = {
    "commit_after_literal": "SELECT '\\', '$'; COMMIT",
    "commit_after_dollar_quote": "SELECT $tag$ ; $tag$, $$ ' $$; COMMIT",
    "set_session": "SET statement_timeout = '1s'",
    "set_role": "SET SESSION ROLE NONE",
    "reset": "RESET statement_timeout",
    "discard": "DISCARD SEQUENCES",
    "listen": "LISTEN hypercard_test",
    "unlisten": "UNLISTEN *",
}
# What an innocent event may run through the guard: it only looks like transaction control, and SET LOCAL ends with
# the transaction.
HARMLESS = (
    "SELECT 'a;COMMIT', E'\\';ROLLBACK', \"b;END\" FROM (SELECT 1 AS \"b;END\") AS t /* ; BEGIN /* ; */ ; END */ "
    "-- ; ABORT\n; SET LOCAL statement_timeout = '5s'"
)


class Misbehaving(Event, tag=KIND):
    """`misbehave`: commit | commit_unguarded | rollback | base_exception | cancelled | raise | hang (past any
    HC_HANDLER_TIMEOUT a test sets) | system_exit | keyboard_interrupt | commit_and_chain | rollback_and_chain | deaf |
    one of STATEMENTS, on every attempt; empty: an innocent event. `sql`: a statement run through ctx.tx first
    (HARMLESS)."""

    token: str
    misbehave: str = ""
    sql: str = ""

    def idempotency_key(self) -> str:
        return self.token


async def handle(event: Misbehaving, ctx: HandlerContext) -> None:
    if event.sql:
        await ctx.tx.execute(event.sql)
    async with ctx.tx.transaction():  # a savepoint of the handler's own
        await ctx.tx.execute("INSERT INTO test_effects (kind, token, attempt) VALUES ($1, $2, $3)", KIND,
                             event.token, ctx.attempt)  # fmt: skip
    if event.misbehave == "commit":
        await ctx.tx.execute("COMMIT")
    elif event.misbehave == "commit_unguarded":  # around the guard: a statement prepared, then run
        await (await ctx.tx._connection.prepare("COMMIT")).fetch()  # noqa: SLF001
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
    elif event.misbehave in STATEMENTS:
        await ctx.tx.execute(STATEMENTS[event.misbehave])
    elif event.misbehave in ("commit_and_chain", "rollback_and_chain"):  # behind the guard
        await ctx.tx._connection.execute(event.misbehave.replace("_", " ").upper())  # noqa: SLF001
    elif event.misbehave == "system_exit":
        raise SystemExit(3)
    elif event.misbehave == "keyboard_interrupt":
        raise KeyboardInterrupt
    elif event.misbehave == "str_raises":  # review r1: an exception whose text cannot be read
        raise UnreadableError
    elif event.misbehave == "background_exit":  # review r1: a task the handler started ends the process
        asyncio.get_running_loop().call_soon(_exit_later)
    elif event.misbehave == "effect":  # review r1: an innocent effect outside the database
        await ctx.after_commit(record_effect, {"token": event.token})
    elif event.misbehave == "deaf_effect":  # review r1: an effect deaf to its cancellation
        await ctx.after_commit(deaf_effect, {"token": event.token})
    elif event.misbehave == "deaf":  # deaf to its cancellation: the worker has to abandon it
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass


class UnreadableError(Exception):
    """An exception from a library whose __str__ fails (a lazy message, a bad format string)."""

    def __str__(self) -> str:
        raise ValueError("the message could not be formatted")


def _exit_later() -> None:
    raise SystemExit(4)


# Review r1: where record_effect writes its calls (one line each: token and key); the relay's effect timeout, shorter
# in the test that sets it.
EFFECTS_FILE = os.environ.get("REVIEW_R1_EFFECTS_FILE", "")
if os.environ.get("REVIEW_R1_EFFECT_TIMEOUT"):
    outbox.EFFECT_TIMEOUT = float(os.environ["REVIEW_R1_EFFECT_TIMEOUT"])


@outbox.effect
async def record_effect(payload: dict[str, str], key: str) -> None:
    with open(EFFECTS_FILE, "a") as calls:  # noqa: ASYNC230, PTH123 - a test's counter
        calls.write(f"{payload['token']} {key}\n")


@outbox.effect
async def deaf_effect(payload: dict[str, str], key: str) -> None:
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass


schema(CREATE_TABLE)
handles(Misbehaving, retry_delays=DELAYS)(handle)
