"""Edge hardening, as an attacker tries it: no crafted request gets an event in, no request gets a 5xx."""

from __future__ import annotations

import asyncio
import json

import pytest
from multidict import CIMultiDict

from gateway.send_cli import generate_keys, signed_headers
from gateway.signature import FIELDS_DECODER, readings, rendered_fields, sign
from infra.identifiers import IdentifierKey
from schemas import topology
from tests.support.broker import take
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import gateway_process

pytestmark = pytest.mark.broker
PATH = "/hc_sync/common"
OK = {"code": 1, "msg": "ok", "data": {}}


def in_contract(reply: object, status: int) -> bool:
    return isinstance(reply, dict) and reply.get("code") == (1 if status == 200 else status) and reply["data"] == {}


async def test_another_merchants_push_is_refused_before_its_signature(make_gateway, amqp, sample, platform_key):
    client = await make_gateway(api_key=["merchant-old", "merchant-1"])  # two during a rotation
    body = sample("consume")
    for api_key, status in (("someone-else", 401), ("merchant-1", 200), ("merchant-old", 200)):
        headers = {**signed_headers(platform_key, body, api_key), "Content-Type": "application/json"}
        response = await client.post(PATH, data=body, headers=headers)
        assert response.status == status and in_contract(await response.json(), status)
    assert len(await take(amqp, topology.kind_queue("CONSUME"))) == 2


@pytest.mark.parametrize("header", ["api-key", "timestamp", "nonce"])
async def test_a_push_signed_without_a_required_header_is_refused(make_gateway, amqp, sample, platform_key, header):
    client = await make_gateway()
    body = sample("recharge")
    headers = {"api-key": "merchant-1", "timestamp": "1710412477", "nonce": "Ab3dE6gH9j", "version": "1.0"}
    del headers[header]
    fields = rendered_fields(FIELDS_DECODER.decode(body))
    signature = sign(platform_key, next(readings(headers, fields)).message)  # genuinely signed, without it
    response = await client.post(
        PATH, data=body, headers={**headers, "signature": signature, "Content-Type": "application/json"}
    )
    assert response.status == 401 and header in (await response.json())["msg"]
    assert await take(amqp, topology.kind_queue("RECHARGE"), timeout=0.3) == []


async def test_a_signed_header_moved_into_a_body_value_is_refused(gateway, amqp, sign):
    original = {"notify_type": "RECHARGE", "card_id": "c-1", "mc_trade_no": "T1", "result": 1}
    body = json.dumps(original).encode()
    headers = sign(body)
    # The same string to sign, the nonce header now read from mc_trade_no's value.
    moved = json.dumps({**original, "mc_trade_no": f"T1&nonce={headers['nonce']}"}).encode()
    del headers["nonce"]
    response = await gateway.post(PATH, data=moved, headers=headers)
    assert response.status == 401
    assert await take(amqp, topology.kind_queue("RECHARGE"), timeout=0.3) == []


async def test_one_field_folded_into_another_is_kept_for_review_not_handled(gateway, amqp, sign):
    """`email` swallowing `mc_trade_no` gives the same string to sign: genuine, but ambiguous."""
    original = {
        "notify_type": "OPEN_CARD", "card_type_id": "4", "email": "a@b.co", "mc_trade_no": "T1",
        "mobile": "18301523750", "mobile_code": "86", "result": 1,
    }  # fmt: skip
    headers = sign(json.dumps(original).encode())
    folded = {k: v for k, v in original.items() if k != "mc_trade_no"} | {"email": "a@b.co&mc_trade_no=T1"}
    response = await gateway.post(PATH, data=json.dumps(folded).encode(), headers=headers)
    assert await response.json() == OK
    (kept,) = await take(amqp, topology.UNVERIFIED_QUEUE)
    assert kept.headers["signature_outcome"] == "ambiguous" and "email" in kept.headers["unverified_reason"]
    assert await take(amqp, topology.kind_queue("OPEN_CARD"), timeout=0.3) == []


async def test_a_genuine_body_with_a_field_named_like_a_signed_header_is_kept_for_review(gateway, amqp, platform_key):
    body = b'{"notify_type":"CONSUME","card_id":"c-1","timestamp":"1710412477"}'
    headers = {**signed_headers(platform_key, body, "merchant-1"), "Content-Type": "application/json"}
    assert await (await gateway.post(PATH, data=body, headers=headers)).json() == OK
    (kept,) = await take(amqp, topology.UNVERIFIED_QUEUE)
    assert kept.headers["signature_outcome"] == "ambiguous" and "timestamp" in kept.headers["unverified_reason"]
    assert await take(amqp, topology.kind_queue("CONSUME"), timeout=0.3) == []


async def test_bodies_the_signature_cannot_tell_apart_share_one_event_id(gateway, amqp, sign):
    base = {"notify_type": "RECHARGE", "card_id": "c-9", "mc_trade_no": "T9", "result": 1}
    body = json.dumps(base).encode()
    headers = sign(body)
    variants = [
        body,
        json.dumps({**base, "x": {}}).encode(),  # an empty object added: left out of the string to sign
        json.dumps({**base, "y": None, "z": "", "w": []}).encode(),
        json.dumps({**base, "result": "1"}).encode(),  # 1 and "1" sign alike
    ]
    for variant in variants:
        assert await (await gateway.post(PATH, data=variant, headers=headers)).json() == OK
    assert await (await gateway.post(PATH, data=body, headers=sign(body))).json() == OK  # a platform retry
    stored = await take(amqp, topology.kind_queue("RECHARGE"))
    assert len(stored) == 5 and {m.headers["event_id"] for m in stored} == {
        IdentifierKey(TEST_ID_SECRET).event_id(b"card_id=c-9&mc_trade_no=T9&notify_type=RECHARGE&result=1")
    }


async def test_a_body_with_a_repeated_top_level_key_is_refused(gateway, amqp, sign):
    body = b'{"notify_type":"RECHARGE","card_id":"c-1","mc_trade_no":"T1","result":2,"result":1}'
    response = await gateway.post(PATH, data=body, headers=sign(body))
    assert response.status == 400 and "result" in (await response.json())["msg"]
    spaced = b'{"notify_type" : "CONSUME", "card_id" : "1", "card_id" : "2"}'
    assert (await gateway.post(PATH, data=spaced, headers=sign(spaced))).status == 400
    nested = b'{"notify_type":"CONSUME","card_id":"1","extra":{"a":1,"b":{"a":2}},"note":"x\\":y"}'
    assert (await gateway.post(PATH, data=nested, headers=sign(nested))).status == 200


@pytest.mark.parametrize(
    "value",
    ["T&C", "a=b", "", "carte bancaire \u00e9t\u00e9 \u4e2d\u6587 \U0001f4b3", {"nested": {"deep": [1, "x"]}}, [1, 2]],
)
async def test_values_with_separators_unicode_and_nesting_travel_through_the_signed_string(gateway, amqp, sign, value):
    body = json.dumps({"notify_type": "RECHARGE", "card_id": "c-1", "mc_trade_no": "T1", "result": 1, "note": value})
    response = await gateway.post(PATH, data=body.encode(), headers=sign(body.encode()))
    assert await response.json() == OK
    (message,) = await take(amqp, topology.kind_queue("RECHARGE"))
    assert message.body == body.encode() and message.headers["signature_outcome"] == "valid"


async def test_a_string_field_sent_as_a_number_reaches_its_kind_not_quarantine(gateway, amqp, sign):
    for body, kind in (
        (
            b'{"notify_type":"OPT_CODE","card_id":1085185460000094505,"code":482913,"create_time":1710412477}',
            "OPT_CODE",
        ),
        (b'{"notify_type":"CONSUME","card_id":6654358889900018888}', "CONSUME"),
    ):
        assert await (await gateway.post(PATH, data=body, headers=sign(body))).json() == OK
        (message,) = await take(amqp, topology.kind_queue(kind))
        assert message.body == body  # the exact body is what is published
    assert await take(amqp, topology.INVALID_QUEUE, timeout=0.3) == []


async def test_metrics_are_not_served_on_the_push_port(gateway):
    response = await gateway.get("/metrics")
    assert response.status == 404 and in_contract(await response.json(), 404)


READ_HEADERS = ["api-key", "timestamp", "nonce", "version", "lang", "signature", "Content-Type", "X-Forwarded-For"]


async def test_every_byte_value_in_every_header_gets_a_reply_from_the_contract(gateway, platform_key):
    """Raw HTTP, so no client library cleans the bytes: never a 5xx, never a reply outside the contract."""
    body = b'{"notify_type":"CONSUME","card_id":"1"}'
    headers = signed_headers(platform_key, body, "merchant-1", lang="en")
    headers |= {"content-type": "application/json", "x-forwarded-for": "10.0.0.1"}
    statuses: set[int] = set()
    for name in READ_HEADERS:
        for byte in range(256):
            value = headers[name.lower()].encode() + bytes([byte]) + b"x"
            lines = [f"{n}: {v}".encode() for n, v in headers.items() if n != name.lower()]
            request = b"\r\n".join(
                [b"POST /hc_sync/common HTTP/1.1", b"Host: gw", f"Content-Length: {len(body)}".encode(),
                 b"Connection: close", name.encode() + b": " + value, *lines]
            ) + b"\r\n\r\n" + body  # fmt: skip
            reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
            writer.write(request)
            reply = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await writer.wait_closed()
            head, _, payload = reply.partition(b"\r\n\r\n")
            status = int(head.split(b" ")[1])
            statuses.add(status)
            assert status < 500, (name, byte, reply)
            assert in_contract(json.loads(payload), status), (name, byte, reply)
    assert 400 in statuses and 401 in statuses


async def test_every_forwarded_for_line_is_read_from_the_right(make_gateway, amqp, sign, sample):
    """A proxy that appends its own line (HAProxy's `option forwardfor`) after the client's spoofed one."""
    client = await make_gateway(allowed_ips=["10.0.0.0/8"], trusted_proxies=["127.0.0.1/32"])
    body = sample("consume")
    two_lines = CIMultiDict(sign(body))
    two_lines.add("X-Forwarded-For", "10.1.2.3")  # written by the client
    two_lines.add("X-Forwarded-For", "192.168.7.7")  # appended by the proxy: the real client
    response = await client.post(PATH, data=body, headers=two_lines)
    assert response.status == 403 and "192.168.7.7" in (await response.json())["msg"]


async def test_slow_headers_and_idle_keep_alive_connections_are_closed_after_the_read_timeout(tmp_path):
    generate_keys(tmp_path)
    port = free_port()
    gateway = gateway_process(tmp_path, port, {"HC_READ_TIMEOUT": "1"})
    try:
        await asyncio.to_thread(wait_until_ready, port)
        loop = asyncio.get_running_loop()

        async def seconds_until_closed(first_bytes: bytes) -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = loop.time()
            writer.write(first_bytes)
            await asyncio.wait_for(reader.read(), 10)  # EOF: the gateway closed the connection
            writer.close()
            await writer.wait_closed()
            return loop.time() - started

        slow_headers = b"POST /hc_sync/common HTTP/1.1\r\nHost: gw\r\nContent-Type: appl"  # ...and it stalls
        assert await seconds_until_closed(slow_headers) < 3
        assert await seconds_until_closed(b"") < 3  # connected, never a request
        # Keep-alive: after a reply the connection waits at most the read timeout for the next request.
        idle_after_reply = await seconds_until_closed(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert idle_after_reply < 3
    finally:
        gateway.stop()
