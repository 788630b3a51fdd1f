"""Declaring the topology of `schemas.topology` on a channel, idempotently, by the gateway and the workers alike.

With the deployment's least-privilege broker users (`infra.permissions`) neither may declare it: the broker set-up
did, and they check that it is there."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import aio_pika
import aiormq
import structlog
from pamqp.common import FieldTable

from schemas import topology

log = structlog.get_logger("infra.declare")


class TopologyMismatch(Exception):
    """What the broker already has differs from what the settings ask for; the message names the setting."""


class TopologyMissing(Exception):
    """A queue or exchange this process's broker user may not declare does not exist: the set-up has not run."""


async def declare_core(channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractExchange:
    """Exchanges, the unrouted, invalid and unverified queues. Idempotent; returns the events exchange."""
    unrouted = await channel.declare_exchange(topology.UNROUTED_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    events = await channel.declare_exchange(
        topology.EVENTS_EXCHANGE,
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": topology.UNROUTED_EXCHANGE},
    )
    unrouted_queue = await channel.declare_queue(
        topology.UNROUTED_QUEUE, durable=True, arguments=_table(topology.QUORUM)
    )
    await unrouted_queue.bind(unrouted, routing_key="")
    invalid_queue = await channel.declare_queue(topology.INVALID_QUEUE, durable=True, arguments=_table(topology.QUORUM))
    await invalid_queue.bind(events, routing_key=topology.INVALID_ROUTING_KEY)
    unverified_queue = await channel.declare_queue(
        topology.UNVERIFIED_QUEUE, durable=True, arguments=_table(topology.QUORUM)
    )
    await unverified_queue.bind(events, routing_key=topology.UNVERIFIED_ROUTING_KEY)
    to_queue = await channel.declare_exchange(topology.TO_QUEUE_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    for holding in (unrouted_queue, invalid_queue, unverified_queue):
        await holding.bind(to_queue, routing_key=holding.name)
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
    dead = await channel.declare_queue(topology.dead_queue(kind), durable=True, arguments=_table(topology.QUORUM))
    try:
        queue = await channel.declare_queue(
            topology.kind_queue(kind),
            durable=True,
            arguments=_table(topology.kind_queue_arguments(kind, delivery_limit)),
        )
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        raise TopologyMismatch(
            f"HC_DELIVERY_LIMIT={delivery_limit}: the broker already has {topology.kind_queue(kind)} with other "
            f"arguments ({error.args[0] if error.args else error}); give the gateway and every worker the same "
            "HC_DELIVERY_LIMIT, or delete the queue once it is empty"
        ) from None
    await queue.bind(topology.EVENTS_EXCHANGE, routing_key=topology.routing_key(kind))
    for by_name in (queue, dead):  # the operator tools' way in (replay, keep in place)
        await by_name.bind(topology.TO_QUEUE_EXCHANGE, routing_key=by_name.name)
    for delay in retry_delays:
        await declare_retry_queue(channel, kind, delay)
    return queue


async def declare_retry_queue(channel: aio_pika.abc.AbstractChannel, kind: str, delay: float) -> None:
    """One retry queue of a kind, alone: what a retry needs, without declaring the kind's whole topology again."""
    await channel.declare_queue(
        topology.retry_queue(kind, delay), durable=True, arguments=_table(topology.retry_queue_arguments(kind, delay))
    )


async def declare_topology(
    connection: aio_pika.abc.AbstractConnection,
    kinds: Iterable[str],
    delivery_limit: int = topology.DEFAULT_DELIVERY_LIMIT,
    retry_delays: Callable[[str], tuple[float, ...]] = lambda kind: (),
) -> None:
    """The core and each kind's queues, on a channel of their own. When the broker refuses (a least-privilege user,
    README "Broker users"), check instead that the set-up declared them, and declare only the retry queues.

    Raises TopologyMissing when one is not there, TopologyMismatch as `declare_kind` does."""
    kinds = list(kinds)
    channel = await connection.channel()
    try:
        await declare_core(channel)
        for kind in kinds:
            await declare_kind(channel, kind, delivery_limit, retry_delays(kind))
        return
    except aiormq.exceptions.ChannelAccessRefused:
        pass  # the channel is closed by the refusal
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    await _check_exists(connection, kinds)
    channel = await connection.channel()
    try:
        for kind in kinds:
            for delay in retry_delays(kind):
                await declare_retry_queue(channel, kind, delay)
    finally:
        await channel.close()
    log.info("topology declared by the broker set-up, found in place")


async def _check_exists(connection: aio_pika.abc.AbstractConnection, kinds: list[str]) -> None:
    """Passive declares (no permission needed); a missing name closes the channel, which ends the check."""
    queues = [topology.INVALID_QUEUE, topology.UNVERIFIED_QUEUE, topology.UNROUTED_QUEUE]
    queues += [name for kind in kinds for name in (topology.kind_queue(kind), topology.dead_queue(kind))]
    channel = await connection.channel()
    name = topology.EVENTS_EXCHANGE
    try:
        await channel.get_exchange(name)
        for name in queues:
            await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise TopologyMissing(
            f"{name} does not exist, and this broker user may not declare it: run hypercard-broker-setup "
            "(with --kind for a kind of your own)"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


def _table(arguments: topology.QueueArguments) -> FieldTable:
    """The arguments as aio-pika's type names them (a dict is invariant in its values: the copy is the cast)."""
    return dict(arguments)
