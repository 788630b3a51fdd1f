"""What came of one delivery: the one outcome type from a handler's result to the canonical log line, the metrics
and the frame its message gets."""

from __future__ import annotations

from enum import StrEnum

from workers.acks import Fate


class Outcome(StrEnum):
    """How a delivery ended, named in its canonical log line and counted once, by `DeliveryRunner.finish`."""

    HANDLED = "handled"
    """Its handler ran and committed, together with its inbox row: acked."""
    DUPLICATE = "duplicate"
    """Its inbox key was claimed before (a platform retry, a redelivery): acked, no effect."""
    SKIPPED = "skipped"
    """Its handler raised Skip: acked, its transaction rolled back."""
    RETRIED = "retried"
    """It failed; a copy with the next attempt number is stored in a retry queue: acked."""
    DEAD_LETTERED = "dead_lettered"
    """GiveUp, out of attempts, a bad `attempt` header, or a bug in the kind's `idempotency_key`: a copy with the
    reason is stored in hypercard.<kind>.dead: acked."""
    QUARANTINED = "quarantined"
    """Its body is not its kind (an older gateway, a direct publish): a copy with the reason (`validation_error`,
    msgspec's `$.path`) is stored in hypercard.invalid, as the gateway keeps an invalid event: acked."""
    RETURNED = "returned"
    """PostgreSQL did not answer: a copy went back to the tail of its own queue, unchanged, and the original was
    acked, so the outage does not count towards HC_DELIVERY_LIMIT."""
    LEFT_FOR_REDELIVERY = "left_for_redelivery"
    """Requeued (its copy was refused, or something failed around it), or its channel closed: the broker delivers it
    again; the inbox makes that harmless if it had been handled."""
    CUT_OFF = "cut_off"
    """The shutdown grace ran out while it was being handled: left unacked, the broker redelivers it."""

    @property
    def fate(self) -> Fate | None:
        """The frame its message gets; None: none at all (the channel's closing returns it)."""
        if self is Outcome.CUT_OFF:
            return None
        return Fate.REQUEUE if self is Outcome.LEFT_FOR_REDELIVERY else Fate.ACK
