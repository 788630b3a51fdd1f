"""Attacker's review of issue 26 (finding 2, re-cuts): a user kind's nested numbers.

The string to sign renders a nested object or array as compact JSON after an untyped decode (`signature.render`), so
`[1.5]` and `[1.50]`, `{"a":100.0}` and `{"a":1e2}` sign alike: a float has one text. A user kind that types such a
value as `Decimal` (what PLATFORM.md asks of amounts) decodes each one's own text: `Decimal('1.5')` and
`Decimal('1.50')`, `Decimal('100.0')` and `Decimal('1E+2')`, and the default idempotency key (every field's `str`)
differs. Likewise a field typed `Any` (or `object`): `{"a":1}` and the string `"{\"a\":1}"`, `true` and `"true"`
sign alike and key apart (`{'a': 1}` against `{"a":1}`, `True` against `true`). `schemas.fields` handles this for
`Text` only (`number_text`).

So one captured genuine push of such a kind, re-posted with a nested number re-spelt, verifies (`valid`, same
signature) and is handled again: the handler kit (the worker's own decode, inbox claim and handler) says HANDLED
twice, where a platform retry says DUPLICATE."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from gateway.signature import SignatureOutcome
from schemas.events import Event
from schemas.fields import Text
from tests.gateway.test_recut import HEADERS, outcome, signed
from tests.support.database import DATABASE_URL
from workers import HandlerContext
from workers.outcomes import Outcome
from workers.registry import Registry
from workers.testing import handler_kit

pytestmark = pytest.mark.database


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
