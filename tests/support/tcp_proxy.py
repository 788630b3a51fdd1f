"""A TCP proxy the tests control, between an app and RabbitMQ: hold the broker's replies, cut or reset links."""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.broker import TEST_AMQP_PORT, amqp_url


class TcpProxy:
    def __init__(self, target_host: str = "127.0.0.1", target_port: int = TEST_AMQP_PORT) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task] = set()  # one task per proxied connection
        self.downstream_open = asyncio.Event()  # broker -> client flows only while set
        self.downstream_open.set()
        self.refuse = False

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return amqp_url(self.port)

    def hold_replies(self) -> None:
        """Bytes from the broker stop reaching the client (confirms never arrive): a half-open link."""
        self.downstream_open.clear()

    def release_replies(self) -> None:
        self.downstream_open.set()

    def reset_all(self) -> None:
        """Abort every proxied connection (TCP reset)."""
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        """Stop accepting, reset every link, and wait until each connection's task has ended: a task still running
        when its event loop closes is cancelled, and Python 3.11 then prints a CancelledError traceback."""
        if self._server is not None:
            self._server.close()
        self.release_replies()  # a link whose replies are held would otherwise wait at the gate for ever
        for _ in range(50):  # a link whose broker side was still opening registers after a reset: reset again
            self.reset_all()
            if not self._connections:
                break
            await asyncio.wait(self._connections, timeout=0.1)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        connection = asyncio.current_task()
        assert connection is not None
        self._connections.add(connection)
        try:
            await self._proxy(client_reader, client_writer)
        finally:
            self._connections.discard(connection)

    async def _proxy(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            client_writer.transport.abort()
            return
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update({client_writer, broker_writer})
        await asyncio.gather(
            self._pipe(client_reader, broker_writer, None),
            self._pipe(broker_reader, client_writer, self.downstream_open),
            return_exceptions=True,
        )
        for writer in (client_writer, broker_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        while data := await reader.read(65536):
            if gate is not None:
                await gate.wait()
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
