"""Retries through per-kind delay queues (TTL, then dead-lettered back to the kind's queue) and dead-lettering.

A copy is published with a confirm before the original is acked: a crash in between gives a duplicate, which the
inbox absorbs, never a loss. This module only publishes copies and says whether each was stored; the original's ack
or requeue is `workers.acks`' to send."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import aio_pika
import structlog
from aio_pika.abc import HeadersType
from aiormq.exceptions import PublishError

from infra import declare
from infra.redaction import scrub
from schemas import topology
from workers.outcomes import Outcome

log = structlog.get_logger("workers.retries")


def copy_for_republish(message: aio_pika.abc.AbstractIncomingMessage, headers: HeadersType) -> aio_pika.Message:
    """A persistent copy of a delivered message, with `headers`: what retries, dead-lettering and replay publish."""
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


def due_at(headers: Mapping[str, object]) -> datetime | None:
    """A retry copy's `retry_due_at` header, if it has a readable one (headers are input: never trusted)."""
    value = headers.get("retry_due_at")
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def time_left(headers: Mapping[str, object], step_seconds: float) -> float | None:
    """Seconds until a copy in a retry queue of `step_seconds` is due back, what an operator tool that puts it back
    gives it as its TTL (the queue's would start the whole step again); None when it has no readable
    `retry_due_at`. Never more than the step: the queue's TTL ends it there anyway, and a forged time years away
    would be an expiration the broker refuses by closing the channel."""
    due = due_at(headers)
    if due is None:
        return None
    return min(max(0.0, (due - datetime.now(UTC)).total_seconds()), step_seconds)


def schedule_step(delay: float, delays: tuple[float, ...]) -> float:
    """A handler's `Retry(delay=x)` rounded up to a step of the kind's schedule (the longest step at most): each
    delay has a queue of its own, so the number of retry queues stays bounded by the schedule."""
    return min((step for step in delays if step >= delay), default=max(delays))


def next_retry_delay(attempt: int, delays: tuple[float, ...], requested: float | None = None) -> float | None:
    """How long before attempt `attempt + 1`, after attempt `attempt` failed: the schedule's step for it, or the
    handler's `Retry(delay=requested)` rounded to a step. None past the schedule's end: a dead letter."""
    if attempt > len(delays):
        return None
    return delays[attempt - 1] if requested is None else schedule_step(requested, delays)


def retry_due_at(delay: float, now: datetime) -> str:
    """The `retry_due_at` header: when a copy sent at `now` is due back in its kind's queue. What `hypercard-find`
    reports, and the time it keeps when it puts the copy back (the queue's TTL alone would start the delay again)."""
    return (now + timedelta(seconds=delay)).isoformat(timespec="milliseconds")


class RetryPublisher:
    def __init__(self, channel: aio_pika.abc.AbstractChannel, delivery_limit: int) -> None:
        self.channel = channel
        self.delivery_limit = delivery_limit
        self._declared: set[str] = set()

    async def retry_or_dead_letter(
        self,
        message: aio_pika.abc.AbstractIncomingMessage,
        kind: str,
        delays: tuple[float, ...],
        attempt: int,
        *,
        error_type: str,
        error_message: str,
        delay: float | None = None,
        trace_headers: Mapping[str, str] | None = None,
    ) -> Outcome:
        """Store a copy for attempt `attempt + 1`, past the schedule's end a dead letter: RETRIED or DEAD_LETTERED,
        or LEFT_FOR_REDELIVERY when no copy could be stored. `trace_headers`: the failed attempt's span context
        (infra.spans), added to the copy's headers, whose own `traceparent` (the push's) is kept."""
        delay = next_retry_delay(attempt, delays, requested=delay)
        if delay is None:
            stored = await self.dead_letter(
                message,
                kind,
                error_type=error_type,
                error_message=error_message,
                attempts=attempt,
                trace_headers=trace_headers,
            )
            return Outcome.DEAD_LETTERED if stored else Outcome.LEFT_FOR_REDELIVERY
        queue = topology.retry_queue(kind, delay)
        if not await self._declare_retry_queue(kind, delay):
            return Outcome.LEFT_FOR_REDELIVERY
        headers: HeadersType = {
            "attempt": attempt + 1,
            "last_error_type": error_type,
            "last_error": scrub(error_message)[:500],
            "retry_due_at": retry_due_at(delay, datetime.now(UTC)),
            **(trace_headers or {}),
        }
        if not await self._republish(message, queue, headers, redeclare=(kind, delay)):
            return Outcome.LEFT_FOR_REDELIVERY
        log.info("retry scheduled", next_attempt=attempt + 1, delay_seconds=delay)
        return Outcome.RETRIED

    async def dead_letter(
        self,
        message: aio_pika.abc.AbstractIncomingMessage,
        kind: str,
        *,
        error_type: str,
        error_message: str,
        attempts: int,
        trace_headers: Mapping[str, str] | None = None,
    ) -> bool:
        """Store a copy in hypercard.<kind>.dead with the reason in its headers; True once the broker confirmed it."""
        headers: HeadersType = {
            "error_type": error_type,
            "error_message": scrub(error_message)[:1000],
            "attempts": attempts,
            "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **(trace_headers or {}),
        }
        if not await self._republish(message, topology.dead_queue(kind), headers):
            return False
        log.warning("dead-lettered", error_type=error_type, attempts=attempts)
        return True

    async def quarantine(self, message: aio_pika.abc.AbstractIncomingMessage, reason: str) -> bool:
        """Store a copy in hypercard.invalid with the reason (`validation_error`, as the gateway writes it); True once
        the broker confirmed it."""
        headers: HeadersType = {"validation_error": scrub(reason)[:1000]}
        if not await self._republish(message, topology.INVALID_QUEUE, headers):
            return False
        log.warning("event failed validation; kept in hypercard.invalid", validation_error=scrub(reason)[:500])
        return True

    async def return_to_queue(self, message: aio_pika.abc.AbstractIncomingMessage, kind: str) -> bool:
        """A copy, headers unchanged, at the tail of the kind's own queue; True once confirmed. The original is then
        acked rather than requeued: a requeue raises a quorum queue's delivery count on RabbitMQ 3.x and 4.x up to
        4.2 (from 4.0 with a default limit of 20), and an outage is not the message's fault. A fresh copy starts at
        a delivery count of 0 on every version."""
        return await self._republish(message, topology.kind_queue(kind), {})

    async def _declare_retry_queue(self, kind: str, delay: float) -> bool:
        """This retry queue, once per channel (the kind's topology is declared on connect); False if it could not be."""
        queue = topology.retry_queue(kind, delay)
        if queue in self._declared:
            return True
        try:
            await declare.declare_retry_queue(self.channel, kind, delay)
        except Exception as error:  # the channel closed meanwhile: the original is requeued
            log.warning("could not declare the retry queue", queue=queue, error=type(error).__name__)
            return False
        self._declared.add(queue)
        return True

    async def _republish(
        self,
        message: aio_pika.abc.AbstractIncomingMessage,
        queue: str,
        extra: HeadersType,
        *,
        redeclare: tuple[str, float] | None = None,
    ) -> bool:
        """Publish a copy to `queue`; True once stored. A copy returned because `queue` is gone (an operator
        deleted it) is published once more after declaring the queue again, when it is a retry queue
        (`redeclare`: its kind and delay; the workers' broker user may declare no other)."""
        copy = copy_for_republish(message, {**(message.headers or {}), **extra})
        try:
            try:
                await self._publish(copy, queue)
            except PublishError:
                if redeclare is None:
                    raise
                self._declared.discard(queue)
                log.warning("copy returned: its queue is gone; declaring it again", queue=queue)
                if not await self._declare_retry_queue(*redeclare):
                    return False
                await self._publish(copy, queue)
        except Exception as error:  # not stored: the caller leaves the original for redelivery
            log.warning("could not republish; the original will be requeued", queue=queue, error=type(error).__name__)
            return False
        return True

    async def _publish(self, copy: aio_pika.Message, queue: str) -> None:
        # mandatory: a copy no queue takes is returned (PublishError), not dropped.
        await self.channel.default_exchange.publish(copy, routing_key=queue, mandatory=True, timeout=10)
