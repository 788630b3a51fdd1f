"""A test-only kind whose handler is a plain `def`, not a coroutine function: registering it is refused, so loading
this module fails, in the test kit as in a worker (`--handlers tests.support.not_async_kind`)."""

from __future__ import annotations

from schemas.events import Event
from workers import HandlerContext, handles

KIND = "TEST_NOT_ASYNC"


class NotAsync(Event, tag=KIND):
    token: str


def on_not_async(event: NotAsync, ctx: HandlerContext) -> None:
    """Would fail at every attempt, at `await`: refused when it is registered."""


handles(NotAsync)(on_not_async)  # type: ignore[arg-type]
