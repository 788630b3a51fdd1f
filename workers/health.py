"""A worker's health, answered from what its event loop does (HC_HEALTH_PORT): the loop refreshes a heartbeat, and
a small HTTP server on an event loop of its own, in a thread of its own, reads it, so that a stuck loop (a handler
that blocks it) is seen. The metrics port, served by prometheus_client's own thread, answers whatever the loop does.

    GET /livez   200 while the heartbeat is fresh; 503 when the loop has not run for `stale_after` seconds
    GET /readyz  200 while fresh and consuming; 503 while paused for a database outage, reconnecting to the broker,
                 stopping, or stuck

Connections are bounded: each has READ_TIMEOUT seconds to send its request (REQUEST_LIMIT bytes at most) and is
closed once answered; at most MAX_CONNECTIONS are held, the oldest let go for a new one, so that idle or half-sent
connections neither hold threads or memory nor keep a probe out."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable

BEAT_EVERY = 0.5  # seconds between two heartbeats of a running loop
STALE_AFTER = 10.0  # seconds without a heartbeat after which the loop counts as stuck
READ_TIMEOUT = 2.0  # seconds a connection has to send its request line and headers
MAX_CONNECTIONS = 64  # connections held at once; a probe arriving past it takes the oldest one's place
REQUEST_LIMIT = 8192  # bytes of request line and headers


class WorkerHealth:
    """`start(port)` from the running loop; `stop()` at shutdown. `consuming()` is the runtime's own flag."""

    def __init__(self, consuming: Callable[[], bool], *, stale_after: float = STALE_AFTER) -> None:
        self.consuming = consuming
        self.stale_after = stale_after
        self.last_beat = time.monotonic()
        self._beating: asyncio.Task[None] | None = None
        self._server: ProbeServer | None = None

    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < self.stale_after

    def ready(self) -> bool:
        return self.alive() and self.consuming()

    def answer(self, path: str) -> tuple[int, bytes]:
        checks = {"/livez": self.alive, "/readyz": self.ready}
        check = checks.get(path)
        if check is None:
            return 404, b"not found\n"
        if check():
            return 200, b"ok\n"
        return 503, b"loop stuck\n" if not self.alive() else b"not consuming\n"

    def start(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 (probes come from outside the container)
        """Beat on the running loop, answer probes on `port` (0: not served); OSError if the port is in use."""
        if not port:
            return
        self._server = ProbeServer(socket.create_server((host, port), backlog=128), self.answer)
        self.last_beat = time.monotonic()
        self._beating = asyncio.get_running_loop().create_task(self._beat(), name="worker-heartbeat")
        self._server.start()

    def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
        if self._server is not None:
            self._server.stop()

    async def _beat(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self.last_beat = time.monotonic()
                await asyncio.sleep(BEAT_EVERY)


REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


class ProbeServer:
    """An HTTP/1.0-style server of one answer per connection, on an event loop in a thread of its own."""

    def __init__(self, listener: socket.socket, answer: Callable[[str], tuple[int, bytes]]) -> None:
        self._listener = listener
        self._answer = answer
        self._loop = asyncio.new_event_loop()
        self._open: dict[asyncio.StreamWriter, None] = {}  # in the order they arrived, the oldest first
        self._thread = threading.Thread(target=self._run, name="worker-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._listener.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, sock=self._listener, limit=REQUEST_LIMIT)
        )
        try:
            self._loop.run_forever()
        finally:
            server.close()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open[writer] = None
        while len(self._open) > MAX_CONNECTIONS:
            oldest = next(iter(self._open))
            self._open.pop(oldest)
            oldest.transport.abort()
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            status, body = self._answer(path.decode("latin-1")) if method == b"GET" else (404, b"not found\n")
            head_lines = [f"HTTP/1.1 {status} {REASONS[status]}", "Content-Type: text/plain",
                          f"Content-Length: {len(body)}", "Connection: close"]  # fmt: skip
            writer.write(("\r\n".join(head_lines) + "\r\n\r\n").encode() + body)
            async with asyncio.timeout(READ_TIMEOUT):
                await writer.drain()
            writer.close()  # after the answer: a FIN, the answer read first
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # too slow, too long, or gone: closed without an answer
        finally:
            self._open.pop(writer, None)
            if not writer.is_closing():
                writer.transport.abort()
