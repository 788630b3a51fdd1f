"""Hostile and broken input against the real gateway over real HTTP: never a 500, never a crash, always the reply
contract, never a publish for a request whose signature does not verify.

HYPOTHESIS_PROFILE=slow runs 10,000 cases per property; the default profile fewer."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import msgspec
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.app_keys import PUBLISHER
from gateway.send_cli import signed_headers
from gateway.server import ContractAppRunner
from gateway.settings import GatewaySettings
from infra.settings import load_settings
from schemas import topology
from schemas.events import KNOWN_KINDS
from schemas.samples import sample_body, sample_names
from tests.support.broker import AMQP_URL
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.keys import write_public_keys
from tests.support.network import free_port
from tests.support.processes import gateway_process

pytestmark = pytest.mark.broker
settings.register_profile("default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REFUSALS = {400, 401, 403, 404, 405, 408, 413, 415}


class LiveGateway:
    """The real app served on a port from a thread of its own; every publish it makes is recorded."""

    def __init__(self, key_file: Path) -> None:
        self.port = free_port()
        self.settings = load_settings(
            GatewaySettings,
            {}, port=self.port, platform_public_key=str(key_file), max_body_bytes=8192, read_timeout=2.0,
            amqp_url=AMQP_URL, id_secret=TEST_ID_SECRET,
        )  # fmt: skip
        self.published: list[tuple[str, str]] = []  # (routing key, signature outcome)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        app = create_app(self.settings)
        publisher = app[PUBLISHER]
        real_publish = publisher.publish_confirmed

        async def recording_publish(body, routing_key, properties):
            self.published.append((routing_key, properties.headers["signature_outcome"]))
            await real_publish(body, routing_key, properties)

        publisher.publish_confirmed = recording_publish  # type: ignore[method-assign]
        self.runner = ContractAppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(publisher.wait_ready(10))
        site = aiohttp.web.TCPSite(self.runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())

    def __enter__(self) -> LiveGateway:
        self._thread.start()
        assert self._ready.wait(20), "the gateway did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(20)

    def post(self, body: bytes, headers: dict[str, str], path: str = "/hc_sync/common") -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", path, body=body, headers=headers)
            reply = connection.getresponse()
            payload = reply.read()
        finally:
            connection.close()
        assert reply.getheader("Content-Type", "").startswith("application/json"), payload[:200]
        answer = json.loads(payload)
        assert set(answer) == {"code", "msg", "data"} and answer["data"] == {}, answer
        assert reply.status != 500
        return reply.status, answer


@pytest.fixture(scope="module")
def live(tmp_path_factory, platform_key) -> Iterator[LiveGateway]:
    key_file = write_public_keys(tmp_path_factory.mktemp("keys") / "platform.pem", platform_key)
    with LiveGateway(key_file) as gateway:
        yield gateway


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30, max_value=10**60)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)  # fmt: skip
FIELD_NAMES = ["notify_type", "card_id", "mc_trade_no", "result", "status", "email", "mobile", "code", "auth_id"]
KINDS = [*sorted(KNOWN_KINDS), "CARD_STATUS_CHANGE", "", "open_card", "X.Y#", "💳"]
objects = st.dictionaries(
    st.sampled_from(FIELD_NAMES) | st.text(max_size=12),
    json_values | st.sampled_from(KINDS),
    max_size=8,
)


def _dump(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity: not JSON, sent all the same


def _duplicate_keys(value: dict) -> bytes:
    return b"{" + b",".join(_dump(str(k)) + b":" + _dump(v) for k, v in [*value.items(), *value.items()]) + b"}"


def _deep(depth: int) -> bytes:
    return b'{"notify_type":"CONSUME","card_id":' + b"[" * depth + b"]" * depth + b"}"


bodies = st.one_of(
    st.binary(max_size=300),
    objects.map(_dump),
    json_values.map(_dump),
    objects.map(_duplicate_keys),
    st.integers(min_value=1, max_value=5000).map(_deep),
    st.binary(min_size=1, max_size=40).map(lambda junk: b'{"notify_type":"CONSUME","card_id":"' + junk + b'"}'),
    st.sampled_from(sample_names()).map(sample_body),
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", "application/x-www-form-urlencoded",
     "multipart/form-data; boundary=x", "application/problem+json", "text/json"]
)  # fmt: skip


# Body framing and coding headers: a compressed body is refused (415), a framing aiohttp cannot read is a 4xx.
coding_headers = st.dictionaries(
    st.sampled_from(["Content-Encoding", "Transfer-Encoding"]),
    st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "chunked", "x-custom", "gzip, deflate", ""]),
)


@given(
    body=bodies,
    content_type=content_types,
    signed=st.dictionaries(st.sampled_from(["api-key", "timestamp", "nonce", "version", "lang", "signature"]),
                           header_text),
    coding=coding_headers,
)  # fmt: skip
def test_unsigned_or_forged_requests_are_refused_and_never_published(live, body, content_type, signed, coding):
    before = len(live.published)
    status, answer = live.post(body, {**signed, **coding, "Content-Type": content_type})
    assert status in REFUSALS and answer["code"] != 1
    assert len(live.published) == before, "a request whose signature does not verify was published"


@given(name=st.sampled_from(sample_names()), encoding=st.sampled_from(["gzip", "deflate", "br", "zstd", "x-custom"]))
def test_a_genuine_push_with_a_content_encoding_is_refused_never_inflated(live, platform_key, name, encoding):
    body = sample_body(name)
    before = len(live.published)
    headers = {**signed_headers(platform_key, body, "merchant-1"), "Content-Type": "application/json"}
    status, answer = live.post(gzip.compress(body), {**headers, "Content-Encoding": encoding})
    assert status == 415 and answer["code"] == 415 and len(live.published) == before


@given(body=st.one_of(objects.map(_dump), objects.map(_duplicate_keys), json_values.map(_dump)))
def test_correctly_signed_random_bodies_never_break_the_gateway(live, platform_key, body):
    before = len(live.published)
    try:
        headers = {**signed_headers(platform_key, body, "merchant-1"), "Content-Type": "application/json"}
    except Exception:
        headers = {"Content-Type": "application/json", "signature": "AAAA"}  # not signable (not an object): unsigned
    status, answer = live.post(body, headers)
    if status == 200:
        assert answer["code"] == 1 and len(live.published) == before + 1
        routing_key, outcome = live.published[-1]
        # A body the string to sign cannot tell from another (a name outside letters, digits and _) is kept aside.
        assert outcome == "valid" or (outcome == "ambiguous" and routing_key == topology.UNVERIFIED_ROUTING_KEY)
    else:
        assert status in REFUSALS and len(live.published) == before


@given(kind=st.sampled_from(KINDS[:9]), field=st.sampled_from(FIELD_NAMES + ["refund_amount", "modify_time"]),
       value=json_values)  # fmt: skip
def test_wrong_types_for_every_field_are_quarantined_or_accepted_never_refused(live, platform_key, kind, field, value):
    sample = json.loads(sample_body(kind.lower()))
    sample[field] = value
    body = _dump(sample)
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError:  # NaN, Infinity: not JSON at all, so not signable: another body's signed headers
        headers = {**signed_headers(platform_key, b"{}", "merchant-1"), "Content-Type": "application/json"}
        status, answer = live.post(body, headers)
        assert status == 400
        return
    headers = {**signed_headers(platform_key, body, "merchant-1"), "Content-Type": "application/json"}
    status, answer = live.post(body, headers)
    if field == "notify_type" and value in (None, ""):
        assert status == 400  # no kind at all
    else:
        assert status == 200 and answer["code"] == 1
        routing_key, outcome = live.published[-1]
        assert outcome == "valid" and routing_key.startswith("hypercard.")


def raw_request(port: int, data: bytes) -> bytes:
    """Send bytes as they are; read until the server closes (it closes after an error reply) or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /hc_sync/common HTTP/1.1\r\nHost: x\r\nsignature: a\rb\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /hc_sync/common HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\nInjected: yes\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST /hc_sync/common HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}",
        b"POST /hc_sync/common HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_http_is_answered_in_the_contract_by_the_real_server(tmp_path, platform_key, amqp, request_bytes):
    key_file = write_public_keys(tmp_path / "platform.pem", platform_key)
    port = free_port()
    gateway = gateway_process(tmp_path, port, {"HC_PLATFORM_PUBLIC_KEY": str(key_file), "HC_DRAIN_SECONDS": "0"})
    try:
        from tests.support.network import wait_until_ready

        wait_until_ready(port)
        reply = raw_request(port, request_bytes)
    finally:
        gateway.stop()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", head), reply[:200]
    assert b"application/json" in head
    answer = json.loads(body)
    assert answer["code"] != 1 and set(answer) == {"code", "msg", "data"}


HEAD = b"POST /hc_sync/common HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
UNREADABLE_BODIES = {
    "broken gzip": [HEAD + b"Content-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnot gzip!!"],
    "broken deflate": [HEAD + b"Content-Encoding: deflate\r\nContent-Length: 10\r\n\r\nnot zlib!!"],
    "bad chunk size after the headers": [HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"5\r\n{\"a\":\r\nzz\r\n"],
    "closed before the whole body": [HEAD + b"Content-Length: 100\r\n\r\n", b'{"notify_type"', None],
    "closed in the middle of a chunk": [HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"20\r\n{\"a\"", None],
}


def send_in_parts(port: int, parts: list[bytes | None]) -> bytes:
    """Each part after a pause (so the headers arrive before the body); None: the client stops sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for part in parts:
            if part is None:
                sock.shutdown(socket.SHUT_WR)
            else:
                sock.sendall(part)
            time.sleep(0.2)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


def test_bodies_the_http_layer_cannot_deliver_get_a_4xx_or_a_closed_connection_never_a_traceback(
    tmp_path, platform_key, amqp
):
    key_file = write_public_keys(tmp_path / "platform.pem", platform_key)
    port = free_port()
    env = {"HC_PLATFORM_PUBLIC_KEY": str(key_file), "HC_DRAIN_SECONDS": "0", "HC_READ_TIMEOUT": "1"}
    gateway = gateway_process(tmp_path, port, env)
    try:
        from tests.support.network import wait_until_ready

        wait_until_ready(port)
        replies = {name: send_in_parts(port, parts) for name, parts in UNREADABLE_BODIES.items()}
    finally:
        gateway.stop()
    for name, reply in replies.items():
        while reply:  # every reply on the connection (a 408 for the body, then a 400 for the bad framing)
            head, _, rest = reply.partition(b"\r\n\r\n")
            assert re.match(rb"HTTP/1\.1 4\d\d ", head), (name, replies[name][:300])
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            answer, reply = json.loads(rest[:length]), rest[length:]
            assert answer["code"] != 1 and answer["data"] == {}, (name, replies[name][:300])
    assert "Traceback" not in gateway.output and "unexpected error" not in gateway.output
    assert all(line["status"] < 500 for line in gateway.events(event="request")), gateway.output[-2000:]


async def test_many_concurrent_connections_with_bad_signatures(live, platform_key):
    before = len(live.published)
    body = sample_body("consume")

    async def forged(session: aiohttp.ClientSession) -> int:
        headers = {"Content-Type": "application/json", "signature": "Zm9yZ2Vk", "nonce": "x", "timestamp": "1"}
        async with session.post(f"http://127.0.0.1:{live.port}/hc_sync/common", data=body, headers=headers) as r:
            return r.status

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        statuses = await asyncio.gather(*(forged(session) for _ in range(400)))
    assert set(statuses) == {401}
    assert len(live.published) == before

    headers = {**signed_headers(platform_key, body, "merchant-1"), "Content-Type": "application/json"}
    assert (await asyncio.to_thread(live.post, body, headers))[0] == 200


async def test_slow_clients_do_not_hold_the_gateway(live, platform_key):
    """Clients that send their body byte by byte are cut off after HC_READ_TIMEOUT; others are served meanwhile. They
    send the platform's headers: without them the gateway refuses the push before it reads the body."""
    body = sample_body("consume")
    signed = "".join(f"{name}: {value}\r\n" for name, value in signed_headers(platform_key, body, "merchant-1").items())

    def slow() -> bytes:
        with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
            sock.sendall(
                b"POST /hc_sync/common HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n%s\r\n" % (len(body), signed.encode())
            )
            started = time.monotonic()
            for byte in body:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.1)
                if time.monotonic() - started > 6:
                    break
            return sock.recv(65536)

    headers = {**signed_headers(platform_key, body, "merchant-1"), "Content-Type": "application/json"}
    with ThreadPoolExecutor(max_workers=21) as pool:
        slow_clients = [pool.submit(slow) for _ in range(20)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        status, _ = await asyncio.wrap_future(pool.submit(live.post, body, headers))
        assert status == 200 and time.monotonic() - started < 2
        replies = [await asyncio.wrap_future(client) for client in slow_clients]
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in replies), replies[0][:100]
