"""The push endpoint through real HTTP into the real RabbitMQ."""

from __future__ import annotations

import json

import pytest

from gateway.app_keys import METRICS
from schemas import topology
from schemas.samples import sample_names
from tests.support.broker import take
from tests.support.keys import write_public_keys

SAMPLES = sample_names()

pytestmark = pytest.mark.broker
PATH = "/hc_sync/common"
OK = {"code": 1, "msg": "ok", "data": {}}


async def assert_refused(response, status: int) -> dict:
    assert response.status == status
    assert response.content_type == "application/json"
    reply = await response.json()
    assert set(reply) == {"code", "msg", "data"} and reply["code"] != 1 and reply["data"] == {}
    return reply


@pytest.mark.parametrize("name", SAMPLES)
async def test_each_sample_lands_on_its_queue_with_exact_body_and_headers(gateway, amqp, sign, sample, name):
    body = sample(name)
    headers = sign(body)
    response = await gateway.post(PATH, data=body, headers=headers)
    assert response.status == 200 and await response.json() == OK

    kind = json.loads(body)["notify_type"]
    (message,) = await take(amqp, topology.kind_queue(kind))
    assert message.body == body
    assert message.delivery_mode == 2 and message.content_type == "application/json"
    assert message.message_id and message.timestamp is not None
    h = message.headers
    assert h["notify_type"] == kind and h["signature_outcome"] == "valid" and h["client_ip"] == "127.0.0.1"
    assert len(h["event_id"]) == 32 and h["received_at"]
    platform = h["platform_headers"]
    for name_ in ("api-key", "timestamp", "nonce", "version", "signature"):
        assert platform[name_] == headers[name_]


async def test_the_same_event_twice_keeps_its_event_id_but_not_its_message_id(gateway, amqp, sign, sample):
    body = sample("recharge")
    for _ in range(2):
        assert (await gateway.post(PATH, data=body, headers=sign(body))).status == 200
    first, second = await take(amqp, topology.kind_queue("RECHARGE"))
    assert first.headers["event_id"] == second.headers["event_id"]
    assert first.message_id != second.message_id


async def test_unknown_kind_is_accepted_and_kept_in_unrouted(gateway, amqp, sign):
    # A kind no test declares: CARD_STATUS_CHANGE, the README's example, is a kind once a test has loaded it.
    body = b'{"notify_type":"CARD_NEVER_DECLARED","card_id":"1","old_status":"1","new_status":"2"}'
    response = await gateway.post(PATH, data=body, headers=sign(body))
    assert await response.json() == OK
    (message,) = await take(amqp, topology.UNROUTED_QUEUE)
    assert message.body == body and message.routing_key == "hypercard.card_never_declared"


@pytest.mark.parametrize(
    "kind",
    ["open_card", "Open_Card", "OPEN_CARD\n", " OPEN_CARD", "OPEN_CARD ", "OPEN_CAR\u0110", "card_status_change"],
)
async def test_a_kind_that_is_not_exactly_a_kind_name_never_reaches_a_kind_queue(gateway, amqp, sign, sample, kind):
    """Routing keys are the kind in lower case: `open_card` would share OPEN_CARD's queue, `card_status_change` a
    user worker's CARD_STATUS_CHANGE queue. A kind name is upper case: anything else is kept in hypercard.invalid."""
    body = json.dumps({**json.loads(sample("open_card")), "notify_type": kind}).encode()
    assert await (await gateway.post(PATH, data=body, headers=sign(body))).json() == OK
    (message,) = await take(amqp, topology.INVALID_QUEUE)
    assert message.body == body and "notify_type" in message.headers["validation_error"]
    assert await take(amqp, topology.kind_queue("OPEN_CARD"), timeout=0.2) == []
    assert await take(amqp, topology.UNROUTED_QUEUE, timeout=0.2) == []


@pytest.mark.parametrize("kind", ["INVALID", "UNVERIFIED", "UNROUTED", "EVENTS"])
async def test_a_notify_type_named_like_the_topologys_own_queues_is_kept_in_invalid(gateway, amqp, sign, kind):
    """Issue 26: `UNVERIFIED` routes as `hypercard.unverified`, the queue of events the signature does not vouch for;
    a genuine push of that name would sit there as `valid`, and a worker of that kind would consume the queue."""
    body = json.dumps({"notify_type": kind, "card_id": "1"}).encode()
    assert await (await gateway.post(PATH, data=body, headers=sign(body))).json() == OK
    (message,) = await take(amqp, topology.INVALID_QUEUE)
    assert message.body == body and "reserved" in message.headers["validation_error"]
    assert message.routing_key == topology.INVALID_ROUTING_KEY and message.type == "INVALID"
    for queue in (topology.UNVERIFIED_QUEUE, topology.UNROUTED_QUEUE):
        assert await take(amqp, queue, timeout=0.2) == []


async def test_schema_invalid_known_kind_is_quarantined_with_the_reason(gateway, amqp, sign):
    body = (
        b'{"notify_type":"OPEN_CARD","card_type_id":"4","email":"a@b.c","mobile":"123","mobile_code":"86","result":1}'
    )
    response = await gateway.post(PATH, data=body, headers=sign(body))
    assert await response.json() == OK
    (message,) = await take(amqp, topology.INVALID_QUEUE)
    assert message.body == body
    assert "$.mobile" in message.headers["validation_error"]
    assert await take(amqp, topology.kind_queue("OPEN_CARD"), timeout=0.2) == []


@pytest.mark.parametrize("expired_time", [100_000_000_000_000, "100000000000000"])
async def test_an_implausible_time_is_quarantined_with_its_path(gateway, amqp, sign, sample, expired_time):
    body = json.dumps({**json.loads(sample("auth_3ds")), "expired_time": expired_time}).encode()
    assert await (await gateway.post(PATH, data=body, headers=sign(body))).json() == OK
    (message,) = await take(amqp, topology.INVALID_QUEUE)
    assert message.body == body and "$.expired_time" in message.headers["validation_error"]
    assert await take(amqp, topology.kind_queue("AUTH_3DS"), timeout=0.2) == []


async def test_quirky_types_and_unknown_fields_are_accepted(gateway, amqp, sign):
    body = json.dumps(
        {
            "notify_type": "BUY_COIN",
            "card_id": "1",
            "mc_trade_no": "m",
            "tx_id": "t",
            "status": "1",
            "new_field": {"x": 1},
        }
    ).encode()
    assert await (await gateway.post(PATH, data=body, headers=sign(body))).json() == OK
    assert len(await take(amqp, topology.kind_queue("BUY_COIN"))) == 1


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"signature": None}, 401),
        ({"timestamp": "1"}, 401),
        ({"nonce": None}, 401),
        ({"signature": "bm90IGEgc2lnbmF0dXJl"}, 401),
        ({"signature": "%%%garbage"}, 401),
    ],
)
async def test_bad_signatures_are_refused_and_nothing_is_published(gateway, amqp, sign, sample, change, status):
    body = sample("opt_code")
    headers = sign(body)
    for name, value in change.items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    await assert_refused(await gateway.post(PATH, data=body, headers=headers), status)
    assert await take(amqp, topology.kind_queue("OPT_CODE"), timeout=0.3) == []


async def test_signature_by_another_key_and_tampered_body_are_refused(gateway, amqp, sign, sample, other_key):
    body = sample("cancel_card")
    await assert_refused(await gateway.post(PATH, data=body, headers=sign(body, key=other_key)), 401)
    tampered = body.replace(b"100.00", b"900.00")
    await assert_refused(await gateway.post(PATH, data=tampered, headers=sign(body)), 401)
    assert await take(amqp, topology.kind_queue("CANCEL_CARD"), timeout=0.3) == []


async def test_key_rotation_accepts_both_keys(make_gateway, amqp, sign, sample, tmp_path, platform_key, other_key):

    keys = write_public_keys(tmp_path / "both.pem", platform_key, other_key)
    client = await make_gateway(platform_public_key=str(keys))
    body = sample("consume")
    for key in (platform_key, other_key):
        assert (await client.post(PATH, data=body, headers=sign(body, key=key))).status == 200
    assert len(await take(amqp, topology.kind_queue("CONSUME"))) == 2


async def test_monitor_mode_keeps_a_bad_signature_for_review_never_for_the_workers(make_gateway, amqp, sample):
    client = await make_gateway(signature_mode="monitor")
    body = sample("consume")
    response = await client.post(PATH, data=body, headers={"Content-Type": "application/json", "signature": "AAAA"})
    assert await response.json() == OK
    (message,) = await take(amqp, topology.UNVERIFIED_QUEUE)
    assert message.body == body and message.headers["notify_type"] == "CONSUME"
    assert message.headers["signature_outcome"] == "missing" and "api-key" in message.headers["unverified_reason"]
    assert await take(amqp, topology.kind_queue("CONSUME"), timeout=0.3) == []
    metrics = client.server.app[METRICS].exposition().decode()
    assert 'hypercard_gateway_signature_failures_total{reason="missing"} 1.0' in metrics
    assert 'hypercard_gateway_unverified_total{reason="missing"} 1.0' in metrics


async def test_monitor_mode_routes_a_genuine_event_as_usual(make_gateway, amqp, sign, sample):
    client = await make_gateway(signature_mode="monitor")
    body = sample("consume")
    assert await (await client.post(PATH, data=body, headers=sign(body))).json() == OK
    (message,) = await take(amqp, topology.kind_queue("CONSUME"))
    assert message.headers["signature_outcome"] == "valid"


async def test_off_mode_accepts_unsigned_events(make_gateway, amqp, sample):
    client = await make_gateway(signature_mode="off", platform_public_key="")
    body = sample("consume")
    assert (await client.post(PATH, data=body, headers={"Content-Type": "application/json"})).status == 200
    (message,) = await take(amqp, topology.kind_queue("CONSUME"))
    assert message.headers["signature_outcome"] == "unchecked"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"not json", 400, "JSON object"),
        (b"[1, 2]", 400, "JSON object"),
        (b"", 400, "JSON object"),
        (b'{"card_id": "1"}', 400, "notify_type"),
    ],
)
async def test_malformed_bodies_get_400(make_gateway, amqp, body, status, words):
    client = await make_gateway(signature_mode="off", platform_public_key="")
    reply = await assert_refused(
        await client.post(PATH, data=body, headers={"Content-Type": "application/json"}), status
    )
    assert words in reply["msg"]


async def test_too_large_and_wrong_content_type(gateway, sign):
    big = b'{"notify_type":"CONSUME","card_id":"' + b"1" * 70000 + b'"}'
    await assert_refused(await gateway.post(PATH, data=big, headers=sign(b"{}")), 413)
    body = b'{"notify_type":"CONSUME","card_id":"1"}'
    await assert_refused(await gateway.post(PATH, data=body, headers={**sign(body), "Content-Type": "text/plain"}), 415)


async def test_chunked_body_over_the_limit_is_refused(make_gateway, sign):
    client = await make_gateway(max_body_bytes=100)

    async def chunks():
        for _ in range(10):
            yield b"x" * 50

    await assert_refused(await client.post(PATH, data=chunks(), headers=sign(b"{}")), 413)


async def test_other_paths_and_methods(gateway):
    await assert_refused(await gateway.get("/nowhere"), 404)
    await assert_refused(await gateway.get(PATH), 405)
    await assert_refused(await gateway.put(PATH), 405)


async def test_allow_list(make_gateway, amqp, sign, sample):
    body = sample("consume")
    refused = await make_gateway(allowed_ips=["10.0.0.0/8"])
    await assert_refused(await refused.post(PATH, data=body, headers=sign(body)), 403)
    allowed = await make_gateway(allowed_ips=["10.0.0.0/8", "127.0.0.1/32"])
    assert (await allowed.post(PATH, data=body, headers=sign(body))).status == 200


async def test_forwarded_for_is_believed_only_from_trusted_proxies(make_gateway, amqp, sign, sample):
    body = sample("consume")
    spoofed = {"X-Forwarded-For": "10.1.2.3"}
    untrusted = await make_gateway(allowed_ips=["10.0.0.0/8"])
    await assert_refused(await untrusted.post(PATH, data=body, headers=sign(body, **spoofed)), 403)

    trusted = await make_gateway(allowed_ips=["10.0.0.0/8"], trusted_proxies=["127.0.0.1/32"])
    assert (await trusted.post(PATH, data=body, headers=sign(body, **spoofed))).status == 200
    (message,) = await take(amqp, topology.kind_queue("CONSUME"))
    assert message.headers["client_ip"] == "10.1.2.3"
    chain = {"X-Forwarded-For": "10.1.2.3, 192.168.9.9"}  # the right-most untrusted hop is the client
    await assert_refused(await trusted.post(PATH, data=body, headers=sign(body, **chain)), 403)


async def test_extra_path_with_a_default_kind(make_gateway, amqp, sign):
    client = await make_gateway(extra_paths=["/hc_sync/recharge=RECHARGE", "/legacy"])
    body = b'{"card_id":"1","mc_trade_no":"m-1","result":"1"}'
    assert await (await client.post("/hc_sync/recharge", data=body, headers=sign(body))).json() == OK
    (message,) = await take(amqp, topology.kind_queue("RECHARGE"))
    assert message.body == body and message.headers["notify_type"] == "RECHARGE"
    await assert_refused(await client.post("/legacy", data=body, headers=sign(body)), 400)


async def test_health_and_readiness(gateway):
    assert await (await gateway.get("/healthz")).json() == OK
    assert await (await gateway.get("/readyz")).json() == OK


async def test_a_held_messages_headers_carry_no_wire_text_uncut_or_unscrubbed(gateway, amqp, sign, sample):
    """A notify_type that is no kind name reaches the held message's headers cut and scrubbed, as on a log line, and
    so does the reason quoting it; the body, the event as sent, is kept whole."""
    kind = "josé@example.com " + "x" * 5000
    body = json.dumps({**json.loads(sample("open_card")), "notify_type": kind}).encode()
    assert await (await gateway.post(PATH, data=body, headers=sign(body))).json() == OK
    (message,) = await take(amqp, topology.INVALID_QUEUE)
    assert message.body == body
    headers = json.dumps(message.headers, default=str, ensure_ascii=False)
    assert "josé@example.com" not in headers and "x" * 100 not in headers
    assert message.headers["notify_type"].startswith("[redacted]")
