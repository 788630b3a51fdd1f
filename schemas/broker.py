"""Connecting to RabbitMQ: HC_AMQP_URL may list several cluster nodes; the first that answers is used."""

from __future__ import annotations

import aio_pika


async def connect(urls: list[str], timeout: float = 10.0) -> aio_pika.abc.AbstractConnection:
    """A connection to the first node of `urls` that accepts one; raises the last node's error if none does."""
    last_error: Exception | None = None
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=timeout)
        except Exception as error:  # refused, timed out, bad credentials: try the next node
            last_error = error
    raise last_error or ConnectionError("no broker URL configured (HC_AMQP_URL)")
