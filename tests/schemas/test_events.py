from __future__ import annotations

import json

import msgspec
import pytest

from infra.redaction import SECRET_KEYS
from schemas.events import (
    EVENT_DECODER,
    KNOWN_EVENTS,
    KNOWN_KINDS,
    MAX_BUSINESS_ID_LENGTH,
    ApplicationResult,
    Auth3ds,
    CoinStatus,
    OpenCard,
    OperateStatus,
    Operation,
    Recharge,
)
from schemas.samples import sample_body, sample_names


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


# Every documented string field of each kind, by sample name: the platform has sent such fields as JSON numbers.
STRING_FIELDS = {
    "open_card": ["card_type_id", "mobile", "mobile_code", "remark", "mc_trade_no"],
    "recharge": ["card_id", "mc_trade_no", "remark"],
    "operation": ["card_id", "request_number"],
    "consume": ["card_id"],
    "buy_coin": ["card_id", "mc_trade_no", "tx_id", "reason"],
    "cancel_card": ["card_id", "refund_amount"],
    "auth_3ds": ["card_id", "txn_amount", "card_acceptor_merchant_name", "card_acceptor_location_country",
                 "app_card_id", "app3ds_auth_transaction_id"],
    "opt_code": ["card_id", "code"],
    "card_config_change": ["card_type_id"],
}  # fmt: skip


@pytest.mark.parametrize(("name", "field"), [(n, f) for n, fs in STRING_FIELDS.items() for f in fs])
def test_a_string_field_sent_as_a_number_is_its_decimal_text(name, field):
    number = {"mobile_code": 86, "mobile": 18301523750}.get(field, 48291377)
    body = json.loads(sample_body(name)) | {field: number}
    assert getattr(EVENT_DECODER.decode(json.dumps(body)), field) == str(number)


def test_strings_sent_as_numbers_keep_their_limits_and_refuse_other_types():
    code = json.loads(sample_body("opt_code"))
    assert EVENT_DECODER.decode(json.dumps(code | {"code": 482913})).code == "482913"
    cancel = json.loads(sample_body("cancel_card"))
    assert EVENT_DECODER.decode(json.dumps(cancel | {"refund_amount": 100.5})).refund_amount == "100.5"
    card = json.loads(sample_body("open_card"))
    with pytest.raises(msgspec.ValidationError, match=r"\$\.mobile"):
        EVENT_DECODER.decode(json.dumps(card | {"mobile": 12345}))  # 5 digits: under the documented 6
    for wrong in (True, [1], {"a": 1}):
        with pytest.raises(msgspec.ValidationError, match=r"\$\.card_id"):
            EVENT_DECODER.decode(json.dumps(code | {"card_id": wrong}))


TIME_FIELDS = [
    ("auth_3ds", "expired_time"),
    ("auth_3ds", "created_Time"),
    ("auth_3ds", "updated_Time"),
    ("opt_code", "create_time"),
    ("card_config_change", "modify_time"),
]


@pytest.mark.parametrize(("name", "field"), TIME_FIELDS)
@pytest.mark.parametrize("value", [100_000_000_000_000, "100000000000000", 4_102_444_801, 1_420_070_399, -1, "0"])
def test_time_fields_out_of_the_plausible_range_are_refused_with_their_path(name, field, value):
    """Unix seconds from 2015-01-01 to 2100-01-01, as numbers or as numbers sent as strings: a handler given the year
    3,170,843 fails at every attempt."""
    body = json.loads(sample_body(name)) | {field: value}
    with pytest.raises(msgspec.ValidationError, match=rf"\$\.{field}"):
        EVENT_DECODER.decode(json.dumps(body))


@pytest.mark.parametrize(("name", "field"), TIME_FIELDS)
@pytest.mark.parametrize("value", [1_420_070_400, 4_102_444_800, "1710412477"])
def test_time_fields_within_the_range_are_accepted(name, field, value):
    body = json.loads(sample_body(name)) | {field: value}
    assert getattr(EVENT_DECODER.decode(json.dumps(body)), field) == int(value)


@pytest.mark.parametrize("event_type", KNOWN_EVENTS, ids=lambda event_type: event_type.kind())
def test_business_ids_are_fields_of_the_kind_and_never_secret(event_type):
    ids = event_type.business_ids
    assert len(set(ids)) == len(ids)
    assert set(ids) <= set(event_type.__struct_fields__)
    assert not set(ids) & (event_type.sensitive | SECRET_KEYS)
    assert "card_no" not in ids  # a card number, even masked, is no business id


def test_each_kind_logs_its_trade_card_operation_auth_and_purchase_ids():
    ids = {event_type.kind(): event_type.business_ids for event_type in KNOWN_EVENTS}
    assert ids == {
        "OPEN_CARD": ("mc_trade_no",),
        "RECHARGE": ("card_id", "mc_trade_no"),
        "OPERATION": ("card_id", "request_number"),
        "CONSUME": ("card_id",),
        "BUY_COIN": ("card_id", "mc_trade_no", "tx_id"),
        "CANCEL_CARD": ("card_id",),
        "AUTH_3DS": ("auth_id", "card_id"),
        "OPT_CODE": ("card_id",),
        "CARD_CONFIG_CHANGE": (),
    }


def test_business_id_values_are_plain_bounded_and_only_those_present():
    recharge = EVENT_DECODER.decode(sample_body("recharge"))
    long_id = "T" * (MAX_BUSINESS_ID_LENGTH + 100)
    values = msgspec.structs.replace(recharge, mc_trade_no=long_id).business_id_values()
    assert values == {"card_id": "00003454323400000028888", "mc_trade_no": "T" * MAX_BUSINESS_ID_LENGTH}
    assert all(type(value) is str for value in values.values())  # not the schemas' Text subclass

    assert EVENT_DECODER.decode(sample_body("auth_3ds")).business_id_values()["auth_id"] == 283
    body = json.loads(sample_body("auth_3ds")) | {"auth_id": 10**30}
    assert "auth_id" not in EVENT_DECODER.decode(json.dumps(body)).business_id_values()

    without_trade = json.loads(sample_body("open_card"))
    del without_trade["mc_trade_no"]
    event = EVENT_DECODER.decode(json.dumps(without_trade))
    assert isinstance(event, OpenCard) and event.business_id_values() == {}
