"""The reply contract at the protocol's edge: header limits and request bodies that cannot be read."""

from __future__ import annotations

import asyncio
import gzip
import json
import re

import pytest

from schemas import topology
from tests.support.broker import take

pytestmark = pytest.mark.broker
# The limits the README documents (What the gateway answers), written out: a test that built its request from
# gateway.server's constants would pass whatever they were raised to.
MAX_HEADERS = 64  # header lines
MAX_FIELD_SIZE = 8190  # bytes of one header line


async def raw_exchange(host: str, port: int, request: bytes) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, payload = reply.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert match and b"application/json" in head, reply[:300]
    return int(match.group(1)), json.loads(payload)


@pytest.mark.parametrize(
    "headers",
    [
        b"".join(b"X-Extra-%d: 1\r\n" % n for n in range(MAX_HEADERS - 1)),  # with Host and Content-Length: 65
        b"X-Extra: " + b"1" * (MAX_FIELD_SIZE + 1) + b"\r\n",
    ],
    ids=["too many header lines", "a header line too long"],
)
async def test_headers_over_the_limits_are_answered_431_in_the_contract(gateway, headers):
    request = b"POST /hc_sync/common HTTP/1.1\r\nHost: gw\r\n" + headers + b"Content-Length: 2\r\n\r\n{}"
    status, reply = await raw_exchange(gateway.host, gateway.port, request)
    assert status == 431 and reply["code"] == 431 and reply["data"] == {} and "header" in reply["msg"]


async def test_as_many_header_lines_as_the_limit_are_read(gateway):
    extra = b"".join(b"X-Extra-%d: 1\r\n" % n for n in range(MAX_HEADERS - 3))  # with the three below: 64
    request = (
        b"POST /hc_sync/common HTTP/1.0\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: 2\r\n\r\n{}"
    )
    status, reply = await raw_exchange(gateway.host, gateway.port, request)
    assert status == 401 and reply["code"] == 401  # read, then refused for the signature it lacks


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-custom"])
async def test_a_compressed_body_is_refused_415_and_never_inflated(gateway, amqp, sign, sample, encoding):
    """The platform documents no Content-Encoding: a compressed body, well formed or not, is refused before it is
    read (a broken gzip stream was a 503 and a traceback; a well-formed one was inflated in memory)."""
    body = sample("consume")
    compressed = gzip.compress(body) if encoding == "gzip" else b"not compressed at all"
    headers = {**sign(body), "Content-Encoding": encoding}
    response = await gateway.post("/hc_sync/common", data=compressed, headers=headers)
    assert response.status == 415 and (await response.json())["code"] == 415
    assert await take(amqp, topology.kind_queue("CONSUME"), timeout=0.3) == []
    identity = await gateway.post("/hc_sync/common", data=body, headers={**sign(body), "Content-Encoding": "identity"})
    assert identity.status == 200


@pytest.mark.parametrize(
    "encoding_lines",
    [
        b"Content-Encoding: identity\r\nContent-Encoding: gzip\r\n",
        b"Content-Encoding: identity, gzip\r\n",
        b"Content-Encoding: gzip\r\nContent-Encoding: identity\r\n",
    ],
    ids=["identity then gzip", "a list", "gzip then identity"],
)
async def test_any_content_encoding_but_identity_is_refused_however_the_headers_spell_it(
    gateway, amqp, sign, sample, encoding_lines
):
    """A second Content-Encoding line, or a list in one, says the body is compressed as surely as a single gzip: it
    is refused, not read as JSON (only the first line was read, so gzip after identity reached the decoder)."""
    body = gzip.compress(sample("consume"))
    signature = "".join(f"{name}: {value}\r\n" for name, value in sign(sample("consume")).items()).encode()
    request = (
        b"POST /hc_sync/common HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        + signature
        + encoding_lines
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    status, reply = await raw_exchange(gateway.host, gateway.port, request)
    assert status == 415 and reply["code"] == 415 and "Content-Encoding" in reply["msg"]
    assert await take(amqp, topology.kind_queue("CONSUME"), timeout=0.3) == []
    assert await take(amqp, topology.INVALID_QUEUE, timeout=0.1) == []
