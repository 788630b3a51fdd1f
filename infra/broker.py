"""Connecting to RabbitMQ and staying connected. HC_AMQP_URL may list several cluster nodes; the first that answers
is used, and after a loss the next attempt starts again from the first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aio_pika
import structlog

log = structlog.get_logger("broker")


async def connect(urls: list[str], timeout: float = 10.0) -> aio_pika.abc.AbstractConnection:
    """A connection to the first node of `urls` that accepts one; raises the last node's error if none does."""
    last_error: Exception | None = None
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=timeout)
        except Exception as error:  # refused, timed out, bad credentials: try the next node
            last_error = error
    raise last_error or ConnectionError("no broker URL configured (HC_AMQP_URL)")


async def keep_connected(
    setup: Callable[[], Awaitable[None]],
    drop: Callable[[], Awaitable[None]],
    lost: asyncio.Event,
    *,
    first_delay: float = 0.5,
    max_delay: float = 5.0,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Run `setup` (connect, declare, consume...), wait until `lost` is set (by a close callback or a failed
    operation), `drop` what is left, and start over; failed set-ups back off exponentially. Runs until cancelled
    or until `stopping()` says so after a loss: a shutting-down worker must not start consuming again."""
    delay = first_delay
    while not stopping():
        lost.clear()
        try:
            await setup()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # any failure to connect or declare: try again later, the first node first
            log.warning("broker connection failed", error=f"{type(error).__name__}: {error}", retry_in=delay)
            await drop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
            continue
        delay = first_delay
        await lost.wait()
        log.warning("broker connection lost; reconnecting")
        await drop()
