"""Confirmed, persistent publishes to RabbitMQ over one long-lived connection that reconnects in the background."""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq
import structlog
from aiormq import spec
from aiormq.abc import ConfirmationFrameType

from gateway.errors import BrokerUnavailable
from infra import broker, declare
from infra.waiting import wait_for_event
from schemas import topology
from schemas.events import KNOWN_KINDS

log = structlog.get_logger("gateway.publisher")


class BrokerBlocked(Exception):
    """Set on the confirms a blocked connection still waits for: the broker reads nothing until it unblocks."""


class Publisher:
    """Owns the broker connection. `publish_confirmed` returns only once the broker confirmed the message.

    While the broker is unreachable, publishes fail at once (the request answers 503 and the platform retries);
    a background task reconnects, trying each configured node in turn, and declares the topology again. While the
    broker blocks publishers (a memory or disk alarm: `connection.blocked`) publishes fail at once too, and the
    ones already waiting for their confirm are answered then, not after HC_PUBLISH_TIMEOUT."""

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
        self._channel: aiormq.Channel | None = None  # the underlay: its confirmations are read when blocked
        self._ready = asyncio.Event()
        self._blocked: str | None = None
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

    @property
    def blocked(self) -> str | None:
        """Why the broker blocks this connection's publishes (its `connection.blocked` reason), or None."""
        return self._blocked

    async def start(self, wait: float | None = None) -> None:
        """Start connecting in the background; optionally wait up to `wait` seconds for the first connection."""
        self._link.start()
        if wait:
            await wait_for_event(self._ready, wait)

    async def wait_ready(self, timeout: float) -> bool:
        return await wait_for_event(self._ready, timeout)

    async def close(self) -> None:
        await self._link.close()

    async def publish_confirmed(self, body: bytes, routing_key: str, properties: spec.Basic.Properties) -> None:
        """Publish persistent and mandatory to hypercard.events; raise BrokerUnavailable unless the broker acked."""
        channel = self._channel
        if channel is None or not self.ready:
            raise BrokerUnavailable("message broker unavailable; the event was not stored, send it again")
        if self._blocked is not None:
            raise BrokerUnavailable(f"the broker blocks publishing ({self._blocked}); send it again")
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
        except BrokerBlocked as error:
            raise BrokerUnavailable(f"the broker blocks publishing ({error}); send it again") from None
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
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        self._channel = underlay
        self._watch_blocking(connection)
        self._ready.set()
        log.info("broker connected, topology declared", node=str(broker.connection_url(connection).with_user(None)))

    def _not_ready(self) -> None:
        self._ready.clear()
        self._channel = None
        self._blocked = None  # a new connection starts unblocked; the broker says so again on its first publish

    def _watch_blocking(self, connection: aio_pika.abc.AbstractConnection) -> None:
        """Follow `connection.blocked` / `connection.unblocked`. aiormq handles both frames itself (it only logs
        them) and offers no callback, so its two handlers are wrapped on this connection's instance: private,
        name-mangled methods, pinned by tests/gateway/test_broker_alarm.py with a real alarm."""
        underlay = connection.transport.connection if connection.transport else None
        on_blocked = getattr(underlay, "_Connection__handle_connection_blocked", None)
        on_unblocked = getattr(underlay, "_Connection__handle_connection_unblocked", None)
        if on_blocked is None or on_unblocked is None:
            log.warning("cannot follow connection.blocked with this aiormq: pushes wait out HC_PUBLISH_TIMEOUT")
            return

        async def blocked(frame: spec.Connection.Blocked) -> None:
            await on_blocked(frame)
            self._blocked = frame.reason or "resource alarm"
            log.warning("the broker blocks publishing; pushes answer 503", reason=self._blocked)
            # RabbitMQ reads nothing more from this connection: the confirms still awaited would only time out.
            channel = self._channel
            for confirmation in list(channel.confirmations.values()) if channel is not None else ():
                if isinstance(confirmation, asyncio.Future) and not confirmation.done():
                    confirmation.set_exception(BrokerBlocked(self._blocked))

        async def unblocked(frame: spec.Connection.Unblocked) -> None:
            await on_unblocked(frame)
            self._blocked = None
            log.info("the broker unblocked publishing")

        # Ignored: aiormq's name-mangled handlers are private, no attribute its types declare (see the docstring).
        underlay._Connection__handle_connection_blocked = blocked  # type: ignore[union-attr]
        underlay._Connection__handle_connection_unblocked = unblocked  # type: ignore[union-attr]
