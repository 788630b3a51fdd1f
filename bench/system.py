"""The processes and services a benchmark phase runs against: start and stop, CPU and memory, queue depth."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aio_pika
import aiohttp

from infra import declare
from schemas import topology
from schemas.events import KNOWN_KINDS

# The benchmark's own vhost: it purges queues, and must never touch what an operator keeps in `/`.
BENCH_VHOST = "hypercard_bench"
AMQP_URL = f"amqp://guest:guest@127.0.0.1:5672/{BENCH_VHOST}"
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


@contextmanager
def bench_vhost(declare_topology: bool = True) -> Iterator[None]:
    """The benchmark's vhost, made empty for the run and deleted with its queues when the run ends, whatever the
    outcome: quorum queues left behind hold the broker's file handles (README, Tests: the broker's limits)."""
    delete_vhost()
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", BENCH_VHOST], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", BENCH_VHOST, "guest", ".*", ".*", ".*"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        if declare_topology:
            asyncio.run(_declare_topology())
        yield
    finally:
        delete_vhost()


def delete_vhost() -> None:
    vhosts = subprocess.run(["rabbitmqctl", "-q", "list_vhosts", "name"], capture_output=True, text=True, check=True)
    if BENCH_VHOST in vhosts.stdout.split():
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", BENCH_VHOST], check=True, capture_output=True)


async def _declare_topology() -> None:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await declare.declare_core(channel)
    for kind in KNOWN_KINDS:
        await declare.declare_kind(channel, kind)
    await connection.close()


def wait_ready(port: int, path: str = "/readyz", timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing ready on port {port}")


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [pid, *(grandchild for kid in kids for grandchild in process_tree(kid))]


def peak_rss_mb(pid: int) -> float:
    """The largest peak RSS (VmHWM) among the process and its children."""
    peaks = []
    for member in process_tree(pid):
        status = Path(f"/proc/{member}/status")
        if status.exists():
            found = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
            if found:
                peaks.append(int(found.group(1)) / 1024)
    return max(peaks, default=float("nan"))


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists():
            fields = stat.read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@contextmanager
def running(
    args: list[str],
    env: dict[str, str] | None = None,
    ready_port: int | None = None,
    ready_path: str | None = "/readyz",  # None: ready when the port accepts connections
    output: Path | None = None,
):
    """A process for one phase; its output goes to `output` (else nowhere)."""
    streams = QUIET if output is None else {"stdout": output.open("wb"), "stderr": subprocess.STDOUT}
    process = subprocess.Popen(args, env={**os.environ, **(env or {})}, **streams)
    try:
        if ready_port and ready_path:
            wait_ready(ready_port, ready_path)
        elif ready_port:
            wait_ready_post(ready_port)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


async def purge(extra: tuple[str, ...] = ()) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    for name in [
        *(topology.kind_queue(k) for k in KNOWN_KINDS),
        topology.INVALID_QUEUE,
        topology.UNROUTED_QUEUE,
        topology.UNVERIFIED_QUEUE,
        *extra,
    ]:
        await (await channel.declare_queue(name, passive=True)).purge()
    await connection.close()


async def queue_depth() -> int:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        total = 0
        for kind in KNOWN_KINDS:
            queue = await channel.declare_queue(topology.kind_queue(kind), passive=True)
            total += queue.declaration_result.message_count
        return total
    finally:
        await connection.close()


async def handled_total(ports: list[int]) -> float:
    total = 0.0
    async with aiohttp.ClientSession() as session:
        for port in ports:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as reply:
                text = await reply.text()
            for name in ("hypercard_worker_handled_total", "hypercard_worker_duplicates_total"):
                total += sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} ([\d.e+]+)$", text, re.M))
    return total


def wait_ready_post(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")
