"""A worker's health, answered from what its event loop does (HC_HEALTH_PORT): the loop refreshes a heartbeat, and
a small HTTP server in a thread of its own reads it, so that a stuck loop (a handler that blocks it) is seen. The
metrics port, served by prometheus_client's own thread, answers whatever the loop does.

    GET /livez   200 while the heartbeat is fresh; 503 when the loop has not run for `stale_after` seconds
    GET /readyz  200 while fresh and consuming; 503 while paused for a database outage, reconnecting to the broker,
                 stopping, or stuck"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BEAT_EVERY = 0.5  # seconds between two heartbeats of a running loop
STALE_AFTER = 10.0  # seconds without a heartbeat after which the loop counts as stuck


class WorkerHealth:
    """`start(port)` from the running loop; `stop()` at shutdown. `consuming()` is the runtime's own flag."""

    def __init__(self, consuming: Callable[[], bool], *, stale_after: float = STALE_AFTER) -> None:
        self.consuming = consuming
        self.stale_after = stale_after
        self.last_beat = time.monotonic()
        self._beating: asyncio.Task[None] | None = None
        self._server: ThreadingHTTPServer | None = None

    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < self.stale_after

    def ready(self) -> bool:
        return self.alive() and self.consuming()

    def start(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 (probes come from outside the container)
        """Beat on the running loop, answer probes on `port` (0: not served); OSError if the port is in use."""
        if not port:
            return
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self.last_beat = time.monotonic()
        self._beating = asyncio.get_running_loop().create_task(self._beat(), name="worker-heartbeat")
        threading.Thread(target=self._server.serve_forever, name="worker-health", daemon=True).start()

    def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    async def _beat(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self.last_beat = time.monotonic()
                await asyncio.sleep(BEAT_EVERY)


def _handler(health: WorkerHealth) -> type[BaseHTTPRequestHandler]:
    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            checks = {"/livez": health.alive, "/readyz": health.ready}
            check = checks.get(self.path)
            if check is None:
                self._answer(404, b"not found\n")
            elif check():
                self._answer(200, b"ok\n")
            else:
                self._answer(503, b"loop stuck\n" if not health.alive() else b"not consuming\n")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
            """Probes every few seconds are no news: not logged."""

    return Probe
