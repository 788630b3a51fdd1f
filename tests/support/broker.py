"""Reading what the gateway and the workers left in the real broker's queues."""

from __future__ import annotations

import asyncio

import aio_pika

from schemas import topology


async def take(
    channel: aio_pika.abc.AbstractChannel, queue: str, timeout: float = 5.0
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message now in `queue` (acked), waiting up to `timeout` for the first one."""
    q = await channel.get_queue(queue)
    messages: list[aio_pika.abc.AbstractIncomingMessage] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        message = await q.get(fail=False, no_ack=True)
        if message is not None:
            messages.append(message)
            continue
        if messages or asyncio.get_running_loop().time() > deadline:
            return messages
        await asyncio.sleep(0.05)


async def forget_kind(channel: aio_pika.abc.AbstractChannel, kind: str, delays=(0.2, 0.4, 0.8, 1, 10, 60, 600, 3600)):
    """Delete a user kind's queues (left by an earlier test), so its events go to hypercard.unrouted again."""
    names = [topology.kind_queue(kind), topology.dead_queue(kind), *(topology.retry_queue(kind, d) for d in delays)]
    for name in names:
        await channel.queue_delete(name)
