"""What one hostile request may cost the gateway: under 5 ms of the process's CPU, and under 1 ms when it is refused
before any signature is verified (issue 26, finding 1).

Measured on a real `hypercard-gateway` process as its own CPU time (its POSIX CPU clock: nanoseconds, all its
threads), so that other processes on the machine change nothing but the wall time: each shape is sent ROUNDS
times REPETITIONS times, a round's CPU less what the idle process spends in the same wall time is divided by its
requests, and the median round is the figure. Before the fix a 2/4/8 KB `Content-Type: text/…` cost 6.9/25.1/97.8 ms
of CPU per refusal (the reason was scrubbed whole, by a pattern quadratic on runs without `@`), one unsigned push with
a 60,000-character notify_type in monitor mode 17.8 s, and a body of 5000 fields 10-12 ms; after it, under 0.7 ms
per refusal before the signature and under 3 ms for any shape here."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.send_cli import generate_keys, load_private_key, signed_headers
from schemas.samples import sample_body
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import gateway_process

REFUSED_BEFORE_SIGNATURE_MS = 1.0
ANY_REQUEST_MS = 5.0
ROUNDS = 5
REPETITIONS = 20
# One request that costs this much is far past any budget, whatever the machine does: no more rounds are needed.
HOPELESS_MS = 50.0
API_KEY = "merchant-1"
KB = 1024


def cpu_seconds(pid: int) -> float:
    """CPU time the process has run, all its threads (those that ended too), in seconds: its POSIX CPU clock, which
    Linux names `(~pid << 3) | CPUCLOCK_SCHED` (the scheduler's nanoseconds, what /proc/<pid>/task/*/schedstat sums)."""
    return time.clock_gettime(((~pid) << 3) | 2)


@dataclass(frozen=True)
class Shape:
    """One hostile request: what is sent, to which gateway, and what it may cost."""

    name: str
    mode: str  # "enforce" or "monitor": which gateway it is sent to
    budget_ms: float
    status: int  # what the gateway answers it
    body: bytes
    headers: Callable[[Signer, bytes], dict[str, str]]  # the request's headers for its body (signed anew each time)


class Gateways:
    def __init__(self, tmp_path: Path) -> None:
        private, _ = generate_keys(tmp_path)
        self.key = load_private_key(private)
        common = {"HC_DRAIN_SECONDS": "0", "HC_TRUSTED_PROXIES": "127.0.0.1/32", "HC_LOG_LEVEL": "info"}
        self.ports = {"enforce": free_port(), "monitor": free_port()}
        self.processes = {
            "enforce": gateway_process(
                tmp_path, self.ports["enforce"], {**common, "HC_API_KEY": API_KEY}, name="enforce"
            ),
            "monitor": gateway_process(
                tmp_path, self.ports["monitor"], {**common, "HC_SIGNATURE_MODE": "monitor"}, name="monitor"
            ),
        }

    def sign(self, body: bytes, **extra: str) -> dict[str, str]:
        return {**signed_headers(self.key, body, API_KEY), "Content-Type": "application/json", **extra}

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()


Signer = Callable[..., dict[str, str]]  # signed headers for a body, with extra headers


def unsigned(**extra: str) -> Callable[[Signer, bytes], dict[str, str]]:
    return lambda sign, body: {"Content-Type": "application/json", "api-key": API_KEY, **extra}


def signed(**extra: str) -> Callable[[Signer, bytes], dict[str, str]]:
    return lambda sign, body: sign(body, **extra)


def forged() -> Callable[[Signer, bytes], dict[str, str]]:
    """Headers of the platform's format with another body's signature: for a body that cannot be signed."""
    return lambda sign, body: sign(OPEN_CARD)


def header(name: str, value: str) -> Callable[[Signer, bytes], dict[str, str]]:
    """A signed request with one header's value replaced."""
    return lambda sign, body: {**sign(body), name: value}


OPEN_CARD = sample_body("open_card")


def with_fields(**more: object) -> bytes:
    return json.dumps({**json.loads(OPEN_CARD), **more}).encode()


MANY_FIELDS = ("{" + ",".join(f'"f{n}":{n}' for n in range(5000)) + ',"notify_type":"OPEN_CARD"}').encode()
DUPLICATE_KEYS = ('{"notify_type":"OPEN_CARD",' + '"remark":"x",' * 5000 + '"result":1}').encode()
NESTED = ('{"notify_type":"OPEN_CARD","remark":' + "[" * 30000 + "]" * 30000 + "}").encode()
LONG_NAME = ('{"notify_type":"OPEN_CARD","' + "é" * 20000 + '":"x"}').encode()
# A header value of "8 KB": as long as aiohttp reads one (8190 bytes), less the room for nothing else.
LONG = 8 * KB - 8
BEFORE = REFUSED_BEFORE_SIGNATURE_MS
ANY = ANY_REQUEST_MS
CORPUS = [
    *(Shape(f"content_type_text_{kb}kb", "enforce", BEFORE, 415, OPEN_CARD,
            header("Content-Type", "text/" + "a" * (min(kb * KB, LONG) - 5)))
      for kb in (2, 4, 8)),
    Shape("content_type_text_8kb_monitor", "monitor", BEFORE, 415, OPEN_CARD,
          header("Content-Type", "text/" + "a" * (LONG - 5))),
    Shape("content_type_with_at_8kb", "enforce", BEFORE, 415, OPEN_CARD,
          header("Content-Type", "text/" + "a.b@" * ((LONG - 5) // 4))),
    Shape("content_type_digits_8kb", "enforce", BEFORE, 415, OPEN_CARD,
          header("Content-Type", "text/" + "1" * (LONG - 5))),
    Shape("content_encoding_8kb", "enforce", BEFORE, 415, OPEN_CARD,
          signed(**{"Content-Encoding": "gzip," * (LONG // 5)})),
    Shape("api_key_8kb", "enforce", BEFORE, 401, OPEN_CARD, unsigned(**{"api-key": "k" * LONG})),
    Shape("forwarded_for_8kb", "enforce", ANY, 200, OPEN_CARD,
          signed(**{"X-Forwarded-For": "10.0.0.1," * (LONG // 9)})),
    Shape("forwarded_for_garbage_8kb", "enforce", ANY, 200, OPEN_CARD,
          signed(**{"X-Forwarded-For": "x@y.z" * (LONG // 5)})),
    *(Shape(f"{name}_header_8kb", "enforce", BEFORE, 401, OPEN_CARD, header(name, "1" * LONG))
      for name in ("timestamp", "nonce", "version", "lang")),
    Shape("signature_header_8kb", "enforce", ANY, 401, OPEN_CARD, header("signature", "QUFB" * (LONG // 4))),
    Shape("unread_headers_50_lines", "enforce", ANY, 200, OPEN_CARD,
          signed(**{f"X-Pad-{n}": "7" * 500 for n in range(50)})),
    Shape("notify_type_60000_unsigned_enforce", "enforce", BEFORE, 401,
          with_fields(notify_type="A" * 60000), unsigned()),
    Shape("notify_type_60000_signed", "enforce", ANY, 200, with_fields(notify_type="A" * 60000), signed()),
    Shape("notify_type_60000_monitor", "monitor", ANY, 200, with_fields(notify_type="a" * 60000), unsigned()),
    Shape("notify_type_60000_digits_monitor", "monitor", ANY, 200,
          with_fields(notify_type="1" * 60000), unsigned()),
    Shape("field_name_20000_signed", "enforce", ANY, 200, LONG_NAME, signed()),
    Shape("field_name_20000_monitor", "monitor", ANY, 200, LONG_NAME, unsigned()),
    Shape("fields_5000_signed", "enforce", ANY, 400, MANY_FIELDS, signed()),
    Shape("fields_5000_monitor", "monitor", ANY, 400, MANY_FIELDS, unsigned()),
    Shape("nested_30000", "enforce", ANY, 400, NESTED, forged()),
    Shape("duplicate_keys_5000", "enforce", ANY, 400, DUPLICATE_KEYS, signed()),
    Shape("reason_long_value_signed", "enforce", ANY, 200, with_fields(email="a" * 60000), signed()),
    Shape("reason_long_value_monitor", "monitor", ANY, 200, with_fields(result="x" * 60000), unsigned()),
    Shape("unterminated_json_60000", "enforce", ANY, 400, b'{"notify_type":"' + b"a@" * 30000, forged()),
    Shape("genuine_push", "enforce", ANY, 200, OPEN_CARD, signed()),
]  # fmt: skip


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory, test_vhost) -> Iterator[Gateways]:
    running = Gateways(tmp_path_factory.mktemp("cpu"))
    try:
        for port in running.ports.values():
            wait_until_ready(port)
        yield running
    finally:
        running.stop()


async def send(session: aiohttp.ClientSession, gateways: Gateways, shape: Shape) -> int:
    url = f"http://127.0.0.1:{gateways.ports[shape.mode]}/hc_sync/common"
    async with session.post(url, data=shape.body, headers=shape.headers(gateways.sign, shape.body)) as reply:
        assert reply.content_type == "application/json", await reply.text()
        json.loads(await reply.read())  # the reply contract's shape, whatever the status
        return reply.status


async def cpu_ms_per_request(gateways: Gateways, shape: Shape) -> tuple[float, list[int]]:
    """The median over ROUNDS of the gateway's CPU per request, less its idle CPU; the statuses it answered."""
    pid = gateways.processes[shape.mode].popen.pid
    idle_started, idle_cpu = time.perf_counter(), cpu_seconds(pid)
    await asyncio.sleep(0.5)
    idle_rate = (cpu_seconds(pid) - idle_cpu) / (time.perf_counter() - idle_started)
    statuses: list[int] = []
    per_request: list[float] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        statuses.append(await send(session, gateways, shape))  # the connection opened, the process warmed up
        for round_number in range(ROUNDS):
            repetitions = 1 if round_number == 0 else REPETITIONS
            started, cpu = time.perf_counter(), cpu_seconds(pid)
            for _ in range(repetitions):
                statuses.append(await send(session, gateways, shape))
            spent = cpu_seconds(pid) - cpu - idle_rate * (time.perf_counter() - started)
            per_request.append(spent / repetitions * 1000)
            if round_number == 0 and per_request[0] > HOPELESS_MS:
                return per_request[0], statuses
    return statistics.median(per_request[1:]), statuses


@pytest.mark.broker
@pytest.mark.parametrize("shape", CORPUS, ids=[shape.name for shape in CORPUS])
async def test_each_hostile_shape_costs_the_gateway_under_its_cpu_budget(gateways, shape):
    spent, statuses = await cpu_ms_per_request(gateways, shape)
    print(f"{shape.name}: {spent:.3f} ms of gateway CPU per request (budget {shape.budget_ms} ms), {set(statuses)}")
    assert set(statuses) == {shape.status}
    assert spent < shape.budget_ms, f"{shape.name}: {spent:.2f} ms of CPU per request, over {shape.budget_ms} ms"


# Attacker's review of issue 26 (CPU budget): hostile shapes the corpus above did not hold.
#
# Attacker's review of issue 26 (CPU budget): hostile shapes the budget test's corpus does not hold.
#
# A body of 64 KB (the default HC_MAX_BODY_BYTES) with one top-level field holding many small containers: the gateway
# renders the field for the string to sign (msgspec decode and encode) and, because the body holds more colons than
# top-level fields, walks it again with `json.loads(object_pairs_hook=...)` to look for a repeated top-level key, a
# Python call per nested object. All of it happens before the signature is verified, so a sender who knows only the
# api-key (sent in clear with every push) or none at all (monitor mode) buys it with a forged signature.
#
# Measured on this machine (2 cores, another suite running), in-process `body_fields` alone: 8.2 ms for 8190 `{"a":0}`
# objects, 6.9 ms for 6553 `[[[[0]]]]`, 6.4 ms for 15 integers of 4299 digits, 4.3 ms for 21845 `[]`; the gateway
# process's own CPU per request (pytest -s --runxfail), one run: small_objects forged 9.4 ms (401), monitor 12.1 ms
# (200), nested_arrays 11.0 ms, big_integers 7.3 ms, empty_arrays 9.0 ms (each 401). The same objects after a
# repeated top-level key: 10.0 ms for a 400 refused before the signature (budget 1 ms). An object of 7000 keys stayed
# under budget (4.0 ms) and is left out.

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
