"""Stopping and starting the machine's RabbitMQ and PostgreSQL for fault tests; always started again."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path


def _run(*args: str, timeout: float = 120) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=timeout)


def rabbitmq_stop() -> None:
    _run("rabbitmqctl", "-q", "shutdown")


def rabbitmq_start() -> None:
    if subprocess.run(["rabbitmqctl", "-q", "status"], capture_output=True, timeout=30).returncode != 0:
        _run("rabbitmq-server", "-detached")
    # Until the Erlang node is up, await_startup itself fails (exit 69): ask again.
    deadline = time.monotonic() + 180
    while subprocess.run(["rabbitmqctl", "-q", "await_startup"], capture_output=True, timeout=180).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not start again")
        time.sleep(1)


def _pg(*action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    _run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", *action)


def postgres_stop() -> None:
    _pg("stop", "-m", "fast")


def postgres_start() -> None:
    if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], timeout=10).returncode != 0:
        _pg("start")


async def outage(stop, start, seconds: float) -> None:
    """Stop a service, keep it down `seconds`, start it again: whatever happens meanwhile."""
    try:
        await asyncio.to_thread(stop)
        await asyncio.sleep(seconds)
    finally:
        await asyncio.to_thread(start)
