"""Declaring the topology of `schemas.topology` on a channel, idempotently, by the gateway and the workers alike."""

from __future__ import annotations

import aio_pika
import aiormq

from schemas import topology


class TopologyMismatch(Exception):
    """What the broker already has differs from what the settings ask for; the message names the setting."""


async def declare_core(channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractExchange:
    """Exchanges, the unrouted, invalid and unverified queues. Idempotent; returns the events exchange."""
    unrouted = await channel.declare_exchange(topology.UNROUTED_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    events = await channel.declare_exchange(
        topology.EVENTS_EXCHANGE,
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": topology.UNROUTED_EXCHANGE},
    )
    unrouted_queue = await channel.declare_queue(topology.UNROUTED_QUEUE, durable=True, arguments=topology.QUORUM)
    await unrouted_queue.bind(unrouted, routing_key="")
    invalid_queue = await channel.declare_queue(topology.INVALID_QUEUE, durable=True, arguments=topology.QUORUM)
    await invalid_queue.bind(events, routing_key=topology.INVALID_ROUTING_KEY)
    unverified_queue = await channel.declare_queue(topology.UNVERIFIED_QUEUE, durable=True, arguments=topology.QUORUM)
    await unverified_queue.bind(events, routing_key=topology.UNVERIFIED_ROUTING_KEY)
    return events


async def declare_kind(
    channel: aio_pika.abc.AbstractChannel,
    kind: str,
    delivery_limit: int = topology.DEFAULT_DELIVERY_LIMIT,
    retry_delays: tuple[float, ...] = (),
) -> aio_pika.abc.AbstractQueue:
    """A kind's queue, bound to the events exchange, with its dead queue and retry queues. Idempotent.

    Raises TopologyMismatch when the kind's queue exists with another delivery limit (the gateway and the workers
    declare it alike, so they must agree on HC_DELIVERY_LIMIT)."""
    await channel.declare_queue(topology.dead_queue(kind), durable=True, arguments=topology.QUORUM)
    try:
        queue = await channel.declare_queue(
            topology.kind_queue(kind), durable=True, arguments=topology.kind_queue_arguments(kind, delivery_limit)
        )
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        raise TopologyMismatch(
            f"HC_DELIVERY_LIMIT={delivery_limit}: the broker already has {topology.kind_queue(kind)} with other "
            f"arguments ({error.args[0] if error.args else error}); give the gateway and every worker the same "
            "HC_DELIVERY_LIMIT, or delete the queue once it is empty"
        ) from None
    await queue.bind(topology.EVENTS_EXCHANGE, routing_key=topology.routing_key(kind))
    for delay in retry_delays:
        await declare_retry_queue(channel, kind, delay)
    return queue


async def declare_retry_queue(channel: aio_pika.abc.AbstractChannel, kind: str, delay: float) -> None:
    """One retry queue of a kind, alone: what a retry needs, without declaring the kind's whole topology again."""
    await channel.declare_queue(
        topology.retry_queue(kind, delay), durable=True, arguments=topology.retry_queue_arguments(kind, delay)
    )
