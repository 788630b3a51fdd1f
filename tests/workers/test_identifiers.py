"""Identifiers derived from an event's content (the event id, the inbox key) are keyed with HC_ID_SECRET: what the
logs, the inbox and the message headers show cannot be turned back into a one-time code without it; one secret
keeps de-duplication across gateways and workers, another secret does not."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys

import aiohttp
import pytest

from infra.identifiers import IdentifierKey
from schemas import topology
from schemas.events import OptCode
from tests.support.identifiers import OTHER_ID_SECRET, TEST_ID_SECRET
from tests.support.keys import write_public_keys
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import gateway_process, worker_process
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
PATH = "/hc_sync/common"


async def post(url: str, body: bytes, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        assert response.status == 200, await response.text()


async def peek(amqp, kind: str, count: int) -> list[dict]:
    """The headers of the next `count` messages of a kind's queue, left in the queue for a worker."""
    queue = await amqp.get_queue(topology.kind_queue(kind))
    messages = []
    for _ in range(100):
        message = await queue.get(fail=False, no_ack=False)
        if message is not None:
            messages.append(message)
        if len(messages) == count:
            break
        await asyncio.sleep(0.05)
    for message in messages:
        await message.nack(requeue=True)
    assert len(messages) == count
    return [dict(message.headers) for message in messages]


def codes_matching(*, card_id: str, create_time: int, event_id: str, inbox_key: str, key: IdentifierKey | None):
    """Every six-digit code whose event id or inbox key is the one shown. Without `key`, the attacker tries every
    unkeyed digest the project ever used: blake2b of the signed body pairs, sha256 of the notification key with the
    code in clear or as its sha256 digest."""
    head, tail = f"card_id={card_id}&code=", f"&create_time={create_time}"
    body_tail = f"{tail}&notify_type=OPT_CODE"
    found = set()
    for number in range(10**6):
        code = f"{number:06d}"
        if key is None:
            code_digest = hashlib.sha256(code.encode()).hexdigest()[:32]
            if (
                hashlib.blake2b(f"{head}{code}{body_tail}".encode(), digest_size=16).hexdigest() == event_id
                or hashlib.sha256(f"{head}{code}{tail}".encode()).hexdigest() == inbox_key
                or hashlib.sha256(f"{head}{code_digest}{tail}".encode()).hexdigest() == inbox_key
            ):
                found.add(code)
        elif key.event_id(f"{head}{code}{body_tail}".encode()) == event_id:
            if key.inbox_key(f"{head}{code}{tail}") == inbox_key:
                found.add(code)
            break
    return found


async def test_a_one_time_code_is_not_recovered_from_the_log_line_the_inbox_row_or_the_header(
    db, amqp, sign, platform_key, tmp_path
):
    write_public_keys(tmp_path / "platform-public.pem", platform_key)
    port = free_port()
    gateway = gateway_process(tmp_path, port)
    worker = None
    code = f"{secrets.randbelow(10**6):06d}"
    body = json.dumps({"notify_type": "OPT_CODE", "card_id": "c-otp-7", "code": code, "create_time": 1700000123})
    try:
        await asyncio.to_thread(wait_until_ready, port)
        await post(f"http://127.0.0.1:{port}{PATH}", body.encode(), sign(body.encode()))
        [header] = await peek(amqp, "OPT_CODE", 1)
        worker = worker_process(tmp_path, "OPT_CODE")
        notified = await eventually(lambda: _logged(worker, event="one-time code received"), timeout=20)
        row = await db.fetchrow("SELECT idempotency_key, event_id FROM hypercard_inbox WHERE kind = 'OPT_CODE'")
    finally:
        gateway.stop()
        if worker is not None:
            worker.stop()
    [line] = notified
    [request] = gateway.events(event="request", kind="OPT_CODE")
    # What an attacker reads: the worker's line (card, time, event id), the inbox row, the message header.
    card_id, create_time, event_id = line["card_id"], line["create_time"], line["event_id"]
    assert event_id == header["event_id"] == row["event_id"] == request["event_id"]
    assert code not in json.dumps(line) and code not in row["idempotency_key"]
    shown = {"card_id": card_id, "create_time": create_time, "event_id": event_id, "inbox_key": row["idempotency_key"]}
    assert codes_matching(**shown, key=None) == set()
    # The notification key the attacker assumes is the one the workers key (the search is over the right text).
    template = OptCode(card_id=card_id, code="CODE", create_time=create_time).idempotency_key()
    assert template == f"card_id={card_id}&code=CODE&create_time={create_time}"
    assert codes_matching(**shown, key=IdentifierKey(OTHER_ID_SECRET)) == set()
    assert codes_matching(**shown, key=IdentifierKey(TEST_ID_SECRET)) == {code}  # the control: with the secret


async def _logged(process, **match: object) -> list[dict]:
    return process.events(**match)


async def test_no_log_line_metric_or_message_header_holds_the_secret(db, amqp, sign, platform_key, tmp_path):
    write_public_keys(tmp_path / "platform-public.pem", platform_key)
    port, gateway_metrics, worker_metrics = free_port(), free_port(), free_port()
    gateway = gateway_process(tmp_path, port, env={"HC_GATEWAY_METRICS_PORT": str(gateway_metrics)})
    worker = worker_process(tmp_path, "OPT_CODE", "RECHARGE", env={"HC_METRICS_PORT": str(worker_metrics)})
    bodies = [
        {"notify_type": "OPT_CODE", "card_id": "c-1", "code": "123456", "create_time": 1700000000},
        {"notify_type": "RECHARGE", "card_id": "c-1", "mc_trade_no": "T-1", "result": 1},
        {"notify_type": "RECHARGE", "card_id": "c-1", "mc_trade_no": "T-2", "result": 7},  # invalid: quarantined
        {"notify_type": "CARD_STATUS_CHANGE", "card_id": "c-1"},  # no worker: unrouted
    ]
    try:
        await asyncio.to_thread(wait_until_ready, port)
        await eventually(lambda: _logged(worker, event="consuming"), timeout=20)
        for body in bodies:
            raw = json.dumps(body).encode()
            await post(f"http://127.0.0.1:{port}{PATH}", raw, sign(raw))
        await eventually(lambda: _logged(worker, event="message", outcome="handled", kind="RECHARGE"), timeout=20)
        await eventually(lambda: _logged(worker, event="message", outcome="handled", kind="OPT_CODE"), timeout=20)
        headers = [
            dict(message.headers)
            for queue in (topology.INVALID_QUEUE, topology.UNROUTED_QUEUE)
            if (message := await (await amqp.get_queue(queue)).get(fail=False, no_ack=True)) is not None
        ]
        async with aiohttp.ClientSession() as session:
            exposition = ""
            for metrics in (gateway_metrics, worker_metrics):
                async with session.get(f"http://127.0.0.1:{metrics}/metrics") as response:
                    exposition += await response.text()
    finally:
        gateway.stop()
        worker.stop()
    assert len(headers) == 2 and "hypercard_gateway_requests_total" in exposition
    assert len(gateway.events(event="request")) == 4
    for text in (gateway.output, worker.output, exposition, json.dumps(headers, default=str)):
        assert TEST_ID_SECRET not in text


async def test_a_retry_through_another_gateway_is_a_duplicate_under_one_secret_and_handled_again_under_another(
    make_gateway, make_worker, db, amqp, sign
):
    first, second = await make_gateway(id_secret=TEST_ID_SECRET), await make_gateway(id_secret=TEST_ID_SECRET)
    other = await make_gateway(id_secret=OTHER_ID_SECRET)
    body = json.dumps({"notify_type": "TEST_TRACKED", "token": "retried"}).encode()
    for gateway in (first, second, other):  # each signing is a retry: new timestamp, nonce and signature
        response = await gateway.post(PATH, data=body, headers=sign(body))
        assert response.status == 200
    ids = [header["event_id"] for header in await peek(amqp, "TEST_TRACKED", 3)]
    assert ids[0] == ids[1] != ids[2]

    worker = await make_worker("TEST_TRACKED", id_secret=TEST_ID_SECRET)
    await eventually(lambda: _counted(worker, handled=1, duplicates=2))
    await worker.stop()
    assert await _effects(db) == 1

    # The same event once more, to a worker keyed with another secret: its inbox key is new, so it is handled again.
    response = await first.post(PATH, data=body, headers=sign(body))
    assert response.status == 200
    changed = await make_worker("TEST_TRACKED", id_secret=OTHER_ID_SECRET)
    await eventually(lambda: _counted(changed, handled=1, duplicates=0))
    assert await _effects(db) == 2
    keys = await db.fetch("SELECT idempotency_key FROM hypercard_inbox WHERE kind = 'TEST_TRACKED'")
    assert len({row[0] for row in keys}) == 2


async def _counted(runtime, *, handled: int, duplicates: int) -> bool:
    metrics, kind = runtime.metrics, "TEST_TRACKED"
    return (metrics.handled.labels(kind)._value.get(), metrics.duplicates.labels(kind)._value.get()) == (
        handled,
        duplicates,
    )


async def _effects(db) -> int:
    return await db.fetchval("SELECT count(*) FROM test_effects WHERE token = 'retried'")


async def test_a_rotation_keeps_duplicates_duplicates_with_the_old_secret_as_previous(gateway, make_worker, db, sign):
    async def push(token: str) -> None:
        body = json.dumps({"notify_type": "TEST_TRACKED", "token": token}).encode()
        assert (await gateway.post(PATH, data=body, headers=sign(body))).status == 200

    async def worker(handled: int, duplicates: int, **secrets: str) -> None:
        runtime = await make_worker("TEST_TRACKED", **secrets)
        await eventually(lambda: _counted(runtime, handled=handled, duplicates=duplicates))
        await runtime.stop()

    old, rotated, new = (
        {"id_secret": TEST_ID_SECRET},
        {"id_secret": OTHER_ID_SECRET, "id_secret_previous": TEST_ID_SECRET},
        {"id_secret": OTHER_ID_SECRET},
    )
    await push("before")
    await worker(1, 0, **old)
    await push("before")  # a platform retry of an event handled under the old secret, reaching a rotated worker
    await push("during")
    await worker(1, 1, **rotated)
    await push("during")  # ... and one handled by a rotated worker, reaching a worker not yet rotated
    await worker(0, 1, **old)
    await push("during")  # ... or a worker once the rotation is over
    await worker(0, 1, **new)
    effects = await db.fetch("SELECT token, count(*) FROM test_effects GROUP BY token ORDER BY token")
    assert [tuple(row) for row in effects] == [("before", 1), ("during", 1)]


def test_a_worker_does_not_start_without_the_secret():
    environ = {name: value for name, value in os.environ.items() if not name.startswith("HC_ID_SECRET")}
    result = subprocess.run(
        [sys.executable, "-m", "workers", "--all"], capture_output=True, text=True, timeout=30,
        env={**environ, "HC_METRICS_PORT": "0"},
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("hypercard-worker: HC_ID_SECRET: required") and "openssl rand" in result.stderr
