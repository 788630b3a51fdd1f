"""How a handler says what should happen to its message. The runtime maps each to ack, retry or dead-letter.

Any other exception is a retryable failure, and so is a handler that runs past its timeout."""

from __future__ import annotations


class HandlerError(Exception):
    """Base of the outcomes a handler can signal."""


class Retry(HandlerError):
    """Try again later: after `delay` seconds, or the kind's next step of the retry schedule."""

    def __init__(self, message: str = "retry requested", delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class GiveUp(HandlerError):
    """Never going to work: dead-letter now, to hypercard.<kind>.dead, with this reason."""


class Skip(HandlerError):
    """Nothing to do: ack without effect (the handler's transaction is rolled back)."""
