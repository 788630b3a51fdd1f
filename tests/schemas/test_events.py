from __future__ import annotations

import json

import msgspec
import pytest

from gateway.send import sample_body, sample_names
from schemas.events import (
    EVENT_DECODER,
    KNOWN_KINDS,
    ApplicationResult,
    Auth3ds,
    BuyCoin,
    CoinStatus,
    OpenCard,
    OperateStatus,
    Operation,
    Recharge,
)


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_decodes_as_its_kind(name):
    event = EVENT_DECODER.decode(sample_body(name))
    assert event.kind() == json.loads(sample_body(name))["notify_type"]


def test_the_nine_documented_kinds_are_known():
    assert (
        len(sample_names()) == 9
        and {EVENT_DECODER.decode(sample_body(n)).kind() for n in sample_names()} == KNOWN_KINDS
    )


def test_numbers_sent_as_strings_become_enums():
    assert EVENT_DECODER.decode(sample_body("recharge")).result is ApplicationResult.SUCCESS
    assert EVENT_DECODER.decode(sample_body("buy_coin")).status is CoinStatus.FAILED
    operation = EVENT_DECODER.decode(sample_body("operation"))
    assert isinstance(operation, Operation) and operation.operate_status is OperateStatus.SUCCESS


def test_country_sent_as_a_number_is_kept_as_a_string_and_amount_stays_decimal_text():
    event = EVENT_DECODER.decode(sample_body("auth_3ds"))
    assert isinstance(event, Auth3ds)
    assert event.card_acceptor_location_country == "1" and event.txn_amount == "1.00"


def test_unknown_fields_are_ignored():
    body = json.loads(sample_body("recharge")) | {"brand_new": {"nested": [1]}}
    assert isinstance(EVENT_DECODER.decode(json.dumps(body)), Recharge)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"email": "x" * 65}, "$.email"),
        ({"mobile": "12345"}, "$.mobile"),
        ({"mobile": "123456789012"}, "$.mobile"),
        ({"mobile_code": "123456"}, "$.mobile_code"),
        ({"result": 3}, "$.result"),
        ({"card_type_id": None}, "$.card_type_id"),
    ],
)
def test_documented_limits_are_enforced(change, path):
    body = json.loads(sample_body("open_card")) | change
    with pytest.raises(msgspec.ValidationError, match=path.replace("$", r"\$")):
        EVENT_DECODER.decode(json.dumps(body))


def test_amounts_must_be_decimal_text():
    body = json.loads(sample_body("cancel_card")) | {"refund_amount": "1e5"}
    with pytest.raises(msgspec.ValidationError, match="refund_amount"):
        EVENT_DECODER.decode(json.dumps(body))


def test_idempotency_keys_come_from_natural_identifiers():
    assert EVENT_DECODER.decode(sample_body("open_card")).idempotency_key() == "48d2741747a449361739208:1"
    no_trade = json.loads(sample_body("open_card"))
    del no_trade["mc_trade_no"]
    assert isinstance(card := EVENT_DECODER.decode(json.dumps(no_trade)), OpenCard)
    assert card.idempotency_key() == "40000002:example@gmail.com:18301523750:1"
    assert EVENT_DECODER.decode(sample_body("consume")).idempotency_key() is None
    coin = EVENT_DECODER.decode(sample_body("buy_coin"))
    assert isinstance(coin, BuyCoin) and coin.idempotency_key() == "20230413145817505390:2"
