"""A user's kind is a kind: through real processes (a gateway, a worker, hypercard-status), LOW_BALANCE declared in a
module of its own (tests/support/low_balance.py) is validated, counted and logged as the built-in kinds are."""

from __future__ import annotations

import asyncio
import json
import os
import random
import string
import subprocess
import sys
import urllib.request

import aio_pika
import pytest

from gateway.send_cli import generate_keys, load_private_key, signed_headers
from infra import declare
from schemas import topology
from tests.support.broker import AMQP_URL, forget_kind, take
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import REPO, Process, gateway_process, worker_process
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
KIND = "LOW_BALANCE"
ON_PATH = {"PYTHONPATH": str(REPO)}  # the user's modules: importable, not installed
KINDS = {**ON_PATH, "HC_KINDS": "tests.support.low_balance"}
HANDLERS = ["--handlers", "tests.support.low_balance_handlers"]
BIN = os.path.dirname(sys.executable)


@pytest.fixture
async def low_balance_queues(amqp):
    """What `hypercard-broker-setup --kind LOW_BALANCE` declares."""
    await forget_kind(amqp, KIND)
    await declare.declare_kind(amqp, KIND)
    yield
    await forget_kind(amqp, KIND)


@pytest.fixture
def processes(tmp_path, low_balance_queues):
    generate_keys(tmp_path)
    port, metrics_port = free_port(), free_port()
    env = {**KINDS, "HC_GATEWAY_METRICS_PORT": str(metrics_port)}
    gateway = gateway_process(tmp_path, port, env)
    worker = worker_process(tmp_path, KIND, *HANDLERS, env=ON_PATH)
    try:
        wait_until_ready(port)
        yield gateway, worker, port, metrics_port, load_private_key(tmp_path / "platform-private.pem")
    finally:
        gateway.stop()
        worker.stop()


def push(port: int, key, payload: dict) -> int:
    body = json.dumps(payload).encode()
    headers = {**signed_headers(key, body, "merchant-1"), "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/hc_sync/common", body, headers)
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())["code"]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


async def _logged(process: Process, **match: object) -> list[dict]:
    return process.events(**match)


async def test_a_user_kind_is_validated_counted_and_logged_with_its_business_ids(processes, amqp):
    gateway, worker, port, metrics_port, key = processes
    await eventually(lambda: _logged(worker, event="consuming"), timeout=20)
    assert await asyncio.to_thread(push, port, key, {"notify_type": KIND, "account_no": "6200123456789012",
                                                     "balance": 12})  # fmt: skip
    (accepted,) = await eventually(lambda: _logged(gateway, event="request", kind=KIND))
    assert accepted["outcome"] == "accepted" and accepted["account_no"] == "6200123456789012"
    metrics = await asyncio.to_thread(scrape, metrics_port)
    assert f'hypercard_gateway_requests_total{{kind="{KIND}",outcome="accepted",status="200"}} 1.0' in metrics
    assert f'hypercard_gateway_unknown_kind_total{{kind="{KIND}"}}' not in metrics
    (handled,) = await eventually(lambda: _logged(worker, event="message", outcome="handled"), timeout=20)
    assert handled["kind"] == KIND and handled["account_no"] == "6200123456789012"

    # Invalid at the edge: kept in hypercard.invalid with its $.path, never handed to the worker.
    await asyncio.to_thread(push, port, key, {"notify_type": KIND, "account_no": "6200123456789013", "balance": "x"})
    (kept,) = await take(amqp, topology.INVALID_QUEUE)
    assert "$.balance" in kept.headers["validation_error"]
    (quarantined,) = await eventually(lambda: _logged(gateway, event="request", outcome="quarantined"))
    assert quarantined["kind"] == KIND


async def test_a_body_the_worker_cannot_decode_is_quarantined_with_its_reason_not_a_contained_failure(processes, amqp):
    _, worker, *_ = processes
    await eventually(lambda: _logged(worker, event="consuming"), timeout=20)
    # An older gateway, or a direct publish: the kind's queue holds a body its Struct refuses.
    message = aio_pika.Message(b'{"notify_type":"LOW_BALANCE","account_no":"6200123456789014"}',
                               headers={"notify_type": KIND, "event_id": "direct-1"})  # fmt: skip
    await amqp.default_exchange.publish(message, routing_key=topology.kind_queue(KIND))
    (line,) = await eventually(lambda: _logged(worker, event="message", event_id="direct-1"), timeout=20)
    assert line["outcome"] == "quarantined"
    (kept,) = await take(amqp, topology.INVALID_QUEUE)
    assert kept.headers["event_id"] == "direct-1" and "balance" in kept.headers["validation_error"]
    assert not worker.events(event="failure contained to its delivery")
    assert not await take(amqp, topology.dead_queue(KIND), timeout=0.5)


async def test_a_user_kinds_sensitive_field_reaches_no_log_line_and_no_held_messages_header(processes, amqp):
    """LOW_BALANCE declares its `pin` sensitive as OPT_CODE declares its code: the gateway keeps it out of its lines
    as the worker does, even where the platform put the same value in the business id too, and out of the headers
    of the message it holds."""
    gateway, worker, port, _, key = processes
    await eventually(lambda: _logged(worker, event="consuming"), timeout=20)
    # No digit run, no e-mail: only the kind's declaration says that it is a secret. A new one on each run: the
    # inbox of a database the suite did not reset would take the same event for a duplicate.
    pin = "".join(random.choices(string.ascii_letters, k=8))
    event = {"notify_type": KIND, "account_no": pin, "balance": 3, "pin": pin}
    assert await asyncio.to_thread(push, port, key, event) == 1
    await eventually(lambda: _logged(worker, event="message", outcome="handled"), timeout=20)
    await asyncio.to_thread(push, port, key, {**event, "balance": "x"})  # invalid: held in hypercard.invalid
    (held,) = await take(amqp, topology.INVALID_QUEUE)
    assert pin not in json.dumps(held.headers, default=str), held.headers
    gateway.stop()
    worker.stop()
    logs = gateway.output + worker.output
    assert len(logs.splitlines()) > 5 and pin not in logs, [line for line in logs.splitlines() if pin in line]


def status(*args: str) -> subprocess.CompletedProcess:
    no_api = {"HC_MANAGEMENT_URL": f"http://127.0.0.1:{free_port()}", "HC_HANDLERS": HANDLERS[1], **ON_PATH}
    return subprocess.run(
        [os.path.join(BIN, "hypercard-status"), *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "HC_AMQP_URL": AMQP_URL, **no_api},
    )  # fmt: skip


async def test_status_lists_a_user_kind_without_the_management_api_and_alerts_on_its_dead_letters(
    amqp, low_balance_queues
):
    await forget_kind(amqp, "TEST_TRACKED")
    clean = await asyncio.to_thread(status)
    (line,) = [line for line in clean.stdout.splitlines() if line.startswith(KIND)]
    assert clean.returncode == 0, clean.stdout + clean.stderr
    message = aio_pika.Message(b"{}", headers={"notify_type": KIND, "event_id": "dead-1"})
    await amqp.default_exchange.publish(message, routing_key=topology.dead_queue(KIND))
    alert = await asyncio.to_thread(status)
    (line,) = [line for line in alert.stdout.splitlines() if line.startswith(KIND)]
    assert alert.returncode == 1 and "dead letters" in line, alert.stdout
