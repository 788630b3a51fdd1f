"""Attacker's review of issue 26 (finding 3, mangled values): a validation error names the project's own time bound,
and the scrubber reads it as a secret number.

A genuine AUTH_3DS whose `expired_time` is before 2015 (or a time in milliseconds, 13 digits) is quarantined with
msgspec's "Expected `int` >= 1420070400 - at `$.expired_time`". The gateway's line (`validation_error`, free text)
and the held message's `validation_error` header (`scrub`) both show "Expected `int` >= [redacted]": the bound an
operator needs to see why the event was refused, a Unix time (issue 26: "timestamps ... never mangled")."""

from __future__ import annotations

import json

import pytest

from infra.log_fields import keep_named_fields
from schemas import topology
from schemas.events import EARLIEST_TIME, LATEST_TIME
from tests.support.broker import take

PATH = "/hc_sync/common"
OK = {"code": 1, "msg": "ok", "data": {}}


@pytest.mark.broker
@pytest.mark.xfail(strict=True, reason="the scrubber masks the time bound quoted by a validation error")
@pytest.mark.parametrize(("sent", "bound"), [(99, EARLIEST_TIME), (1710412477000, LATEST_TIME)])
async def test_a_validation_error_keeps_the_time_bound_it_names(gateway, amqp, sign, sample, sent, bound):
    body = json.dumps({**json.loads(sample("auth_3ds")), "expired_time": sent}).encode()
    assert await (await gateway.post(PATH, data=body, headers=sign(body))).json() == OK
    (message,) = await take(amqp, topology.INVALID_QUEUE)
    error = message.headers["validation_error"]
    line = keep_named_fields(None, "warning", {"event": "event failed validation", "validation_error": error})
    assert str(bound) in error, f"held header: {error!r}"
    assert str(bound) in line["validation_error"], f"log line: {line['validation_error']!r}"
