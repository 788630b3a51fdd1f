"""A captured genuine push re-cut into another one with the same string to sign is never trusted.

A re-cut moves text between names, values and headers: `a=1&b=2` can be read as a field `a` holding `1&b=2`, a
field `a=1&b` holding `2`, or a `lang` header swallowing the body pair that follows it. Its signature verifies (the
platform signed that very string), so it must be refused or kept in hypercard.unverified, never routed to a kind."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.body import body_fields
from gateway.sender_checks import check_signature
from gateway.signature import SIGNATURE_HEADER, SIGNED_HEADERS, SignatureOutcome, SignatureVerifier, string_to_sign
from gateway.signature import sign as sign_message
from schemas import topology
from schemas.events import EVENT_DECODER, Event, decoder_for
from schemas.fields import Text
from schemas.kinds import KINDS
from schemas.samples import sample_body, sample_names
from tests.support.broker import take
from tests.support.database import DATABASE_URL
from tests.support.keys import new_key, write_public_keys
from workers import HandlerContext
from workers.outcomes import Outcome
from workers.registry import Registry
from workers.testing import handler_kit

PATH = "/hc_sync/common"
OK = {"code": 1, "msg": "ok", "data": {}}
HEADERS = {"api-key": "merchant-1", "timestamp": "1710412477", "nonce": "Ab3dE6gH9j", "version": "1.0"}
KEY = new_key()
VERIFIER = SignatureVerifier([KEY.public_key()])


def signed(headers: dict[str, str], body: dict) -> tuple[CIMultiDict[str], bytes]:
    """A genuine push: the body's bytes and its headers with the platform's signature."""
    raw = json.dumps(body).encode()
    signature = sign_message(KEY, string_to_sign(headers, body_fields(raw)))
    return CIMultiDict({**headers, SIGNATURE_HEADER: signature, "Content-Type": "application/json"}), raw


@pytest.fixture
async def gateway(make_gateway, amqp, tmp_path):
    """The real gateway, verifying with this module's platform key."""
    return await make_gateway(platform_public_key=str(write_public_keys(tmp_path / "platform.pem", KEY)))


def outcome(headers: CIMultiDict[str], body: bytes) -> SignatureOutcome:
    return check_signature(headers, body_fields(body), VERIFIER).outcome


AUTH_3DS = json.loads(sample_body("auth_3ds"))
OPEN_CARD = json.loads(sample_body("open_card"))


def name_swallows_the_next_field() -> tuple[CIMultiDict[str], bytes]:
    """Finding 2, first half: the optional app3ds_auth_transaction_id re-cut into a field name."""
    headers, _ = signed(HEADERS, AUTH_3DS)
    recut = {k: v for k, v in AUTH_3DS.items() if k not in ("app3ds_auth_transaction_id", "app_card_id")}
    transaction = AUTH_3DS["app3ds_auth_transaction_id"]
    recut[f"app3ds_auth_transaction_id={transaction}&app_card_id"] = AUTH_3DS["app_card_id"]
    return headers, json.dumps(recut).encode()


def header_swallows_the_next_field(header: str) -> tuple[CIMultiDict[str], bytes]:
    """Finding 2, second half: the body pair sorted right after a signed header moved into that header's value."""
    body, moved = (OPEN_CARD, "mc_trade_no") if header == "lang" else (AUTH_3DS, "app3ds_auth_transaction_id")
    genuine_headers = {**HEADERS, "lang": "en"}
    headers, _ = signed(genuine_headers, body)
    headers[header] = f"{genuine_headers[header]}&{moved}={body[moved]}"
    return headers, json.dumps({k: v for k, v in body.items() if k != moved}).encode()


def test_the_genuine_pushes_behind_the_findings_are_valid() -> None:
    for body in (AUTH_3DS, OPEN_CARD):
        assert outcome(*signed({**HEADERS, "lang": "en"}, body)) is SignatureOutcome.VALID


def test_a_field_name_holding_a_pair_is_never_valid() -> None:
    headers, body = name_swallows_the_next_field()
    assert outcome(headers, body) is SignatureOutcome.AMBIGUOUS


@pytest.mark.parametrize("header", ["lang", "api-key"])
def test_a_signed_header_holding_a_pair_is_never_valid(header: str) -> None:
    assert outcome(*header_swallows_the_next_field(header)) is SignatureOutcome.MALFORMED


@pytest.mark.parametrize("header", ["nonce", "lang", "signature"])
def test_a_signed_header_sent_twice_is_never_valid(header: str) -> None:
    headers, body = signed({**HEADERS, "lang": "en"}, OPEN_CARD)
    headers.add(header, headers[header])  # even the same value: a proxy or a consumer may read either
    assert outcome(headers, body) is SignatureOutcome.MALFORMED


@pytest.mark.broker
async def test_a_name_re_cut_push_is_kept_for_review_not_handled_a_second_time(gateway, amqp) -> None:
    genuine_headers, genuine = signed(HEADERS, AUTH_3DS)
    assert await (await gateway.post(PATH, data=genuine, headers=genuine_headers)).json() == OK
    headers, body = name_swallows_the_next_field()
    assert await (await gateway.post(PATH, data=body, headers=headers)).json() == OK
    handled = await take(amqp, topology.kind_queue("AUTH_3DS"))
    assert [message.body for message in handled] == [genuine], "the re-cut push was handled a second time"
    (kept,) = await take(amqp, topology.UNVERIFIED_QUEUE)
    assert kept.body == body and kept.headers["signature_outcome"] == "ambiguous"


@pytest.mark.broker
@pytest.mark.parametrize("header", ["lang", "api-key"])
async def test_a_header_re_cut_push_is_refused_in_the_reply_contract(gateway, amqp, header: str) -> None:
    headers, body = header_swallows_the_next_field(header)
    response = await gateway.post(PATH, data=body, headers=headers)
    assert response.status == 401
    reply = await response.json()
    assert reply["code"] == 401 and reply["data"] == {} and header in reply["msg"]
    kind = json.loads(body)["notify_type"]
    assert await take(amqp, topology.kind_queue(kind), timeout=0.3) == []
    assert await take(amqp, topology.UNVERIFIED_QUEUE, timeout=0.3) == []


# --- Every re-cut, generated ------------------------------------------------------------------------------------

Pair = tuple[str, str, str]  # (where: "header" or "body", name, value)


@st.composite
def genuine_pushes(draw: st.DrawFn) -> tuple[dict[str, str], dict]:
    """A sample as the platform signs it, sometimes with a lang header and a remark holding `&` and `=` as text."""
    body = json.loads(sample_body(draw(st.sampled_from(sample_names()))))
    if draw(st.booleans()):
        body["remark"] = draw(st.text(alphabet="ab_=&1 ", min_size=1, max_size=10))
    lang = draw(st.sampled_from(["", "en", "zh-CN"]))
    return ({**HEADERS, "lang": lang} if lang else dict(HEADERS)), body


HEADER_ORDER = ["lang", "version", "nonce", "timestamp", "api-key"]  # optional headers moved most often


@st.composite
def re_cuts(draw: st.DrawFn) -> tuple[list[Pair], list[Pair]]:
    """A genuine push's pairs, and another cut of its string to sign into pairs, each put in a header or the body:
    a few `&` toggled between separating two pairs and not, any `=` of a pair ending its name, a few signed
    headers' pairs put in the body. Small re-cuts, so that each way of being caught is tried often."""
    headers, body = draw(genuine_pushes())
    fields = body_fields(json.dumps(body).encode())
    text = string_to_sign(headers, fields).decode()
    original = [("header", name, value) for name, value in headers.items()]
    original += [("body", name, value) for name, value in fields.items()]
    separators, position = set(), -1
    for name in sorted({**headers, **fields})[1:]:
        position = text.index(f"&{name}=", position + 1)
        separators.add(position)
    every_amp = [i for i, char in enumerate(text) if char == "&"]
    separators ^= draw(st.sets(st.sampled_from(every_amp), max_size=3))
    into_body = draw(st.sets(st.sampled_from(sorted(SIGNED_HEADERS, key=HEADER_ORDER.index)), max_size=1))
    bounds = [0, *sorted(i + 1 for i in separators), len(text) + 1]
    pairs: list[Pair] = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        segment = text[start : end - 1]
        equals = [i for i, char in enumerate(segment) if char == "="]
        assume(equals)
        split = equals[draw(st.integers(0, len(equals) - 1))]
        name, value = segment[:split], segment[split + 1 :]
        in_header = name in SIGNED_HEADERS and name not in into_body
        pairs.append(("header" if in_header else "body", name, value))
    assume(sorted(pairs) != sorted(original))
    return original, pairs


def as_request(pairs: list[Pair]) -> tuple[CIMultiDict[str], bytes]:
    headers = CIMultiDict((name, value) for where, name, value in pairs if where == "header")
    body = {name: value for where, name, value in pairs if where == "body"}
    return headers, json.dumps(body).encode()


def same_string_to_sign(original: list[Pair], pairs: list[Pair]) -> tuple[CIMultiDict[str], bytes]:
    """The re-cut as a request carrying the genuine signature; only re-cuts that sign alike are of interest."""
    genuine_headers, genuine_body = as_request(original)
    headers, body = as_request(pairs)
    assume(len(headers) == len(set(headers)) and len(json.loads(body)) == sum(w == "body" for w, _, _ in pairs))
    message = string_to_sign(dict(genuine_headers), body_fields(genuine_body))
    assume(string_to_sign({k.lower(): v for k, v in headers.items()}, body_fields(body)) == message)
    headers[SIGNATURE_HEADER] = sign_message(KEY, message)
    return headers, body


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(re_cuts())
def test_no_re_cut_with_the_same_string_to_sign_is_valid(cut: tuple[list[Pair], list[Pair]]) -> None:
    headers, body = same_string_to_sign(*cut)
    result = outcome(headers, body)
    event(f"outcome: {result}")  # --hypothesis-show-statistics: how the re-cuts were caught
    assert result is not SignatureOutcome.VALID


@pytest.mark.broker
async def test_re_cuts_through_the_real_gateway_are_refused_or_kept_for_review(gateway, amqp) -> None:
    requests: list[tuple[CIMultiDict[str], bytes]] = []

    @settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(re_cuts())
    def collect(cut: tuple[list[Pair], list[Pair]]) -> None:
        requests.append(same_string_to_sign(*cut))

    collect()
    assert len(requests) >= 40, "too few re-cuts to say anything"
    kept = 0
    for headers, body in requests:
        response = await gateway.post(PATH, data=body, headers={**headers, "Content-Type": "application/json"})
        reply = await response.json()
        # 400: a re-cut that moved notify_type out of the body has no kind at all.
        assert response.status in (200, 400, 401), reply
        assert reply["code"] == (1 if response.status == 200 else response.status)
        kept += response.status == 200
    assert len(await take(amqp, topology.UNVERIFIED_QUEUE, timeout=1 if kept else 0.3)) == kept
    for kind in sorted({json.loads(sample_body(name))["notify_type"] for name in sample_names()}):
        assert await take(amqp, topology.kind_queue(kind), timeout=0.1) == [], f"a re-cut reached {kind}"


@pytest.mark.broker
async def test_in_monitor_mode_a_header_re_cut_is_kept_for_review(make_gateway, amqp, tmp_path) -> None:
    client = await make_gateway(
        signature_mode="monitor", platform_public_key=str(write_public_keys(tmp_path / "platform.pem", KEY))
    )
    headers, body = header_swallows_the_next_field("lang")
    assert await (await client.post(PATH, data=body, headers=headers)).json() == OK
    (kept,) = await take(amqp, topology.UNVERIFIED_QUEUE)
    assert kept.headers["signature_outcome"] == "malformed" and "lang" in kept.headers["unverified_reason"]
    assert await take(amqp, topology.kind_queue("OPEN_CARD"), timeout=0.3) == []


# --- Empty values spelled as strings -------------------------------------------------------------------------------
# A real `{}` or `[]` in the body is empty (left out of the string to sign, PLATFORM.md's primary reading); a string
# that spells one is a string like any other, entered as it is. Were it taken for the empty value, a genuine push
# without an optional field could be re-sent with the field holding "[]" and verify as another notification.

SPELLINGS = ["[]", "{}"]
GENUINE_EMPTY = {"absent": ..., "empty string": "", "null": None}


def optional_fields() -> list[tuple[str, str]]:
    """(sample, field) for every optional field of every built-in kind: what a re-cut can add to a genuine push."""
    found = []
    for name in sample_names():
        event_type = KINDS.event_type(json.loads(sample_body(name))["notify_type"])
        assert event_type is not None
        found += [(name, field.encode_name) for field in msgspec.structs.fields(event_type) if not field.required]
    return found


def test_every_optional_field_named_in_the_finding_has_vectors() -> None:
    named = {("open_card", "mc_trade_no"), ("open_card", "remark"), ("recharge", "remark"), ("buy_coin", "reason"),
             ("auth_3ds", "app_card_id"), ("auth_3ds", "app3ds_auth_transaction_id")}  # fmt: skip
    assert set(optional_fields()) == named


def genuine_without(name: str, field: str, empty: object) -> dict:
    """The sample as the platform sends it with `field` empty in one of its forms."""
    body = {k: v for k, v in json.loads(sample_body(name)).items() if k != field}
    return body if empty is ... else {**body, field: empty}


@pytest.mark.parametrize("empty", sorted(GENUINE_EMPTY))
@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize(("name", "field"), optional_fields())
def test_a_string_spelling_an_empty_container_never_verifies_as_the_empty_value(
    name: str, field: str, spelling: str, empty: str
) -> None:
    genuine = genuine_without(name, field, GENUINE_EMPTY[empty])
    headers, body = signed(HEADERS, genuine)
    assert outcome(headers, body) is SignatureOutcome.VALID
    recut = json.dumps({**genuine, field: spelling}).encode()
    assert outcome(headers, recut) is SignatureOutcome.INVALID, f"{field}: {spelling!r} verified as empty"


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize(("name", "field"), optional_fields())
def test_a_string_spelling_an_empty_container_is_signed_as_the_string(name: str, field: str, spelling: str) -> None:
    """The other way round: the platform signs `field=[]` for the string "[]", and that push verifies."""
    headers, body = signed(HEADERS, {**json.loads(sample_body(name)), field: spelling})
    assert f"&{field}={spelling}&".encode() in string_to_sign(dict(HEADERS), body_fields(body)) + b"&"
    assert outcome(headers, body) is SignatureOutcome.VALID


@pytest.mark.parametrize("container", [[], {}])
@pytest.mark.parametrize(("name", "field"), optional_fields())
def test_a_real_empty_container_is_still_the_empty_value(name: str, field: str, container: object) -> None:
    """PLATFORM.md's open point: a real `{}`/`[]` is left out of the string to sign (the primary reading)."""
    headers, _ = signed(HEADERS, genuine_without(name, field, ...))
    body = json.dumps({**genuine_without(name, field, ...), field: container}).encode()
    assert outcome(headers, body) is SignatureOutcome.VALID


# --- Numbers re-sent as strings, strings re-sent as numbers -------------------------------------------------------
# A number enters the string to sign as its JSON text, a string as it is: `"amount": "100.00"` and `"amount": 100.00`
# sign alike (PLATFORM.md). Both are the same notification, so both must be handled as one: the same inbox key.

NUMBER_TEXTS = ["7", "100.00", "1.50", "0.10", "1.0", "1e3", "1E+3", "-0", "-2.50", "123456789012345678901234567890.5"]


def as_string_and_as_number(body: dict, field: str, text: str) -> tuple[bytes, bytes]:
    as_string = json.dumps({**body, field: text}).encode()
    as_number = json.dumps({**body, field: "\0"}).replace('"\\u0000"', text).encode()
    return as_string, as_number


def decoded(body: bytes) -> Event | None:
    """The body as the workers decode it; None when it does not decode as its kind (quarantined, never handled)."""
    decoder = KINDS.decoder(json.loads(body)["notify_type"])
    assert decoder is not None
    try:
        return decoder.decode(body)
    except msgspec.ValidationError:
        return None


# CONSUME has no inbox key: every delivery is handled (its effect is the same however often it runs).
KEYED_SAMPLES = [name for name in sample_names() if EVENT_DECODER.decode(sample_body(name)).idempotency_key()]


@pytest.mark.parametrize("name", KEYED_SAMPLES)
def test_a_value_re_sent_as_a_number_or_as_a_string_keeps_its_inbox_key(name: str) -> None:
    genuine = json.loads(sample_body(name))
    compared = 0
    for field in (name for name in genuine if name != "notify_type"):
        for text in NUMBER_TEXTS:
            as_string, as_number = as_string_and_as_number(genuine, field, text)
            signed_alike = [string_to_sign(HEADERS, body_fields(body)) for body in (as_string, as_number)]
            assert signed_alike[0] == signed_alike[1], "the platform signs a number as its JSON text"
            events = [decoded(body) for body in (as_string, as_number)]
            if events[0] is not None and events[1] is not None:
                compared += 1
                keys = [event.idempotency_key() for event in events]
                assert keys[0] == keys[1], f"{field}: {text!r} and {text} are handled as two notifications"
    assert compared >= len(NUMBER_TEXTS), "too few vectors decode to say anything"


class Tagged(Event, tag="TEST_TAGGED"):
    """A user kind with optional containers: a real `[]` or `{}` signs like an absent field (the primary reading)."""

    card_id: str
    tags: list[str] | None = None
    extra: dict[str, str] | None = None


@pytest.mark.parametrize("field", ["tags", "extra"])
def test_an_empty_container_in_a_user_kind_keeps_the_inbox_key_of_an_absent_field(field: str) -> None:
    genuine = {"notify_type": "TEST_TAGGED", "card_id": "C1"}
    bodies = [json.dumps(genuine).encode()]
    bodies += [json.dumps({**genuine, field: empty}).encode() for empty in (None, "", [], {})]
    assert len({string_to_sign(HEADERS, body_fields(body)) for body in bodies}) == 1, "all sign alike"
    keys = set()
    for body in bodies:
        try:
            keys.add(decoder_for(Tagged).decode(body).idempotency_key())
        except msgspec.ValidationError:
            continue  # not its kind: quarantined, never handled
    assert len(keys) == 1, f"{field}: one genuine push, handled as {len(keys)} notifications"


# Attacker's review of issue 26 (re-cut pushes): user kinds.
#
# Attacker's review of issue 26 (finding 2, re-cuts): a user kind's nested numbers.
#
# The string to sign renders a nested object or array as compact JSON after an untyped decode (`signature.render`), so
# `[1.5]` and `[1.50]`, `{"a":100.0}` and `{"a":1e2}` sign alike: a float has one text. A user kind that types such a
# value as `Decimal` (what PLATFORM.md asks of amounts) decodes each one's own text: `Decimal('1.5')` and
# `Decimal('1.50')`, `Decimal('100.0')` and `Decimal('1E+2')`, and the default idempotency key (every field's `str`)
# differs. Likewise a field typed `Any` (or `object`): `{"a":1}` and the string `"{\"a\":1}"`, `true` and `"true"`
# sign alike and key apart (`{'a': 1}` against `{"a":1}`, `True` against `true`). `schemas.fields` handles this for
# `Text` only (`number_text`).
#
# So one captured genuine push of such a kind, re-posted with a nested number re-spelt, verifies (`valid`, same
# signature) and is handled again: the handler kit (the worker's own decode, inbox claim and handler) says HANDLED
# twice, where a platform retry says DUPLICATE.


class Part(msgspec.Struct):
    account: Text
    amount: Decimal


class Split(Event, tag="TEST_ATTACK_SPLIT"):
    """A user kind as a merchant might write one: a settlement split into parts, amounts as Decimal."""

    card_id: Text
    parts: list[Part] = []
    rates: dict[str, Decimal] = {}
    extra: Any = None


SPLITS = Registry()
SPLITS.schema("CREATE TABLE IF NOT EXISTS attack_splits (card_id text NOT NULL, amount numeric NOT NULL)")


@SPLITS.handles(Split)
async def split(event: Split, ctx: HandlerContext) -> None:
    for part in event.parts:
        await ctx.tx.execute("INSERT INTO attack_splits VALUES ($1, $2)", event.card_id, part.amount)


GENUINE = '{"notify_type":"TEST_ATTACK_SPLIT","card_id":"C1",'
# (what the platform signed, the re-cut an attacker posts with the same headers and signature)
RECUTS = {
    "nested_decimal_trailing_zero": ('"parts":[{"account":"A","amount":1.5}]}',
                                     '"parts":[{"account":"A","amount":1.50}]}'),
    "nested_decimal_exponent": ('"parts":[{"account":"A","amount":100.0}]}',
                                '"parts":[{"account":"A","amount":1e2}]}'),
    "dict_decimal_exponent": ('"rates":{"eur":50.0}}', '"rates":{"eur":5e1}}'),
    "any_object_as_string": ('"extra":{"a":1}}', '"extra":"{\\"a\\":1}"}'),
    "any_true_as_string": ('"extra":true}', '"extra":"true"}'),
}  # fmt: skip


@pytest.mark.database
@pytest.mark.xfail(
    strict=True,
    reason="a user kind's nested Decimal (or Any) re-spelt signs alike and keys apart: handled twice",
)
@pytest.mark.parametrize("case", RECUTS)
async def test_a_recut_nested_number_of_a_user_kind_is_not_handled_twice(case: str) -> None:
    genuine_tail, recut_tail = RECUTS[case]
    genuine, recut = (GENUINE + genuine_tail).encode(), (GENUINE + recut_tail).encode()
    json.loads(genuine), json.loads(recut)  # both plain JSON
    headers, body = signed(HEADERS, json.loads(genuine))
    assert outcome(headers, body) is SignatureOutcome.VALID
    assert outcome(headers, genuine) is SignatureOutcome.VALID
    assert outcome(headers, recut) is SignatureOutcome.VALID, "the re-cut verifies with the genuine signature"
    async with handler_kit("TEST_ATTACK_SPLIT", DATABASE_URL, registry=SPLITS) as kit:
        first = await kit.run(genuine)
        assert first.outcome == Outcome.HANDLED
        assert (await kit.run(genuine)).outcome == Outcome.DUPLICATE  # a platform retry
        again = await kit.run(recut)
        assert again.outcome == Outcome.DUPLICATE, (
            f"{case}: the re-cut {recut_tail!r} of a genuine push was {again.outcome}: "
            f"keys {first.event.idempotency_key()!r} and {again.event.idempotency_key()!r}"
        )
