"""String to sign and SHA256withRSA verification, against expectations written out by hand from PLATFORM.md."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.signature import (
    FIELDS_DECODER,
    SignatureVerifier,
    ambiguity,
    malformed_header,
    readings,
    rendered_fields,
    sign,
    string_to_sign,
)
from schemas.samples import sample_body

HEADERS = {"api-key": "merchant-1", "timestamp": "1710412477", "nonce": "Ab3dE6gH9j", "version": "1.0"}
H = "api-key=merchant-1&nonce=Ab3dE6gH9j&timestamp=1710412477&version=1.0"

# Written by hand: fields sorted by byte order (upper case before lower case, `_` after upper case letters).
EXPECTED = {
    "open_card": "api-key=merchant-1&card_type_id=40000002&email=example@gmail.com&mc_trade_no=48d2741747a449361739208"
    "&mobile=18301523750&mobile_code=86&nonce=Ab3dE6gH9j&notify_type=OPEN_CARD&remark=Remark&result=1"
    "&timestamp=1710412477&version=1.0",
    "recharge": "api-key=merchant-1&card_id=00003454323400000028888&mc_trade_no=48d2741747a4493223feb22"
    "&nonce=Ab3dE6gH9j&notify_type=RECHARGE&result=1&timestamp=1710412477&version=1.0",
    "operation": "api-key=merchant-1&card_id=00003454323400000028888&nonce=Ab3dE6gH9j&notify_type=OPERATION"
    "&operate_status=1&request_number=48d2741747a449b2968a91e2523feb22&timestamp=1710412477&version=1.0",
    "consume": "api-key=merchant-1&card_id=6654358889900018888&nonce=Ab3dE6gH9j&notify_type=CONSUME"
    "&timestamp=1710412477&version=1.0",
    "buy_coin": "api-key=merchant-1&card_id=6283244889900010107&mc_trade_no=48d2741747a4493223feb24"
    "&nonce=Ab3dE6gH9j&notify_type=BUY_COIN&reason=insufficient balance&status=2&timestamp=1710412477"
    "&tx_id=20230413145817505390&version=1.0",
    "cancel_card": "api-key=merchant-1&card_id=20230413145817505390&nonce=Ab3dE6gH9j&notify_type=CANCEL_CARD"
    "&refund_amount=100.00&timestamp=1710412477&version=1.0",
    "auth_3ds": "api-key=merchant-1&app3ds_auth_transaction_id=aa61a6ca-a455-4740-9c56-ae83e4dd3798"
    "&app_card_id=crd_y37fq5widtmubgavtthyoqpwia&auth_id=283&auth_result=2&card_acceptor_location_country=1"
    "&card_acceptor_merchant_name=Amazon&card_id=15723682800000053333&card_no=103411******3333"
    "&created_Time=1699865734&expired_time=1706650873&nonce=Ab3dE6gH9j&notify_type=AUTH_3DS&timestamp=1710412477"
    "&txn_amount=1.00&txn_currency=EUR&updated_Time=1699865734&version=1.0",
    "opt_code": "api-key=merchant-1&card_id=1085185460000094505&code=888666&create_time=1710412477"
    "&nonce=Ab3dE6gH9j&notify_type=OPT_CODE&timestamp=1710412477&version=1.0",
    "card_config_change": "api-key=merchant-1&card_type_id=40000002&modify_time=1710412477&nonce=Ab3dE6gH9j"
    "&notify_type=CARD_CONFIG_CHANGE&timestamp=1710412477&version=1.0",
}


def fields(body: bytes | dict) -> dict[str, str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return rendered_fields(FIELDS_DECODER.decode(raw))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_string_to_sign_of_each_sample(name: str) -> None:
    assert string_to_sign(HEADERS, fields(sample_body(name))).decode() == EXPECTED[name]


def test_empty_values_and_signature_are_left_out() -> None:
    body = {"notify_type": "RECHARGE", "remark": "", "mc_trade_no": None, "signature": "zzz", "result": 1}
    assert string_to_sign({**HEADERS, "signature": "abc"}, fields(body)).decode() == (
        "api-key=merchant-1&nonce=Ab3dE6gH9j&notify_type=RECHARGE&result=1&timestamp=1710412477&version=1.0"
    )


def test_numbers_as_json_text_and_strings_as_they_are() -> None:
    assert string_to_sign({}, fields(b'{"a": 1, "b": "1", "c": 1.50, "d": "x y&z"}')) == b"a=1&b=1&c=1.50&d=x y&z"


def test_lang_is_signed_when_present() -> None:
    assert string_to_sign({**HEADERS, "lang": "zh-CN"}, {}).decode() == (
        "api-key=merchant-1&lang=zh-CN&nonce=Ab3dE6gH9j&timestamp=1710412477&version=1.0"
    )


def test_nested_values_render_as_compact_json_and_empty_ones_are_tried_both_ways() -> None:
    body = fields(b'{"a": {"x": [1, 2]}, "b": true, "e": {}}')
    assert [r.message for r in readings({}, body)] == [b'a={"x":[1,2]}&b=true', b'a={"x":[1,2]}&b=true&e={}']
    assert [r.body for r in readings({}, body)] == [b'a={"x":[1,2]}&b=true', b'a={"x":[1,2]}&b=true&e={}']


def test_each_reading_names_the_body_pairs_it_signs_apart_from_the_headers() -> None:
    (reading,) = readings(HEADERS, fields(sample_body("consume")))
    assert reading.body == b"card_id=6654358889900018888&notify_type=CONSUME"


def test_a_body_field_named_like_a_header_is_ambiguous_and_never_overrides_the_header() -> None:
    body = fields({"nonce": "fromBody", "x": "1"})
    assert ambiguity(body) == "the body field 'nonce' is named like a signed header"
    # Both ways are tried, only to tell a genuine signature from a forged one; the outcome stays ambiguous.
    assert [r.message.decode() for r in readings(HEADERS, body)] == [
        "api-key=merchant-1&nonce=fromBody&timestamp=1710412477&version=1.0&x=1",
        f"{H}&x=1",
    ]


@pytest.mark.parametrize(
    ("value", "ambiguous"),
    [("T1&nonce=abcdefghij", True), ("x&mc_trade_no=T1", True), ("T&C", False), ("a=b", False), ("a & b = c", False)],
)
def test_a_value_holding_a_name_value_pair_is_ambiguous(value: str, ambiguous: bool) -> None:
    assert (ambiguity({"remark": value}) is not None) is ambiguous


@pytest.fixture
def verifier(platform_key) -> SignatureVerifier:
    return SignatureVerifier([platform_key.public_key()])


def test_verifies_the_platform_signature(platform_key, verifier) -> None:
    message = string_to_sign(HEADERS, fields(sample_body("open_card")))
    assert verifier.verify(message, sign(platform_key, message))


def test_refuses_a_signature_by_another_key(other_key, verifier) -> None:
    message = string_to_sign(HEADERS, fields(sample_body("open_card")))
    assert not verifier.verify(message, sign(other_key, message))


def test_refuses_a_tampered_body_or_header(platform_key, verifier) -> None:
    body = json.loads(sample_body("recharge"))
    signature = sign(platform_key, string_to_sign(HEADERS, fields(body)))
    tampered_body = string_to_sign(HEADERS, fields({**body, "result": "2"}))
    tampered_header = string_to_sign({**HEADERS, "timestamp": "1710412478"}, fields(body))
    missing_header = string_to_sign({k: v for k, v in HEADERS.items() if k != "nonce"}, fields(body))
    for message in (tampered_body, tampered_header, missing_header):
        assert not verifier.verify(message, signature)


@pytest.mark.parametrize("garbage", ["", "not base64!!", "@@@@", base64.b64encode(b"short").decode()])
def test_refuses_garbage_signatures(verifier, garbage: str) -> None:
    assert not verifier.verify(b"anything", garbage)


@pytest.mark.parametrize(
    ("name", "value"),
    [("timestamp", "1710412477"), ("timestamp", "1710412477123"), ("nonce", "Ab3dE6gH9j"), ("version", "1.0"),
     ("nonce", "5f0c6a3e-9d1b-4c1e-8f43-2b7d1a9e6c55"), ("version", "2"), ("lang", "en"), ("lang", "zh-CN"),
     ("lang", "zh_CN"), ("api-key", "merchant-1"), ("api-key", "AK:4f2a/9b+c.d~e")],
)  # fmt: skip
def test_headers_in_the_documented_formats_are_well_formed(name: str, value: str) -> None:
    assert malformed_header({name: value}) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("timestamp", "17104124770000"), ("timestamp", "1710412477.5"), ("timestamp", "-1710412477"),
     ("nonce", "Ab3 dE6gH9j"), ("nonce", "a&b=c"), ("nonce", "x" * 65), ("version", "1.0&x=1"), ("version", "v1"),
     ("lang", "en&mc_trade_no=T9"), ("lang", "english please"), ("api-key", "m-1&x=1"), ("api-key", "a=b"),
     ("api-key", "a b")],
)  # fmt: skip
def test_a_header_outside_its_format_is_malformed_and_named(name: str, value: str) -> None:
    assert f"the {name} header" in (malformed_header({name: value}) or "")


@pytest.mark.parametrize("name", ["created_Time", "app3ds_auth_transaction_id", "x1"])
def test_documented_body_names_are_unambiguous(name: str) -> None:
    assert ambiguity({name: "1"}) is None


@pytest.mark.parametrize("name", ["a=1&b", "a&b", "a=b", "api-key", "card id", "", "carte_\u00e9"])
def test_a_body_name_outside_the_documented_alphabet_is_ambiguous(name: str) -> None:
    assert ambiguity({name: "1"}) is not None
