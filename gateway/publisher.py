"""Confirmed, persistent publishes to RabbitMQ over one long-lived connection that reconnects in the background."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import aiormq
import structlog
from aiormq import spec
from aiormq.abc import ConfirmationFrameType

from gateway.errors import BrokerUnavailable
from infra import broker, declare
from schemas import topology
from schemas.events import KNOWN_KINDS

log = structlog.get_logger("gateway.publisher")


class Publisher:
    """Owns the broker connection. `publish_confirmed` returns only once the broker confirmed the message.

    While the broker is unreachable, publishes fail at once (the request answers 503 and the platform retries);
    a background task reconnects, trying each configured node in turn, and declares the topology again."""

    def __init__(
        self,
        urls: list[str],
        publish_timeout: float,
        delivery_limit: int = topology.DEFAULT_DELIVERY_LIMIT,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 5.0,
    ) -> None:
        self.publish_timeout = publish_timeout
        self.delivery_limit = delivery_limit
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._ready = asyncio.Event()
        self._link = broker.BrokerConnection(
            urls,
            self._declare,
            on_lost=self._not_ready,
            timeout=max(publish_timeout, 1.0),
            first_delay=reconnect_delay,
            max_delay=max_reconnect_delay,
            name="publisher-connection",
        )

    @property
    def ready(self) -> bool:
        """Connected, with the topology declared."""
        return self._ready.is_set()

    async def start(self, wait: float | None = None) -> None:
        """Start connecting in the background; optionally wait up to `wait` seconds for the first connection."""
        self._link.start()
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    async def close(self) -> None:
        await self._link.close()

    async def publish_confirmed(self, body: bytes, routing_key: str, properties: spec.Basic.Properties) -> None:
        """Publish persistent and mandatory to hypercard.events; raise BrokerUnavailable unless the broker acked."""
        channel = self._channel
        if channel is None or not self.ready:
            raise BrokerUnavailable("message broker unavailable; the event was not stored, send it again")
        try:
            # mandatory: a message that reaches no queue comes back as a return, never an ack of nothing. Unknown
            # kinds still reach hypercard.unrouted through the alternate exchange.
            result: ConfirmationFrameType | None = await channel.basic_publish(
                body,
                exchange=topology.EVENTS_EXCHANGE,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                timeout=self.publish_timeout,
                # Don't hold the channel's lock until the frames are flushed: the next publish goes out at once and
                # confirms are pipelined. The confirm, awaited below, is what says the message is stored.
                wait=False,
            )
        except TimeoutError:
            raise BrokerUnavailable("the broker did not confirm the event in time; send it again") from None
        except aiormq.exceptions.PublishError:
            # Returned: no queue took it, so part of the topology is gone (a queue deleted by hand). Reconnecting
            # declares it all again; until then pushes answer 503 and the platform resends.
            log.warning("event returned unrouted; declaring the topology again", routing_key=routing_key)
            self._link.lost()
            raise BrokerUnavailable("the broker returned the event unrouted; send it again") from None
        except aiormq.exceptions.DeliveryError:
            # A nack: the queue could not take the message. After a cluster node is lost, RabbitMQ 3.10 was seen
            # to nack one quorum queue's publishes on the channel that failed over until the channel is reopened,
            # while new channels were accepted at once: reconnect rather than keep publishing into the nacks.
            self._link.lost()
            raise BrokerUnavailable("the broker refused the event; send it again") from None
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as error:
            log.warning("publish failed", error=type(error).__name__)
            self._link.lost()
            raise BrokerUnavailable("the broker connection failed; the event was not stored, send it again") from None
        if not isinstance(result, spec.Basic.Ack):
            raise BrokerUnavailable("the broker did not accept the event; send it again")

    async def _declare(self, connection: aio_pika.abc.AbstractConnection) -> None:
        await declare.declare_topology(connection, sorted(KNOWN_KINDS), self.delivery_limit)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._link.watch(channel)
        self._channel = await channel.get_underlay_channel()
        self._ready.set()
        log.info("broker connected, topology declared", node=str(connection.url.with_user(None)))

    def _not_ready(self) -> None:
        self._ready.clear()
        self._channel = None
