"""What open connections may cost the gateway process: a request's head is bounded in total, the connections in
number (HC_MAX_CONNECTIONS, counted in a metric), and the memory they held is given back when they close."""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.request
from pathlib import Path

import pytest

from gateway.send_cli import generate_keys
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import gateway_process

CONNECTIONS = 400
LINES = 60
LINE_BYTES = 8100
# Before the fix each such connection held about 1 MiB: 400 of them took the gateway from 56 to 442 MiB, and it
# was not given back after they closed (issue 26, finding 5).
HELD_BOUND_MB = 64


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def half_sent_request(number: int) -> bytes:
    """A request line and LINES header lines of LINE_BYTES, with no blank line: the head never ends."""
    lines = b"".join(
        b"X-Pad-%d: " % line + b"%d" % number + b"a" * (LINE_BYTES - 20) + b"\r\n" for line in range(LINES)
    )
    return b"POST /hc_sync/common HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" + lines


async def open_and_send(port: int, number: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(half_sent_request(number))
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    return reader, writer


async def settle(pid: int, seconds: float = 3.0) -> float:
    """The process's RSS once it has read what was sent (it stops changing)."""
    last = rss_mb(pid)
    for _ in range(int(seconds / 0.5)):
        await asyncio.sleep(0.5)
        last = rss_mb(pid)
    return last


@pytest.mark.broker
async def test_400_half_sent_heads_of_60_lines_of_8_1_kb_keep_the_gateway_within_64_mb_of_idle(tmp_path, amqp):
    generate_keys(tmp_path)
    port = free_port()
    # A long read timeout: the connections are held while the memory is measured, not timed out.
    gateway = gateway_process(tmp_path, port, {"HC_READ_TIMEOUT": "120", "HC_DRAIN_SECONDS": "0"})
    clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await asyncio.to_thread(wait_until_ready, port)
        idle = await settle(gateway.popen.pid)
        for start in range(0, CONNECTIONS, 50):
            clients += await asyncio.gather(*(open_and_send(port, n) for n in range(start, start + 50)))
        held = await settle(gateway.popen.pid)
        for _, writer in clients:
            writer.close()
        after = await settle(gateway.popen.pid)
        print(f"\n[rss] idle {idle:.0f} MB, {CONNECTIONS} heads held {held:.0f} MB, closed {after:.0f} MB")
        assert held - idle < HELD_BOUND_MB, f"{CONNECTIONS} half-sent heads took {held - idle:.0f} MB over idle"
        assert after - idle < HELD_BOUND_MB / 2, f"{after - idle:.0f} MB not given back after the connections closed"
    finally:
        for _, writer in clients:
            writer.close()
        gateway.stop()


@pytest.mark.broker
async def test_a_head_over_32_kb_in_total_is_answered_431_before_it_ends(tmp_path, amqp):
    generate_keys(tmp_path)
    port = free_port()
    gateway = gateway_process(tmp_path, port, {"HC_READ_TIMEOUT": "120", "HC_DRAIN_SECONDS": "0"})
    try:
        await asyncio.to_thread(wait_until_ready, port)
        reader, writer = await open_and_send(port, 1)
        reply = await asyncio.wait_for(reader.read(), 10)  # the gateway answers and closes: no blank line needed
        writer.close()
        assert re.match(rb"HTTP/1\.[01] 431 ", reply), reply[:200]  # 1.0: no request was ever parsed whole
        assert b'"code":431' in reply and b"32768 bytes" in reply, reply
    finally:
        gateway.stop()


def open_connections_metric(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    found = re.search(r"^hypercard_gateway_open_connections (\S+)$", text, re.MULTILINE)
    assert found, "no hypercard_gateway_open_connections in /metrics"
    return float(found.group(1))


@pytest.mark.broker
async def test_connections_over_hc_max_connections_are_answered_503_and_closed(tmp_path, amqp):
    generate_keys(tmp_path)
    port, metrics_port = free_port(), free_port()
    env = {"HC_MAX_CONNECTIONS": "20", "HC_READ_TIMEOUT": "120", "HC_DRAIN_SECONDS": "0",
           "HC_GATEWAY_METRICS_PORT": str(metrics_port)}  # fmt: skip
    gateway = gateway_process(tmp_path, port, env)
    held: list[asyncio.StreamWriter] = []
    try:
        await asyncio.to_thread(wait_until_ready, port)
        for _ in range(20):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # a head begun, never finished
            held.append(writer)
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(open_connections_metric, metrics_port) == 20
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert re.match(rb"HTTP/1\.[01] 503 ", reply) and b'"code":503' in reply, reply[:300]
        for writer in held:
            writer.close()
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(open_connections_metric, metrics_port) == 0
    finally:
        for writer in held:
            writer.close()
        gateway.stop()


@pytest.mark.broker
async def test_a_body_larger_than_32_kb_that_ends_in_one_read_is_no_head_of_the_next_request(tmp_path, amqp):
    """The bytes that end a request's body are the body's: counted as the next head, a 40 KB body sent after its
    head was answered 431 and the connection closed under the sender (a broken pipe)."""
    generate_keys(tmp_path)
    port = free_port()
    gateway = gateway_process(tmp_path, port, {"HC_SIGNATURE_MODE": "monitor", "HC_DRAIN_SECONDS": "0"})
    body = b'{"notify_type":"OPEN_CARD","remark":"' + b"r" * 40000 + b'"}'
    head = (
        b"POST /hc_sync/common HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    try:
        await asyncio.to_thread(wait_until_ready, port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):  # the same connection, kept alive
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.2)  # the head is read alone, the body in one read after it
            writer.write(body)
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
            assert status_line.startswith(b"HTTP/1.1 200 "), status_line
            length = 0
            while (line := await asyncio.wait_for(reader.readline(), 10)) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert b'"code":1' in await reader.readexactly(length)
        writer.close()
    finally:
        gateway.stop()
