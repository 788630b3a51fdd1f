"""Ports and readiness for servers the tests start."""

from __future__ import annotations

import socket
import time
import urllib.request


def free_port() -> int:
    """A port nothing listens on now: for a server about to start, or a broker address that refuses connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(port: int, timeout: float = 15) -> None:
    """Block until the gateway on `port` answers 200 on /readyz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the gateway did not become ready")
