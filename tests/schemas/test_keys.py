"""Idempotency keys name one notification: any documented field told apart, a platform retry not."""

from __future__ import annotations

import enum
import json
import typing

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import EARLIEST_TIME, EVENT_DECODER, KNOWN_EVENTS, LATEST_TIME, Consume, OptCode
from schemas.fields import Text
from schemas.samples import sample_body, sample_names

SAMPLES = {json.loads(sample_body(name))["notify_type"]: json.loads(sample_body(name)) for name in sample_names()}
KEYED = [event for event in KNOWN_EVENTS if event is not Consume]


def other_value(event_type: type, field: str, value: object, draw) -> object:
    """A different valid value for one documented field."""
    hint = typing.get_type_hints(event_type)[field]
    kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
    kind = kinds[0]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return draw(st.sampled_from([m.value for m in kind if m.value != int(str(value or 0))]))
    if isinstance(kind, type) and issubclass(kind, Text):
        current = "" if value is None else str(value)
        if kind.pattern is not None:  # an amount
            return draw(st.decimals(0, 10**6, places=2).map(str).filter(lambda v: v != current))
        limit = kind.max_length or 20
        new = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=max(kind.min_length, 1), max_size=limit))
        return new if new != current else new[:-1] + ("a" if new[-1] != "a" else "b")
    return draw(st.integers(EARLIEST_TIME, LATEST_TIME).filter(lambda v: v != value))  # valid for the time fields too


@pytest.mark.parametrize("event_type", KEYED, ids=lambda e: e.kind())
@given(data=st.data())
def test_two_notifications_that_differ_in_any_one_documented_field_have_different_keys(event_type, data):
    body = SAMPLES[event_type.kind()]
    field = data.draw(st.sampled_from(event_type.__struct_fields__))
    changed = {**body, field: other_value(event_type, field, body.get(field), data.draw)}
    first, second = (EVENT_DECODER.decode(json.dumps(b)) for b in (body, changed))
    assert first.idempotency_key() != second.idempotency_key()


@pytest.mark.parametrize("event_type", KEYED, ids=lambda e: e.kind())
def test_a_retry_of_the_same_body_has_the_same_key_however_it_is_written(event_type):
    body = SAMPLES[event_type.kind()]
    rewritten = {name: str(value) if isinstance(value, int) else value for name, value in reversed(body.items())}
    extra = {**body, "a_field_the_platform_added": "whatever"}
    keys = {EVENT_DECODER.decode(json.dumps(b)).idempotency_key() for b in (body, rewritten, extra)}
    assert len(keys) == 1


def test_two_one_time_codes_for_one_card_in_one_second_are_two_notifications():
    # The code itself stays out of what is stored and logged: the workers keep a keyed digest of the key
    # (tests/workers/test_identifiers.py).
    first = EVENT_DECODER.decode(json.dumps({**SAMPLES["OPT_CODE"], "code": "111111"}))
    second = EVENT_DECODER.decode(json.dumps({**SAMPLES["OPT_CODE"], "code": "222222"}))
    assert isinstance(first, OptCode) and first.idempotency_key() != second.idempotency_key()


def test_every_consume_is_handled():
    assert EVENT_DECODER.decode(json.dumps(SAMPLES["CONSUME"])).idempotency_key() is None


def test_open_card_without_mc_trade_no_keys_by_every_field():
    no_trade = {k: v for k, v in SAMPLES["OPEN_CARD"].items() if k != "mc_trade_no"}
    again = EVENT_DECODER.decode(json.dumps({**no_trade, "remark": "second application"}))
    assert EVENT_DECODER.decode(json.dumps(no_trade)).idempotency_key() != again.idempotency_key()
    with pytest.raises(msgspec.ValidationError):
        EVENT_DECODER.decode(json.dumps({**no_trade, "result": 3}))
