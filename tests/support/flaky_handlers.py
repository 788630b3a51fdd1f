"""Every handler tapped (tests/support/effect_tap.py) and made to fail the first attempt of a share of the events,
after its effect is written: the failed attempt's transaction must roll the effect back, the retry write it once.

The share comes from HYPERCARD_TEST_FAIL_RATE (0 to 1; not an HC_* name, which the worker's settings refuse); which
events fail is decided by a hash of the event id, so the same events fail in every run. Loaded by a worker process
through --handlers / HC_HANDLERS."""

from __future__ import annotations

import hashlib
import os

import tests.support.effect_tap  # noqa: F401  (taps every handler: one test_effects row per committed handling)
from workers.context import HandlerContext
from workers.registry import REGISTRY, Handler

FAIL_RATE = float(os.environ.get("HYPERCARD_TEST_FAIL_RATE", "0"))


def fails_first_attempt(event_id: str, rate: float) -> bool:
    """Whether the event's first attempt fails at this rate: the same answer in every process and every run."""
    draw = int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:8], "big") / 2**64
    return draw < rate


def failing_first_attempt(handler: Handler) -> Handler:
    async def handle(event, ctx: HandlerContext) -> None:
        await handler(event, ctx)
        if ctx.attempt == 1 and fails_first_attempt(ctx.event_id, FAIL_RATE):
            raise RuntimeError("the first attempt fails (HYPERCARD_TEST_FAIL_RATE), after writing its effect")

    return handle


for registration in list(REGISTRY.registrations.values()):
    REGISTRY.handles(registration.event_type, retry_delays=registration.retry_delays, replace=True)(
        failing_first_attempt(registration.handler)
    )
