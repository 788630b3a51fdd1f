"""Each default handler end to end: HTTP -> gateway -> RabbitMQ -> worker -> its row in PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from schemas.events import KNOWN_KINDS
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
PATH = "/hc_sync/common"

EXPECTED_ROWS = {
    "open_card": (
        "SELECT mc_trade_no, card_type_id, result FROM hypercard_card_applications",
        [("48d2741747a449361739208", "40000002", 1)],
    ),
    "recharge": (
        "SELECT mc_trade_no, card_id, result FROM hypercard_recharges",
        [("48d2741747a4493223feb22", "00003454323400000028888", 1)],
    ),
    "operation": (
        "SELECT request_number, operate_status FROM hypercard_card_operations",
        [("48d2741747a449b2968a91e2523feb22", 1)],
    ),
    "consume": ("SELECT card_id, pending FROM hypercard_transaction_syncs", [("6654358889900018888", True)]),
    "buy_coin": (
        "SELECT tx_id, status, reason FROM hypercard_coin_purchases",
        [("20230413145817505390", 2, "insufficient balance")],
    ),
    "cancel_card": (
        "SELECT card_id, refund_amount FROM hypercard_card_cancellations",
        [("20230413145817505390", Decimal("100.00"))],
    ),
    "auth_3ds": (
        "SELECT auth_id, auth_result, location_country, txn_amount, expired FROM hypercard_auths_3ds",
        [(283, 2, "1", Decimal("1.00"), True)],  # the sample's expired_time (2024) is long past: recorded expired
    ),
    "card_config_change": (
        "SELECT card_type_id, extract(epoch FROM modify_time)::bigint FROM hypercard_card_type_configs",
        [("40000002", 1710412477)],
    ),
    "opt_code": ("SELECT kind, event_id IS NOT NULL FROM hypercard_inbox", [("OPT_CODE", True)]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
async def test_default_handler_end_to_end(gateway, make_worker, db, sign, sample, name):
    body = sample(name)
    kind = json.loads(body)["notify_type"]
    await make_worker(kind)
    assert (await gateway.post(PATH, data=body, headers=sign(body))).status == 200
    query, expected = EXPECTED_ROWS[name]

    async def rows():
        return [tuple(row) for row in await db.fetch(query)] == expected

    await eventually(rows)


async def test_every_known_kind_has_a_default_handler():
    from workers.registry import REGISTRY

    assert KNOWN_KINDS <= set(REGISTRY.kinds)


async def test_the_one_time_code_is_never_stored(gateway, make_worker, db, sign, sample):
    await make_worker("OPT_CODE")
    body = sample("opt_code")
    assert (await gateway.post(PATH, data=body, headers=sign(body))).status == 200
    await eventually(lambda: db.fetchval("SELECT count(*) FROM hypercard_inbox"))
    dump = await db.fetchval("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM hypercard_inbox) t")
    assert "888666" not in dump


async def send(gateway, sign, payload: dict) -> None:
    body = json.dumps(payload).encode()
    response = await gateway.post(PATH, data=body, headers=sign(body))
    assert response.status == 200


async def test_duplicates_have_one_effect(gateway, make_worker, db, sign, sample):
    runtime = await make_worker("RECHARGE")
    body = sample("recharge")
    for _ in range(3):
        assert (await gateway.post(PATH, data=body, headers=sign(body))).status == 200

    async def all_seen():
        handled = runtime.metrics.handled.labels("RECHARGE")._value.get()
        duplicates = runtime.metrics.duplicates.labels("RECHARGE")._value.get()
        return handled == 1 and duplicates == 2

    await eventually(all_seen)
    assert await db.fetchval("SELECT count(*) FROM hypercard_inbox WHERE kind = 'RECHARGE'") == 1


@pytest.mark.parametrize(
    ("kind", "payloads", "query", "expected"),
    [
        (
            "OPERATION",
            [{"operate_status": "1"}, {"operate_status": "99"}, {"operate_status": "0"}],
            "SELECT operate_status FROM hypercard_card_operations",
            1,
        ),
        (
            "OPERATION",
            [{"operate_status": "99"}, {"operate_status": "2"}],
            "SELECT operate_status FROM hypercard_card_operations",
            2,
        ),
        ("BUY_COIN", [{"status": 1}, {"status": 0}], "SELECT status FROM hypercard_coin_purchases", 1),
        (
            "CARD_CONFIG_CHANGE",
            [{"modify_time": 1710412000}, {"modify_time": 1710411000}],
            "SELECT extract(epoch FROM modify_time)::bigint FROM hypercard_card_type_configs",
            1710412000,
        ),
        (
            "AUTH_3DS",
            [{"updated_Time": 1710412000, "auth_result": 3}, {"updated_Time": 1710411000, "auth_result": 1}],
            "SELECT auth_result FROM hypercard_auths_3ds",
            3,
        ),
    ],
)
async def test_state_never_goes_backwards(gateway, make_worker, db, sign, sample, kind, payloads, query, expected):
    runtime = await make_worker(kind)
    base = json.loads(sample(kind.lower()))
    for handled, change in enumerate(payloads, 1):
        await send(gateway, sign, base | change)
        # One at a time, in this order: the point is what a late, stale notification does.
        await eventually(lambda n=handled: _inbox_holds(db, n))
    assert runtime.metrics.handled.labels(kind)._value.get() == len(payloads)
    assert await db.fetchval(query) == expected


async def _inbox_holds(db, count: int) -> bool:
    return await db.fetchval("SELECT count(*) FROM hypercard_inbox") >= count
