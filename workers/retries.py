"""Retries through per-kind delay queues (TTL, then dead-lettered back to the kind's queue) and dead-lettering.

A copy is published with a confirm before the original is acked: a crash in between gives a duplicate, which the
inbox absorbs, never a loss."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import aio_pika
import structlog

from infra import declare
from infra.redaction import scrub
from schemas import topology

log = structlog.get_logger("workers.retries")


async def ack(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """Ack; if the channel is gone the broker redelivers the message, and the inbox makes that harmless."""
    with contextlib.suppress(Exception):
        await message.ack()


def copy_for_republish(message: aio_pika.abc.AbstractIncomingMessage, headers: dict) -> aio_pika.Message:
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


def schedule_step(delay: float, delays: tuple[float, ...]) -> float:
    """A handler's `Retry(delay=x)` rounded up to a step of the kind's schedule (the longest step at most): each
    delay has a queue of its own, so the number of retry queues stays bounded by the schedule."""
    return min((step for step in delays if step >= delay), default=max(delays))


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
        error_type: str,
        error_message: str,
        delay: float | None = None,
    ) -> bool:
        """Schedule attempt `attempt + 1`; past the schedule's end, dead-letter. True when a retry was scheduled."""
        if attempt > len(delays):
            await self.dead_letter(message, kind, error_type, error_message, attempt)
            return False
        delay = delays[attempt - 1] if delay is None else schedule_step(delay, delays)
        queue = topology.retry_queue(kind, delay)
        if queue not in self._declared:
            await declare.declare_retry_queue(self.channel, kind, delay)
            self._declared.add(queue)
        headers = {"attempt": attempt + 1, "last_error_type": error_type, "last_error": scrub(error_message)[:500]}
        if await self._republish(message, queue, headers):
            log.info("retry scheduled", next_attempt=attempt + 1, delay_seconds=delay)
            return True
        return False

    async def dead_letter(
        self,
        message: aio_pika.abc.AbstractIncomingMessage,
        kind: str,
        error_type: str,
        error_message: str,
        attempts: int,
    ) -> None:
        headers = {
            "error_type": error_type,
            "error_message": scrub(error_message)[:1000],
            "attempts": attempts,
            "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        if await self._republish(message, topology.dead_queue(kind), headers):
            log.warning("dead-lettered", error_type=error_type, attempts=attempts)

    async def _republish(self, message: aio_pika.abc.AbstractIncomingMessage, queue: str, extra: dict) -> bool:
        copy = copy_for_republish(message, {**(message.headers or {}), **extra})
        try:
            await self.channel.default_exchange.publish(copy, routing_key=queue, mandatory=True, timeout=10)
        except Exception as error:
            # Not stored elsewhere: leave the original unacked, so it comes back (on reconnect, or by requeue).
            log.warning("could not republish; requeueing", queue=queue, error=type(error).__name__)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return False
        await ack(message)
        return True
