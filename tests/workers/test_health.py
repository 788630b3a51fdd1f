"""A worker's health endpoint (workers/health.py) answers from what its event loop does, not from a thread of its
own (issue 28, finding 4): a stuck loop fails /livez while the metrics port, served by prometheus_client's thread,
keeps answering; /readyz says whether the worker consumes."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.support.broker import AMQP_URL
from tests.support.database import DATABASE_URL
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.network import free_port
from workers.health import WorkerHealth

pytestmark = pytest.mark.broker
BIN = os.path.dirname(sys.executable)
# The health server's bounds: seconds a connection has to send its request, connections held at once.
HEALTH_READ_TIMEOUT = 2.0
HEALTH_CONNECTIONS = 64


def probe(port: int, path: str) -> int:
    """The status a probe sees (0: no answer within 1 s)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code
    except OSError:
        return 0


async def test_a_loop_frozen_for_3_s_fails_livez_while_the_metrics_port_answers(make_worker):
    runtime = await make_worker("TEST_TRACKED")
    metrics_port, health_port = free_port(), free_port()
    runtime.metrics.serve(metrics_port)
    health = WorkerHealth(lambda: runtime.consuming, stale_after=1.0)
    health.start(health_port)
    try:
        assert await asyncio.to_thread(probe, health_port, "/livez") == 200
        assert await asyncio.to_thread(probe, health_port, "/readyz") == 200
        seen: dict[str, int] = {}

        def while_frozen() -> None:
            time.sleep(2.0)
            seen.update(livez=probe(health_port, "/livez"), readyz=probe(health_port, "/readyz"))
            seen["metrics"] = probe(metrics_port, "/metrics")

        watcher = threading.Thread(target=while_frozen)
        watcher.start()
        time.sleep(3.0)  # noqa: ASYNC251 (the point: a handler that blocks the loop)
        watcher.join()
        assert seen == {"livez": 503, "readyz": 503, "metrics": 200}
        await asyncio.sleep(1.0)
        assert await asyncio.to_thread(probe, health_port, "/livez") == 200, "fresh again once the loop runs"
    finally:
        health.stop()


async def test_readyz_is_503_while_not_consuming_and_livez_stays_200(make_worker):
    runtime = await make_worker("TEST_TRACKED")
    port = free_port()
    health = WorkerHealth(lambda: runtime.consuming, stale_after=1.0)
    health.start(port)
    try:
        assert await asyncio.to_thread(probe, port, "/readyz") == 200
        await runtime.stop()  # consumers cancelled: what a database outage's pause does too
        assert await asyncio.to_thread(probe, port, "/readyz") == 503
        assert await asyncio.to_thread(probe, port, "/livez") == 200
        assert await asyncio.to_thread(probe, port, "/other") == 404
    finally:
        health.stop()


def test_hypercard_worker_serves_livez_and_readyz_on_hc_health_port(amqp):
    port = free_port()
    env = {
        **os.environ, "HC_AMQP_URL": AMQP_URL, "HC_DATABASE_URL": DATABASE_URL, "HC_ID_SECRET": TEST_ID_SECRET,
        "HC_METRICS_PORT": "0", "HC_HEALTH_PORT": str(port), "HC_SHUTDOWN_GRACE": "1",
    }  # fmt: skip
    worker = subprocess.Popen(
        [os.path.join(BIN, "hypercard-worker"), "RECHARGE"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while probe(port, "/readyz") != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert probe(port, "/readyz") == 200 and probe(port, "/livez") == 200
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)


def held_open(connections: list[socket.socket]) -> int:
    """How many of `connections` the server still holds open (those it closed read as EOF or a reset)."""
    held = 0
    for connection in connections:
        ready, _, _ = select.select([connection], [], [], 0)
        if not ready:
            held += 1
            continue
        try:
            if connection.recv(1, socket.MSG_PEEK):
                held += 1
        except OSError:
            pass
    return held


def test_400_idle_or_half_sent_connections_neither_block_livez_nor_stay_held(amqp):
    """200 connections that send nothing and 200 that send half a request: /livez still answers within its 1 s
    probe timeout, the worker holds at most 64 of them (the oldest is let go for a new one), and each is closed
    once it has had 2 s to send its request; the worker's threads do not
    grow with them."""
    port = free_port()
    env = {
        **os.environ, "HC_AMQP_URL": AMQP_URL, "HC_DATABASE_URL": DATABASE_URL, "HC_ID_SECRET": TEST_ID_SECRET,
        "HC_METRICS_PORT": "0", "HC_HEALTH_PORT": str(port), "HC_SHUTDOWN_GRACE": "1",
    }  # fmt: skip
    worker = subprocess.Popen(
        [os.path.join(BIN, "hypercard-worker"), "RECHARGE"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    connections: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while probe(port, "/readyz") != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        threads_before = len(os.listdir(f"/proc/{worker.pid}/task"))
        for n in range(400):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            if n % 2:
                connection.sendall(b"GET /livez HTTP/1.1\r\nHost: worker\r\n")  # and never the blank line
            connections.append(connection)
        started = time.monotonic()
        assert probe(port, "/livez") == 200, "a probe behind 400 idle connections"
        assert time.monotonic() - started < 1.0
        time.sleep(0.5)
        threads_during = len(os.listdir(f"/proc/{worker.pid}/task"))
        held_during = held_open(connections)
        time.sleep(HEALTH_READ_TIMEOUT + 1.0)
        held_after = held_open(connections)
        assert probe(port, "/livez") == 200
        figures = f"threads {threads_before} -> {threads_during}, held {held_during} then {held_after} of 400"
        assert threads_during <= threads_before + 2, figures
        assert held_during <= HEALTH_CONNECTIONS, figures
        assert held_after == 0, figures
    finally:
        for connection in connections:
            connection.close()
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
