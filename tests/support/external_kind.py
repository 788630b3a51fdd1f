"""A test-only kind, TEST_EXTERNAL, whose handler has an effect outside the database: a call to another service,
played by a file that gets one line per call ("token idempotency-key"). Its database effect is a test_effects row.
Importing this module registers it (in-process, and in worker subprocesses through
`--handlers tests.support.external_kind`).

HYPERCARD_TEST_EXTERNAL_FILE names the file. HYPERCARD_TEST_EXTERNAL_STALL names a token whose call never ends: it
writes "started token" first, so a test can kill the worker between the commit and the call."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from schemas.events import Event
from tests.support.database import CREATE_TABLE
from workers import HandlerContext, handles, schema
from workers.outbox import effect

TEST_DELAYS = (0.2, 0.4, 0.8)


class External(Event, tag="TEST_EXTERNAL"):
    """`touch_hot`: also adds 1 to the one row of test_hot, after handing the call over; `fail_first`: the first
        attempt raises after handing the call over; `failing_calls`: that many calls fail before one succeeds, each
    raising ConnectionError, or what `failure` names: `quit` (ServiceQuit, a BaseException) or `cancelled` (a
    CancelledError of the effect's own)."""

    token: str
    touch_hot: bool = False
    fail_first: bool = False
    failing_calls: int = 0
    failure: str = ""

    def idempotency_key(self) -> str:
        return self.token


class ServiceQuit(BaseException):
    """What a client library might raise that is not an Exception."""


FAILURES: dict[str, type[BaseException]] = {"quit": ServiceQuit, "cancelled": asyncio.CancelledError}


def calls(path: str) -> list[str]:
    """The lines of the calls file so far."""
    try:
        with open(path) as made:
            return made.read().splitlines()
    except FileNotFoundError:
        return []


def _append(line: str) -> None:
    with open(os.environ["HYPERCARD_TEST_EXTERNAL_FILE"], "a") as made:
        made.write(line + "\n")


@effect
async def call_service(payload: Any, idempotency_key: str) -> None:
    token = payload["token"]
    if token == os.environ.get("HYPERCARD_TEST_EXTERNAL_STALL"):
        await asyncio.to_thread(_append, f"started {token}")
        await asyncio.sleep(3600)
    failed = sum(line.startswith(f"failed {token} ") for line in calls(os.environ["HYPERCARD_TEST_EXTERNAL_FILE"]))
    if failed < payload["failing_calls"]:
        await asyncio.to_thread(_append, f"failed {token} {idempotency_key}")
        raise FAILURES.get(payload.get("failure", ""), ConnectionError)("the service did not answer")
    await asyncio.to_thread(_append, f"{token} {idempotency_key}")


async def handle(event: External, ctx: HandlerContext) -> None:
    await ctx.tx.execute(
        "INSERT INTO test_effects (kind, token, attempt) VALUES ($1, $2, $3)", event.kind(), event.token, ctx.attempt
    )
    await ctx.after_commit(
        call_service, {"token": event.token, "failing_calls": event.failing_calls, "failure": event.failure}
    )
    if event.touch_hot:
        await ctx.tx.execute("UPDATE test_hot SET touched = touched + 1")
    if event.fail_first and ctx.attempt == 1:
        raise RuntimeError("failed after handing its call over")


schema(CREATE_TABLE)
handles(External, retry_delays=TEST_DELAYS)(handle)
