"""The tests' own vhost on the real broker, and reading what the gateway and the workers left in its queues.

The suite never declares, purges or deletes anything in the broker's default vhost `/`, where a `make run` on the
same machine keeps its queues and dead letters."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import time
import urllib.request

import aio_pika

from schemas import topology

# HYPERCARD_TEST_VHOST lets two checkouts run their suites side by side on one broker (not an HC_* setting).
TEST_VHOST = os.environ.get("HYPERCARD_TEST_VHOST", "hypercard_test")
# HYPERCARD_TEST_AMQP_PORT (with RABBITMQ_NODENAME for rabbitmqctl) points the suite at another local node.
TEST_AMQP_PORT = int(os.environ.get("HYPERCARD_TEST_AMQP_PORT", "5672"))


def amqp_url(port: int = TEST_AMQP_PORT, vhost: str = TEST_VHOST) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/{vhost}"


AMQP_URL = amqp_url()


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60).stdout


def ensure_test_vhost() -> None:
    """Create the tests' vhost and let guest use it (idempotent)."""
    if TEST_VHOST not in _rabbitmqctl("list_vhosts", "name").split():
        _rabbitmqctl("add_vhost", TEST_VHOST)
    _rabbitmqctl("set_permissions", "-p", TEST_VHOST, "guest", ".*", ".*", ".*")


def delete_test_vhost() -> None:
    """Delete the tests' vhost and every queue in it (idempotent): the suite leaves nothing behind on the broker."""
    if TEST_VHOST == "/":
        raise ValueError("the broker's default vhost / holds an operator's queues: the suite never deletes it")
    if TEST_VHOST in _rabbitmqctl("list_vhosts", "name").split():
        _rabbitmqctl("delete_vhost", TEST_VHOST)


def ensure_management_api(timeout: float = 60) -> None:
    """Switch on the broker's management plugin (as `make dashboards` does; idempotent) and wait until it answers."""
    subprocess.run(["rabbitmq-plugins", "enable", "rabbitmq_management"], check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request("http://127.0.0.1:15672/api/overview")
            request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def operator_dead_letters() -> dict[str, int]:
    """Messages in each hypercard.* queue of the default vhost `/`: what an operator's `make run` keeps there."""
    counts = {}
    for line in _rabbitmqctl("list_queues", "-p", "/", "name", "messages").splitlines():
        name, _, count = line.partition("\t")
        if name.startswith("hypercard.") and count.strip().isdigit():
            counts[name] = int(count)
    return counts


async def take(
    channel: aio_pika.abc.AbstractChannel, queue: str, timeout: float = 5.0
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message now in `queue` (acked), waiting up to `timeout` for the first one."""
    q = await channel.get_queue(queue)
    messages: list[aio_pika.abc.AbstractIncomingMessage] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        message = await q.get(fail=False, no_ack=True)
        if message is not None:
            messages.append(message)
            continue
        if messages or asyncio.get_running_loop().time() > deadline:
            return messages
        await asyncio.sleep(0.05)


async def forget_kind(channel: aio_pika.abc.AbstractChannel, kind: str, delays=(0.2, 0.4, 0.8, 1, 10, 60, 600, 3600)):
    """Delete a user kind's queues (left by an earlier test), so its events go to hypercard.unrouted again."""
    names = [topology.kind_queue(kind), topology.dead_queue(kind), *(topology.retry_queue(kind, d) for d in delays)]
    for name in names:
        await channel.queue_delete(name)
