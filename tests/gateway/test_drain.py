"""Graceful drain on SIGTERM: /readyz turns 503 first, requests are still served, none answered 1 is lost.

Accounting, as the platform sees it: every request ends either with a reply in the contract's shape (code 1 means
the event is in the queue) or with no reply at all (refused, reset, closed before the reply: not accepted, the
platform sends it again). Idle keep-alive connections are closed as the drain begins, and every reply during the
drain carries `Connection: close`, so a request can only lose its connection at that moment, while the load
balancer is still taking the instance out."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from gateway.send_cli import generate_keys, load_private_key, signed_headers
from schemas import topology
from schemas.samples import sample_body
from tests.support.broker import take
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import gateway_process

pytestmark = pytest.mark.broker


def in_contract(reply: object) -> bool:
    return isinstance(reply, dict) and set(reply) == {"code", "msg", "data"} and reply["data"] == {}


async def test_sigterm_drains_without_cutting_or_losing_requests(tmp_path, amqp):
    private, _ = generate_keys(tmp_path)
    key = load_private_key(private)
    port = free_port()
    gateway = gateway_process(tmp_path, port, {"HC_DRAIN_SECONDS": "1.5"})
    base = f"http://127.0.0.1:{port}"
    body = sample_body("consume")
    replies: list[tuple[int, object, bool]] = []  # (HTTP status, body, sent after SIGTERM)
    connection_headers: list[tuple[float, str]] = []  # (when the request started, its reply's Connection header)
    draining_seen_at: list[float] = []  # when /readyz first answered 503: the gateway was draining by then
    no_reply = 0
    sigterm_sent = asyncio.Event()
    readiness: list[int] = []
    try:
        await asyncio.to_thread(wait_until_ready, port)
        async with aiohttp.ClientSession() as session:

            async def push() -> None:
                nonlocal no_reply
                headers = {**signed_headers(key, body, "m"), "Content-Type": "application/json"}
                draining = sigterm_sent.is_set()
                started = asyncio.get_running_loop().time()
                try:
                    async with session.post(f"{base}/hc_sync/common", data=body, headers=headers) as reply:
                        replies.append((reply.status, await reply.json(content_type=None), draining))
                        connection_headers.append((started, reply.headers.get("Connection", "").lower()))
                except (aiohttp.ClientConnectionError, ConnectionError):
                    no_reply += 1  # refused or cut before any reply: not accepted, the platform sends it again

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
                            if reply.status == 503 and not draining_seen_at:
                                draining_seen_at.append(asyncio.get_running_loop().time())
                    except aiohttp.ClientConnectionError:
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

    assert len(replies) + no_reply == 300
    assert all(in_contract(reply) for _, reply, _ in replies), "a reply outside the contract's shape"
    assert {status for status, _, _ in replies} <= {200, 503}
    assert readiness and set(readiness) == {503}
    answered_1 = [draining for _, reply, draining in replies if reply["code"] == 1]  # type: ignore[index]
    assert any(answered_1), "the load balancer still sends for a while: those requests must be served"
    while_draining = [header for started, header in connection_headers if started > draining_seen_at[0]]
    assert while_draining and set(while_draining) == {"close"}, "a reply during the drain kept its connection open"
    stored = await take(amqp, topology.kind_queue("CONSUME"), timeout=5)
    assert len(stored) == len(answered_1)  # every code 1 is in the queue
