"""Connecting to RabbitMQ and staying connected. HC_AMQP_URL may list several cluster nodes; the first that answers
is used, and after a loss the next attempt starts again from the first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import aiormq
import structlog
from yarl import URL

from infra.backoff import Backoff

log = structlog.get_logger("broker")


class VhostRefused(aiormq.exceptions.AMQPError):
    """The broker closed the connection when asked to open the URL's vhost: it does not exist, or the user has no
    permission in it (aiormq reports either as an unexpected frame, the broker's reason dropped)."""

    reason = "the broker refused vhost %r"

    def __init__(self, vhost: str) -> None:
        super().__init__(vhost)
        self.vhost = vhost


def _refused_vhost(error: Exception) -> bool:
    return isinstance(error, aiormq.exceptions.InvalidFrameError) and all(
        name in str(error) for name in ("Connection.OpenOk", "Connection.Close")
    )


async def connect(urls: list[str], timeout: float = 10.0) -> aio_pika.abc.AbstractConnection:
    """A connection to the first node of `urls` that accepts one; raises the last node's error if none does."""
    last_error: Exception | None = None
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=timeout)
        except Exception as error:  # refused, timed out, bad credentials: try the next node
            last_error = VhostRefused(URL(url).path[1:] or "/") if _refused_vhost(error) else error
    raise last_error or ConnectionError("no broker URL configured (HC_AMQP_URL)")


def connection_url(connection: aio_pika.abc.AbstractConnection) -> URL:
    """The URL of the node a connection reached (aio-pika's connections keep it; their abstract type does not)."""
    assert isinstance(connection, aio_pika.Connection)
    return connection.url


@contextlib.asynccontextmanager
async def confirming_channel(urls: list[str]) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel with publisher confirms on a connection of its own, for a one-shot operator tool (replay,
    inspect): every publish is confirmed and an unroutable one raises."""
    connection = await connect(urls)
    try:
        yield await connection.channel(publisher_confirms=True, on_return_raises=True)
    finally:
        await connection.close()


class BrokerConnection:
    """One long-lived broker connection, set up again after every loss: the lifecycle the gateway's publisher and
    the workers' consumers share.

    `setup(connection)` opens channels and declares what its owner needs; each channel it opens goes through
    `watch`, so that its closing counts as a loss too. `on_lost` runs whenever the connection or a watched channel
    goes away (its owner stops publishing or consuming until `setup` has run again). An owner whose operation
    failed calls `lost()`. `stopping()` true after a loss: no new set-up (a worker shutting down)."""

    def __init__(
        self,
        urls: list[str],
        setup: Callable[[aio_pika.abc.AbstractConnection], Awaitable[None]],
        *,
        on_lost: Callable[[], None] = lambda: None,
        timeout: float = 10.0,
        first_delay: float = 0.5,
        max_delay: float = 5.0,
        stopping: Callable[[], bool] = lambda: False,
        name: str = "broker-connection",
    ) -> None:
        self.urls = urls
        self._setup = setup
        self._on_lost = on_lost
        self._timeout = timeout
        self._backoff = Backoff(first_delay, max_delay)
        self._stopping = stopping
        self._name = name
        self._lost = asyncio.Event()
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connection(self) -> aio_pika.abc.AbstractConnection | None:
        return self._connection

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_connected(), name=self._name)

    def watch(self, channel: aio_pika.abc.AbstractChannel) -> None:
        channel.close_callbacks.add(self._closed)

    def lost(self) -> None:
        self._on_lost()
        self._lost.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()

    async def _keep_connected(self) -> None:
        """Connect and set up, wait for a loss, drop what is left, and start over; failed set-ups back off
        exponentially, with full jitter. Runs until cancelled, or until `stopping()` says so after a loss: a
        shutting-down worker must not start consuming again."""
        while not self._stopping():
            self._lost.clear()
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure to connect or declare: try again later, the first node first
                wait = self._backoff.next_wait()  # jittered: the processes that lost the broker together spread out
                log.warning("broker connection failed", error=f"{type(error).__name__}: {error}",
                            retry_in=round(wait, 2))  # fmt: skip
                await self._drop()
                await asyncio.sleep(wait)
                continue
            self._backoff.reset()
            await self._lost.wait()
            log.warning("broker connection lost; reconnecting")
            await self._drop()

    async def _connect(self) -> None:
        connection = await connect(self.urls, timeout=self._timeout)
        self._connection = connection
        connection.close_callbacks.add(self._closed)
        await self._setup(connection)

    def _closed(self, *_: object) -> None:
        self.lost()

    async def _drop(self) -> None:
        self._on_lost()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close_callbacks.discard(self._closed)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5.0)
