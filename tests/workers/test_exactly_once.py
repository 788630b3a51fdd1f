"""Exactly once, for exactly the genuine events: the real path, HTTP -> gateway -> RabbitMQ -> worker -> PostgreSQL."""

from __future__ import annotations

import json

import pytest

from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
PATH = "/hc_sync/common"

# One documented field changed: a second, genuine notification.
SECOND_NOTIFICATION = {
    "open_card": {"remark": "second application"},
    "recharge": {"result": "2"},
    "operation": {"operate_status": "2"},
    "buy_coin": {"status": "1"},
    "cancel_card": {"refund_amount": "50.00"},
    "auth_3ds": {"updated_Time": 1699865735},
    "opt_code": {"code": "222222"},
    "card_config_change": {"modify_time": 1710412478},
    "consume": {},  # the same card again: a new transaction looks like a retry, and each is handled
}


def counts(runtime, kind: str) -> tuple[float, float]:
    return runtime.metrics.handled.labels(kind)._value.get(), runtime.metrics.duplicates.labels(kind)._value.get()


@pytest.mark.parametrize("name", sorted(SECOND_NOTIFICATION))
async def test_a_second_notification_is_handled_and_a_platform_retry_is_not(gateway, make_worker, sign, sample, name):
    body = sample(name)
    kind = json.loads(body)["notify_type"]
    second = json.dumps(json.loads(body) | SECOND_NOTIFICATION[name]).encode()
    runtime = await make_worker(kind)
    for payload in (body, second, body):  # the last: a retry, with a new nonce, timestamp and signature
        assert (await gateway.post(PATH, data=payload, headers=sign(payload))).status == 200
    expected = (3.0, 0.0) if kind == "CONSUME" else (2.0, 1.0)

    async def settled() -> bool:
        return counts(runtime, kind) == expected

    await eventually(settled)


async def test_a_forged_event_in_monitor_mode_never_takes_the_genuine_ones_place(
    make_gateway, amqp, make_worker, sign, sample, other_key
):
    client = await make_gateway(signature_mode="monitor")
    runtime = await make_worker("OPT_CODE")
    body = sample("opt_code")
    forged = await client.post(PATH, data=body, headers=sign(body, key=other_key))
    assert (await forged.json())["code"] == 1  # kept for review, not acted on
    genuine = await client.post(PATH, data=body, headers=sign(body))
    assert (await genuine.json())["code"] == 1

    async def handled_once() -> bool:
        return counts(runtime, "OPT_CODE") == (1.0, 0.0)

    await eventually(handled_once)


async def test_open_card_applications_without_mc_trade_no_never_share_a_row(gateway, make_worker, db, sign, sample):
    await make_worker("OPEN_CARD")
    first = {k: v for k, v in json.loads(sample("open_card")).items() if k != "mc_trade_no"}
    for payload in (first, first | {"remark": "applied again"}):
        body = json.dumps(payload).encode()
        assert (await gateway.post(PATH, data=body, headers=sign(body))).status == 200

    async def two_rows() -> bool:
        return await db.fetchval("SELECT count(*) FROM hypercard_card_applications") == 2

    await eventually(two_rows)


async def test_a_genuine_open_card_re_cut_with_strings_spelling_empty_is_handled_once(
    gateway, make_worker, db, sign, sample
):
    """Issue 26, finding 2: a genuine OPEN_CARD without its optional fields, re-sent four times with the genuine
    signature and `"mc_trade_no"`/`"remark"` holding the string "[]" or "{}". Were such a string taken for the
    empty value, each re-cut would verify and apply for a card again (before the fix: 5 applications)."""
    runtime = await make_worker("OPEN_CARD")
    optional = ("mc_trade_no", "remark")
    genuine = {k: v for k, v in json.loads(sample("open_card")).items() if k not in optional}
    body = json.dumps(genuine).encode()
    headers = sign(body)
    re_cuts = [json.dumps(genuine | {field: spelling}).encode() for field in optional for spelling in ("[]", "{}")]
    for payload in (body, *re_cuts):
        response = await gateway.post(PATH, data=payload, headers=headers)
        reply = await response.json()
        assert response.status in (200, 401) and reply["code"] == (1 if response.status == 200 else 401), reply
    # A second, genuine notification posted last: once it is handled, everything posted before it was.
    second = json.dumps(genuine | {"remark": "second application"}).encode()
    assert (await gateway.post(PATH, data=second, headers=sign(second))).status == 200

    async def second_handled() -> bool:
        query = "SELECT count(*) FROM hypercard_card_applications WHERE remark = $1"
        return await db.fetchval(query, "second application") == 1

    await eventually(second_handled)
    applications = await db.fetchval("SELECT count(*) FROM hypercard_card_applications")
    assert (applications, counts(runtime, "OPEN_CARD")[0]) == (2, 2.0), "a re-cut push applied for a card again"


@pytest.mark.parametrize(("name", "field", "text"), [("cancel_card", "refund_amount", "100.00"),
                                                     ("auth_3ds", "txn_amount", "1.00")])  # fmt: skip
async def test_a_genuine_amount_re_sent_as_a_json_number_is_handled_once(
    gateway, make_worker, sign, sample, name, field, text
):
    """Issue 26: a genuine push re-sent with its amount as a JSON number (`100.00` for `"100.00"`) signs alike, so it
    is the same notification: handled once, the re-sent one a duplicate (before the fix: handled twice)."""
    genuine = json.loads(sample(name)) | {field: text}
    kind = genuine["notify_type"]
    runtime = await make_worker(kind)
    body = json.dumps(genuine).encode()
    headers = sign(body)
    as_number = json.dumps(genuine | {field: "\0"}).replace('"\\u0000"', text).encode()
    second = json.dumps(json.loads(body) | SECOND_NOTIFICATION[name]).encode()
    for payload, payload_headers in ((body, headers), (as_number, headers), (second, sign(second))):
        response = await gateway.post(PATH, data=payload, headers=payload_headers)
        assert (response.status, (await response.json())["code"]) == (200, 1)

    async def settled() -> bool:
        return sum(counts(runtime, kind)) == 3

    await eventually(settled)
    assert counts(runtime, kind) == (2.0, 1.0), "(handled, duplicates): the re-sent amount was handled again"
