"""The project's HAProxy config, ports adapted, in front of real gateways, with a certificate made for the test:
pushes arrive over HTTPS only, the allow-list sees the real client, a draining gateway fails no request."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from gateway.send_cli import generate_keys, load_private_key, signed_headers
from schemas import topology
from schemas.samples import sample_body
from tests.support.broker import take
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import REPO, gateway_process
from tests.support.tls import self_signed_pem

pytestmark = pytest.mark.broker


def adapted_config(lb_port: int, *gateway_ports: int, stats_socket: Path | None = None) -> str:
    """deploy/haproxy/haproxy.cfg as shipped, but listening on loopback, with static backend servers instead of
    Docker's DNS, a connection limit within this machine's open-file limit, and optionally a stats socket. The
    certificate is the shipped config's own HC_TLS_CERT (start_haproxy)."""
    config = (REPO / "deploy/haproxy/haproxy.cfg").read_text()
    config = re.sub(r"maxconn \d+", "maxconn 1000", config)
    if stats_socket is not None:
        config = config.replace("global\n", f"global\n    stats socket {stats_socket} level admin\n", 1)
    config, replaced = re.subn(r"bind :8443 ", f"bind 127.0.0.1:{lb_port} ", config)
    assert replaced == 1
    config = config.replace("bind :8405\n", f"bind 127.0.0.1:{free_port()}\n")  # its metrics, on no fixed port
    config = re.sub(r"resolvers docker\n(    .*\n)+", "", config)
    servers = "\n    ".join(f"server gateway{n} 127.0.0.1:{port} check" for n, port in enumerate(gateway_ports, 1))
    config, replaced = re.subn(r"server-template .*", servers, config)
    assert replaced == 1 and "set-header X-Forwarded-For" in config
    return config


async def start_haproxy(config: Path) -> tuple[subprocess.Popen, ssl.SSLContext]:
    """HAProxy with a self-signed certificate for 127.0.0.1 made in the config's folder, and a client context
    that trusts it."""
    env = {**os.environ, "HC_TLS_CERT": str(self_signed_pem(config.parent / "hypercard.pem"))}
    check = await asyncio.to_thread(subprocess.run, ["haproxy", "-c", "-f", str(config)], capture_output=True, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    haproxy = await asyncio.to_thread(
        subprocess.Popen, ["haproxy", "-db", "-f", str(config)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return haproxy, ssl.create_default_context(cafile=env["HC_TLS_CERT"])


def wait_until_served(port: int, context: ssl.SSLContext, timeout: float = 15) -> None:
    """Block until HAProxy answers /readyz over HTTPS with 200: its health check found a gateway up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=1, context=context) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("HAProxy did not serve a ready gateway")


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


async def post_from(
    address: str, url: str, body: bytes, headers: dict[str, str], context: ssl.SSLContext
) -> tuple[int, dict]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0), ssl=context)
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
    haproxy, context = await start_haproxy(config)
    try:
        await asyncio.to_thread(wait_until_ready, gateway_port)
        await asyncio.to_thread(wait_until_served, lb_port, context)
        url = f"https://127.0.0.1:{lb_port}/hc_sync/common"
        body = sample_body("consume")
        headers = {**signed_headers(key, body, "merchant-1"), "Content-Type": "application/json"}

        spoofed = {**headers, "X-Forwarded-For": "127.0.0.2"}  # an allowed address, written by the client
        assert (await post_from("127.0.0.3", url, body, spoofed, context))[0] == 403
        forwarded = {**headers, "X-Forwarded-For": "127.0.0.9"}
        status, reply = await post_from("127.0.0.2", url, body, forwarded, context)
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
    haproxy, context = await start_haproxy(config)
    url = f"https://127.0.0.1:{lb_port}/hc_sync/common"
    replies: list[int] = []
    states_while_draining: list[dict[str, str]] = []
    try:
        for port in ports:
            await asyncio.to_thread(wait_until_ready, port)
        await asyncio.to_thread(wait_until_served, lb_port, context)
        # keep-alive to HAProxy, as the platform's client would
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:

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


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # the old versions, offered on purpose
async def test_pushes_arrive_over_https_only_and_tls_before_1_2_is_refused(tmp_path: Path, amqp):
    key = load_private_key(generate_keys(tmp_path)[0])
    gateway_port, lb_port = free_port(), free_port()
    gateway = gateway_process(tmp_path, gateway_port, {"HC_TRUSTED_PROXIES": "127.0.0.1/32"})
    config = tmp_path / "haproxy.cfg"
    config.write_text(adapted_config(lb_port, gateway_port))
    haproxy, context = await start_haproxy(config)
    body = sample_body("open_card")
    headers = {**signed_headers(key, body, "merchant-1"), "Content-Type": "application/json"}
    try:
        await asyncio.to_thread(wait_until_ready, gateway_port)
        await asyncio.to_thread(wait_until_served, lb_port, context)
        url = f"https://127.0.0.1:{lb_port}/hc_sync/common"
        status, reply = await post_from("127.0.0.1", url, body, headers, context)
        assert status == 200 and reply["code"] == 1

        # The same push in clear gets no HTTP answer at all: the only listener speaks TLS.
        with pytest.raises(aiohttp.ClientError):
            await post_from("127.0.0.1", url.replace("https:", "http:"), body, headers, context)

        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(config.parent / "hypercard.pem")
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
        old.minimum_version, old.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError) as refused:
            await asyncio.to_thread(handshake, lb_port, old)
        assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", "HAProxy itself refuses the version"
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        assert await asyncio.to_thread(handshake, lb_port, old) == "TLSv1.2"
    finally:
        haproxy.terminate()
        await asyncio.to_thread(haproxy.wait, 10)
        gateway.stop()
    (message,) = await take(amqp, topology.kind_queue("OPEN_CARD"))
    assert message.body == body
    assert [r["status"] for r in gateway.events(event="request")] == [200]


def handshake(port: int, context: ssl.SSLContext) -> str | None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version()
