"""Every handler tapped (tests/support/effect_tap.py) and made to fail the first attempt of a share of the events,
after its effects are written and handed over: the failed attempt's transaction must roll them back (its call
outside the database included), the retry write them once.

The share comes from HYPERCARD_TEST_FAIL_RATE (0 to 1; not an HC_* name, which the worker's settings refuse); which
events fail is decided by a hash of the event id, so the same events fail in every run. Half of them (another hash)
fail the way HYPERCARD_TEST_MISBEHAVE names, as a handler author's code might: `commit` or `rollback` the worker's
transaction, raise a `base_exception` (not an Exception) or a `cancelled` (a CancelledError of its own), or `hang`
past HC_HANDLER_TIMEOUT; the others, and all of them when it is empty, raise a RuntimeError. Loaded by a worker
process through --handlers / HC_HANDLERS."""

from __future__ import annotations

import asyncio
import hashlib
import os

import tests.support.effect_tap  # noqa: F401  (taps every handler: its effects in and outside the database)
from workers.context import HandlerContext
from workers.registry import REGISTRY, Handler

FAIL_RATE = float(os.environ.get("HYPERCARD_TEST_FAIL_RATE", "0"))
MISBEHAVE = os.environ.get("HYPERCARD_TEST_MISBEHAVE", "")
MISBEHAVIOURS = ("commit", "rollback", "base_exception", "cancelled", "hang")


class HandlerQuit(BaseException):
    """What a library might raise that is not an Exception."""


def _draw(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def fails_first_attempt(event_id: str, rate: float) -> bool:
    """Whether the event's first attempt fails at this rate: the same answer in every process and every run."""
    return _draw(event_id) < rate


def misbehaves(event_id: str, rate: float, misbehave: str) -> bool:
    """Whether the event's failing first attempt misbehaves (`misbehave`) rather than raising a RuntimeError."""
    return bool(misbehave) and fails_first_attempt(event_id, rate) and _draw(f"misbehave {event_id}") < 0.5


async def fail(misbehave: str, ctx: HandlerContext) -> None:
    if misbehave == "commit":
        await ctx.tx.execute("COMMIT")
    elif misbehave == "rollback":
        await ctx.tx.execute("ROLLBACK")
    elif misbehave == "base_exception":
        raise HandlerQuit("a library gave up")
    elif misbehave == "cancelled":
        raise asyncio.CancelledError("a library's future was cancelled under the handler")
    elif misbehave == "hang":
        await asyncio.sleep(3600)
    # Whatever the worker let a misbehaving handler get away with, its attempt still fails.
    raise RuntimeError("the first attempt fails (HYPERCARD_TEST_FAIL_RATE), after writing its effect")


def failing_first_attempt(handler: Handler) -> Handler:
    async def handle(event, ctx: HandlerContext) -> None:
        await handler(event, ctx)
        if ctx.attempt == 1 and fails_first_attempt(ctx.event_id, FAIL_RATE):
            await fail(MISBEHAVE if misbehaves(ctx.event_id, FAIL_RATE, MISBEHAVE) else "", ctx)

    return handle


if MISBEHAVE not in ("", *MISBEHAVIOURS):
    raise ValueError(f"HYPERCARD_TEST_MISBEHAVE={MISBEHAVE!r}: one of {', '.join(MISBEHAVIOURS)}, or empty")
for registration in list(REGISTRY.registrations.values()):
    REGISTRY.handles(registration.event_type, retry_delays=registration.retry_delays, replace=True)(
        failing_first_attempt(registration.handler)
    )
