"""Attacker's review of issue 26 (CPU budget): hostile shapes the budget test's corpus does not hold.

A body of 64 KB (the default HC_MAX_BODY_BYTES) with one top-level field holding many small containers: the gateway
renders the field for the string to sign (msgspec decode and encode) and, because the body holds more colons than
top-level fields, walks it again with `json.loads(object_pairs_hook=...)` to look for a repeated top-level key, a
Python call per nested object. All of it happens before the signature is verified, so a sender who knows only the
api-key (sent in clear with every push) or none at all (monitor mode) buys it with a forged signature.

Measured on this machine (2 cores, another suite running), in-process `body_fields` alone: 8.2 ms for 8190 `{"a":0}`
objects, 6.9 ms for 6553 `[[[[0]]]]`, 6.4 ms for 15 integers of 4299 digits, 4.3 ms for 21845 `[]`; the gateway
process's own CPU per request (pytest -s --runxfail), one run: small_objects forged 9.4 ms (401), monitor 12.1 ms
(200), nested_arrays 11.0 ms, big_integers 7.3 ms, empty_arrays 9.0 ms (each 401). The same objects after a
repeated top-level key: 10.0 ms for a 400 refused before the signature (budget 1 ms). An object of 7000 keys stayed
under budget (4.0 ms) and is left out."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from tests.gateway.test_cpu_budget import (
    ANY_REQUEST_MS,
    OPEN_CARD,
    REFUSED_BEFORE_SIGNATURE_MS,
    Shape,
    Signer,
    cpu_ms_per_request,
    forged,
    gateways,
    unsigned,
)

__all__ = ["gateways"]  # the module-scoped fixture, reused

LIMIT = 65536  # the default HC_MAX_BODY_BYTES


def fill(unit: str, prefix: str = '{"notify_type":"OPEN_CARD","x":[', suffix: str = "]}") -> bytes:
    """A body of at most LIMIT bytes: one field `x`, an array holding `unit` as many times as fits."""
    count = (LIMIT - len(prefix) - len(suffix)) // (len(unit) + 1)
    return (prefix + ",".join([unit] * count) + suffix).encode()


SMALL_OBJECTS = fill('{"a":0}')
NESTED_ARRAYS = fill("[[[[0]]]]")
BIG_INTEGERS = fill("9" * 4299)
EMPTY_ARRAYS = fill("[]")
# Refused before the signature (400, the top-level `x` twice), found only after the whole walk.
REPEATED_KEY = fill('{"a":0}', prefix='{"notify_type":"OPEN_CARD","x":1,"x":[')

ATTACK = [
    Shape("small_objects_8190_forged", "enforce", ANY_REQUEST_MS, 401, SMALL_OBJECTS, forged()),
    Shape("small_objects_8190_monitor", "monitor", ANY_REQUEST_MS, 200, SMALL_OBJECTS, unsigned()),
    Shape("nested_arrays_6553_forged", "enforce", ANY_REQUEST_MS, 401, NESTED_ARRAYS, forged()),
    Shape("big_integers_4299_digits_forged", "enforce", ANY_REQUEST_MS, 401, BIG_INTEGERS, forged()),
    Shape("empty_arrays_21845_forged", "enforce", ANY_REQUEST_MS, 401, EMPTY_ARRAYS, forged()),
    Shape("small_objects_repeated_key_refused", "enforce", REFUSED_BEFORE_SIGNATURE_MS, 400, REPEATED_KEY, forged()),
]


@pytest.mark.broker
@pytest.mark.xfail(
    strict=False,  # a CPU figure: 7-12 ms measured, near enough to the 5 ms budget that a quiet machine may pass it
    reason="issue 26 budget: a 64 KB body of small containers costs over 5 ms of CPU "
    "before the signature is checked (body_fields renders it, then json.loads walks it again)",
)
@pytest.mark.parametrize("shape", ATTACK, ids=[shape.name for shape in ATTACK])
async def test_a_64kb_body_of_small_containers_costs_under_5ms(gateways, shape):
    assert all(len(shape.body) <= LIMIT for shape in ATTACK)
    spent, statuses = await cpu_ms_per_request(gateways, shape)
    print(f"{shape.name}: {spent:.3f} ms of gateway CPU per request (budget {shape.budget_ms} ms), {set(statuses)}")
    assert set(statuses) == {shape.status}
    assert spent < shape.budget_ms, f"{shape.name}: {spent:.2f} ms of CPU per request, over {shape.budget_ms} ms"


# aiohttp's Content-Type parser (`helpers.parse_content_type`, read by `request.content_type` before the 415) walks
# every parameter with the e-mail package, behind an LRU cache of 56 values: a header that differs each time misses it.
# In-process, parse_content_type alone on an 8 KB header, each value new: 2100 `a=b;` parameters 129-149 ms, 1400
# `a*0=b;` (RFC 2231 continuations) 108-137 ms; 2 KB 21-31 ms, 4 KB 55-60 ms. The same header repeated costs the
# gateway 0.4 ms (cached): that is why the corpus's fixed 8 KB `text/aaa…` passes. Measured on the gateway process
# (pytest -s --runxfail, two runs): 181-229 ms and 126-148 ms of CPU per 415, 139-206 ms per 401 with a forged
# signature and `application/json;...`: about 6 requests a second (50 KB/s) keep a core busy, before the api-key.
# Worse shapes, in-process per new value: 2700 comments `(c)` 1.0-1.1 s, 8100 `;` 0.69-0.71 s; and the corpus's own
# `content_type_with_at_8kb` (`a.b@` repeated) costs 139-155 ms as soon as it differs each time (0.9 ms for `text/aaa`).
# On the gateway process: comments 1121 ms, semicolons 757 ms, `a.b@` 171 ms of CPU per 415 (one request each).
LONG_HEADER = 8 * 1024 - 8
SMALL_BODY = b"{}"
_sent = itertools.count()


def varying_header(name: str, value: str, forged: bool = False) -> Callable[[Signer, bytes], dict[str, str]]:
    """A request with one header's value replaced, new each time (a number in front), as an attacker sends it; its
    signature the body's own, or (`forged`) another body's."""
    return lambda sign, body: {
        **sign(body if not forged else OPEN_CARD),
        name: value.replace("X", f"x{next(_sent)}", 1)[:LONG_HEADER],
    }


HEADER_SHAPES = [
    Shape("content_type_2000_parameters_refused", "enforce", REFUSED_BEFORE_SIGNATURE_MS, 415, SMALL_BODY,
          varying_header("Content-Type", "text/X;" + "a=b;" * 2100)),
    Shape("content_type_1300_continuations_refused", "enforce", REFUSED_BEFORE_SIGNATURE_MS, 415, SMALL_BODY,
          varying_header("Content-Type", "text/X;" + "a*0=b;" * 1400)),
    Shape("content_type_2700_comments_refused", "enforce", REFUSED_BEFORE_SIGNATURE_MS, 415, SMALL_BODY,
          varying_header("Content-Type", "text/X;" + "(c)" * 2700)),
    Shape("content_type_8100_semicolons_refused", "enforce", REFUSED_BEFORE_SIGNATURE_MS, 415, SMALL_BODY,
          varying_header("Content-Type", "text/X" + ";" * 8100)),
    Shape("content_type_with_at_8kb_each_new_refused", "enforce", REFUSED_BEFORE_SIGNATURE_MS, 415, SMALL_BODY,
          varying_header("Content-Type", "text/X" + "a.b@" * 2020)),
    # Over 256 characters, refused unread before the signature (it was parsed, then 401).
    Shape("json_content_type_2000_parameters_forged", "enforce", REFUSED_BEFORE_SIGNATURE_MS, 415, SMALL_BODY,
          varying_header("Content-Type", "application/json;X=1;" + "a=b;" * 2100, forged=True)),
]  # fmt: skip


@pytest.mark.broker
@pytest.mark.parametrize("shape", HEADER_SHAPES, ids=[shape.name for shape in HEADER_SHAPES])
async def test_a_content_type_of_many_parameters_costs_under_its_budget(gateways, shape):
    spent, statuses = await cpu_ms_per_request(gateways, shape)
    print(f"{shape.name}: {spent:.3f} ms of gateway CPU per request (budget {shape.budget_ms} ms), {set(statuses)}")
    assert set(statuses) == {shape.status}
    assert spent < shape.budget_ms, f"{shape.name}: {spent:.2f} ms of CPU per request, over {shape.budget_ms} ms"
