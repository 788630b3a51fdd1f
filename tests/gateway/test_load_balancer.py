"""The project's HAProxy config, ports adapted, in front of a real gateway: the allow-list sees the real client."""

from __future__ import annotations

import asyncio
import re
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


def adapted_config(lb_port: int, gateway_port: int) -> str:
    """deploy/haproxy/haproxy.cfg as shipped, but listening on loopback, with one static backend server instead of
    Docker's DNS, and a connection limit within this machine's open-file limit."""
    config = (REPO / "deploy/haproxy/haproxy.cfg").read_text()
    config = re.sub(r"maxconn \d+", "maxconn 1000", config)
    config = config.replace("bind :8080", f"bind 127.0.0.1:{lb_port}")
    config = re.sub(r"resolvers docker\n(    .*\n)+", "", config)
    config, replaced = re.subn(r"server-template .*", f"server gateway1 127.0.0.1:{gateway_port} check", config)
    assert replaced == 1 and "set-header X-Forwarded-For" in config
    return config


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
    check = await asyncio.to_thread(subprocess.run, ["haproxy", "-c", "-f", str(config)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    haproxy = await asyncio.to_thread(
        subprocess.Popen, ["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
