"""Graceful drain on SIGTERM: /readyz turns 503 first, requests are still served, none is cut, none answered 1 lost."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from gateway.send import generate_keys, load_private_key, sample_body, signed_headers
from schemas import topology
from tests.conftest import take
from tests.gateway.test_cli import wait_until_ready
from tests.gateway.test_publisher import closed_port
from tests.support.processes import gateway_process

pytestmark = pytest.mark.broker


async def test_sigterm_drains_without_cutting_or_losing_requests(tmp_path, amqp):
    private, _ = generate_keys(tmp_path)
    key = load_private_key(private)
    port = closed_port()
    gateway = gateway_process(tmp_path, port, {"HC_DRAIN_SECONDS": "1.5"})
    base = f"http://127.0.0.1:{port}"
    body = sample_body("consume")
    answered_1 = 0
    answered_1_while_draining = 0
    sigterm_sent = asyncio.Event()
    refused_connections = 0
    readiness: list[int] = []
    try:
        await asyncio.to_thread(wait_until_ready, port)
        async with aiohttp.ClientSession() as session:

            async def push() -> None:
                nonlocal answered_1, answered_1_while_draining, refused_connections
                headers = {**signed_headers(key, body, "m"), "Content-Type": "application/json"}
                try:
                    async with session.post(f"{base}/hc_sync/common", data=body, headers=headers) as reply:
                        if (await reply.json())["code"] == 1:
                            answered_1 += 1
                            answered_1_while_draining += sigterm_sent.is_set()
                except aiohttp.ClientConnectorError:
                    refused_connections += 1  # after the drain: the platform retries, nothing was accepted

            async def load() -> None:
                for _ in range(60):
                    await asyncio.gather(*(push() for _ in range(5)))
                    await asyncio.sleep(0.05)

            async def watch_readiness() -> None:
                await asyncio.sleep(0.2)  # the signal reaches the process
                for _ in range(10):
                    try:
                        async with session.get(f"{base}/readyz") as reply:
                            readiness.append(reply.status)
                    except aiohttp.ClientConnectorError:
                        return
                    await asyncio.sleep(0.1)

            loader = asyncio.create_task(load())
            await asyncio.sleep(0.5)
            gateway.signal(signal.SIGTERM)
            sigterm_sent.set()
            await asyncio.gather(loader, watch_readiness())
        assert await asyncio.to_thread(gateway.wait, 20) == 0
    finally:
        gateway.stop()

    assert readiness and readiness[0] == 503 and set(readiness) == {503}
    assert answered_1_while_draining > 0  # the load balancer still sends for a while: those are served
    stored = await take(amqp, topology.kind_queue("CONSUME"), timeout=5)
    assert len(stored) == answered_1  # every code 1 is in the queue; nothing else answered was cut mid-request
