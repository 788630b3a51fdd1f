"""The project's HAProxy config, ports adapted, in front of a real gateway: the allow-list sees the real client."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from gateway.send import generate_keys, load_private_key, signed_headers
from schemas import topology
from schemas.samples import sample_body
from tests.support.broker import take
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import REPO, gateway_process

pytestmark = pytest.mark.broker


def adapted_config(lb_port: int, *gateway_ports: int, stats_socket: Path | None = None) -> str:
    """deploy/haproxy/haproxy.cfg as shipped, but listening on loopback, with static backend servers instead of
    Docker's DNS, a connection limit within this machine's open-file limit, and optionally a stats socket."""
    config = (REPO / "deploy/haproxy/haproxy.cfg").read_text()
    config = re.sub(r"maxconn \d+", "maxconn 1000", config)
    if stats_socket is not None:
        config = config.replace("global\n", f"global\n    stats socket {stats_socket} level admin\n")
    config = config.replace("bind :8080", f"bind 127.0.0.1:{lb_port}")
    config = re.sub(r"resolvers docker\n(    .*\n)+", "", config)
    servers = "\n    ".join(f"server gateway{n} 127.0.0.1:{port} check" for n, port in enumerate(gateway_ports, 1))
    config, replaced = re.subn(r"server-template .*", servers, config)
    assert replaced == 1 and "set-header X-Forwarded-For" in config
    return config


async def start_haproxy(config: Path) -> subprocess.Popen:
    check = await asyncio.to_thread(subprocess.run, ["haproxy", "-c", "-f", str(config)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return await asyncio.to_thread(
        subprocess.Popen, ["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def server_states(stats_socket: Path) -> dict[str, str]:
    """HAProxy's view of each backend server (runtime API): name -> operational state (0 down, 2 up)."""
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(stats_socket))
        client.sendall(b"show servers state gateways\n")
        text = b""
        while chunk := client.recv(65536):
            text += chunk
    rows = [line.split() for line in text.decode().splitlines()[2:] if line.strip()]
    return {row[3]: row[5] for row in rows}


async def post_from(address: str, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(url, data=body, headers=headers) as reply:
            return reply.status, await reply.json()


async def test_spoofed_forwarded_for_through_haproxy_is_refused_and_the_real_address_logged(tmp_path: Path, amqp):
    key = load_private_key(generate_keys(tmp_path)[0])
    gateway_port, lb_port = free_port(), free_port()
    gateway = gateway_process(
        tmp_path, gateway_port, {"HC_TRUSTED_PROXIES": "127.0.0.1/32", "HC_ALLOWED_IPS": "127.0.0.2/32"}
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(adapted_config(lb_port, gateway_port))
    haproxy = await start_haproxy(config)
    try:
        await asyncio.to_thread(wait_until_ready, gateway_port)
        await asyncio.to_thread(wait_until_ready, lb_port)  # HAProxy's health check found the gateway up
        url = f"http://127.0.0.1:{lb_port}/hc_sync/common"
        body = sample_body("consume")
        headers = {**signed_headers(key, body, "merchant-1"), "Content-Type": "application/json"}

        spoofed = {**headers, "X-Forwarded-For": "127.0.0.2"}  # an allowed address, written by the client
        assert (await post_from("127.0.0.3", url, body, spoofed))[0] == 403
        status, reply = await post_from("127.0.0.2", url, body, {**headers, "X-Forwarded-For": "127.0.0.9"})
        assert status == 200 and reply["code"] == 1
    finally:
        haproxy.terminate()
        haproxy.wait(10)
        gateway.stop()
    (message,) = await take(amqp, topology.kind_queue("CONSUME"))
    assert message.headers["client_ip"] == "127.0.0.2"
    requests = gateway.events(event="request")
    assert [(r["client_ip"], r["status"]) for r in requests] == [("127.0.0.3", 403), ("127.0.0.2", 200)]


async def test_a_gateway_sigterm_under_steady_load_through_haproxy_fails_no_request(tmp_path: Path, amqp):
    key = load_private_key(generate_keys(tmp_path)[0])
    ports = [free_port(), free_port()]
    lb_port = free_port()
    gateways = [
        gateway_process(tmp_path, port, {"HC_DRAIN_SECONDS": "3"}, name=f"gateway-{n}") for n, port in enumerate(ports)
    ]
    config, stats = tmp_path / "haproxy.cfg", tmp_path / "haproxy.sock"
    config.write_text(adapted_config(lb_port, *ports, stats_socket=stats))
    haproxy = await start_haproxy(config)
    url = f"http://127.0.0.1:{lb_port}/hc_sync/common"
    replies: list[int] = []
    states_while_draining: list[dict[str, str]] = []
    try:
        for port in ports:
            await asyncio.to_thread(wait_until_ready, port)
        await asyncio.to_thread(wait_until_ready, lb_port)
        async with aiohttp.ClientSession() as session:  # keep-alive to HAProxy, as the platform's client would

            async def push(n: int) -> None:
                body = json.dumps({"notify_type": "CONSUME", "card_id": f"lb-{n}"}).encode()
                headers = {**signed_headers(key, body, "merchant-1"), "Content-Type": "application/json"}
                try:
                    async with session.post(url, data=body, headers=headers) as reply:
                        replies.append(reply.status if (await reply.json())["code"] == 1 else -reply.status)
                except aiohttp.ClientError:
                    replies.append(0)

            async def steady_load() -> None:
                tasks = []
                for n in range(240):  # 8 s at 30 requests/s
                    tasks.append(asyncio.create_task(push(n)))
                    await asyncio.sleep(1 / 30)
                await asyncio.gather(*tasks)

            async def terminate_first() -> None:
                await asyncio.sleep(2)
                gateways[0].signal(signal.SIGTERM)
                while gateways[0].popen.poll() is None:  # watch HAProxy's view until the gateway has exited
                    states_while_draining.append(await asyncio.to_thread(server_states, stats))
                    await asyncio.sleep(0.1)

            await asyncio.gather(steady_load(), terminate_first())
    finally:
        haproxy.terminate()
        await asyncio.to_thread(haproxy.wait, 10)
        for gateway in gateways:
            gateway.stop()
    assert len(replies) == 240 and set(replies) == {200}, f"failed requests: {[r for r in replies if r != 200]}"
    assert gateways[0].popen.returncode == 0
    # HAProxy saw the first gateway's /readyz turn 503 and took it out while it was still serving.
    assert any(states["gateway1"] == "0" and states["gateway2"] == "2" for states in states_while_draining)
    stored = await take(amqp, topology.kind_queue("CONSUME"))
    assert len({json.loads(m.body)["card_id"] for m in stored}) == 240
