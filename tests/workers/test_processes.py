"""Worker processes under SIGKILL, SIGTERM and a broker restart; the README's extension example."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest

from schemas import topology
from tests.support.processes import REPO, worker_process
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
README_EXAMPLE = REPO / "examples" / "card_status_change.py"
PATH = "/hc_sync/common"
TRACKED = ["TEST_TRACKED", "--handlers", "tests.support.tracked_kind"]


async def send(gateway, sign, payload: dict) -> None:
    body = json.dumps(payload).encode()
    response = await gateway.post(PATH, data=body, headers=sign(body))
    assert response.status == 200, await response.text()


async def effect_count(db, token: str) -> int:
    return await db.fetchval("SELECT count(*) FROM test_effects WHERE token = $1", token)


async def taken_by_a_worker(amqp, kind: str) -> bool:
    """The message left the ready list: a worker holds it unacked."""
    queue = await amqp.declare_queue(topology.kind_queue(kind), passive=True)
    return queue.declaration_result.message_count == 0


async def test_worker_killed_mid_handling_redelivers_with_one_effect(gateway, db, amqp, sign, tmp_path):
    first = worker_process(tmp_path, *TRACKED, name="first")
    try:
        await eventually(lambda: _logged(first, event="consuming"), timeout=20)
        await send(gateway, sign, {"notify_type": "TEST_TRACKED", "token": "killed", "sleep": 1.5})
        await eventually(lambda: taken_by_a_worker(amqp, "TEST_TRACKED"))
        await asyncio.sleep(0.3)
        first.signal(signal.SIGKILL)
        first.wait()
        assert await effect_count(db, "killed") == 0
    finally:
        first.stop()

    second = worker_process(tmp_path, *TRACKED, name="second")
    try:
        await eventually(lambda: effect_count(db, "killed"), timeout=20)
        await asyncio.sleep(0.5)
        assert await effect_count(db, "killed") == 1
    finally:
        second.stop()


async def test_sigterm_lets_in_flight_handlers_finish_and_exits_0(gateway, db, amqp, sign, tmp_path):
    worker = worker_process(tmp_path, *TRACKED, env={"HC_SHUTDOWN_GRACE": "10"})
    try:
        await eventually(lambda: _logged(worker, event="consuming"), timeout=20)
        await send(gateway, sign, {"notify_type": "TEST_TRACKED", "token": "graceful", "sleep": 1.0})
        await eventually(lambda: taken_by_a_worker(amqp, "TEST_TRACKED"))
        worker.signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait) == 0
    finally:
        worker.stop()
    assert await effect_count(db, "graceful") == 1


async def _logged(process, **match: str) -> bool:
    return bool(process.events(**match))


def rabbitmq(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


async def test_broker_restart_consumers_resume_and_nothing_is_lost(gateway, make_worker, db, amqp, sign, sample):
    runtime = await make_worker("TEST_TRACKED")
    await send(gateway, sign, {"notify_type": "TEST_TRACKED", "token": "before"})
    await eventually(lambda: effect_count(db, "before"))
    # An event accepted while no worker consumes its kind waits in its quorum queue across the restart.
    body = sample("cancel_card")
    assert (await gateway.post(PATH, data=body, headers=sign(body))).status == 200
    try:
        await asyncio.to_thread(rabbitmq, "stop_app")
        response = await gateway.post(PATH, data=body, headers=sign(body))
        assert response.status == 503  # not stored: the platform will send it again
    finally:
        await asyncio.to_thread(rabbitmq, "start_app")
        await asyncio.to_thread(rabbitmq, "await_startup")

    async def accepted():
        response = await gateway.post(
            PATH,
            data=b'{"notify_type":"TEST_TRACKED","token":"after"}',
            headers=sign(b'{"notify_type":"TEST_TRACKED","token":"after"}'),
        )
        return response.status == 200

    await eventually(accepted, timeout=30, interval=0.5)
    await eventually(lambda: effect_count(db, "after"), timeout=30)
    assert runtime.consuming
    await make_worker("CANCEL_CARD")
    await eventually(lambda: db.fetchval("SELECT count(*) FROM hypercard_card_cancellations"), timeout=10)


async def test_readme_extension_example_receives_its_kind(gateway, db, amqp, sign, tmp_path):
    await db.execute("DROP TABLE IF EXISTS card_statuses")
    worker = worker_process(
        tmp_path,
        "CARD_STATUS_CHANGE",
        "--handlers",
        "card_status_change",
        env={"PYTHONPATH": str(Path(README_EXAMPLE).parent)},
    )
    try:
        await eventually(lambda: _logged(worker, event="consuming"), timeout=20)
        changes = [("ACTIVE", "FROZEN", 100), ("FROZEN", "ACTIVE", 200), ("ACTIVE", "FROZEN", 300)]
        payloads = [
            {"notify_type": "CARD_STATUS_CHANGE", "card_id": "c-1", "old_status": old, "new_status": new,
             "update_time": at}
            for old, new, at in changes
        ]  # fmt: skip
        for payload in payloads:
            await send(gateway, sign, payload)
        await send(gateway, sign, payloads[0])  # a platform retry of the first: no second effect
        handled = await eventually(lambda: _true(len(worker.events(event="message", outcome="handled")) == 3))
        assert handled and await eventually(lambda: _logged(worker, outcome="duplicate"))
        row = await db.fetchrow("SELECT card_id, status, extract(epoch FROM changed_at)::int AS at FROM card_statuses")
        assert tuple(row) == ("c-1", "FROZEN", 300)  # frozen, unfrozen, frozen again: frozen
    finally:
        worker.stop()
    unrouted = await amqp.declare_queue(topology.UNROUTED_QUEUE, passive=True)
    assert unrouted.declaration_result.message_count == 0


async def _true(value: bool) -> bool:
    return value


async def test_a_delivery_limit_other_than_the_brokers_is_reported_naming_the_setting(db, tmp_path):
    """The db fixture declared hypercard.test_tracked with the default limit; this worker is given another."""
    worker = worker_process(tmp_path, *TRACKED, env={"HC_DELIVERY_LIMIT": "3"})
    try:
        failures = await eventually(lambda: _true(worker.events(event="broker connection failed")), timeout=20)
        assert failures
        (first, *_) = worker.events(event="broker connection failed")
        assert "HC_DELIVERY_LIMIT=3" in first["error"] and "hypercard.test_tracked" in first["error"]
        assert not worker.events(event="consuming")
    finally:
        worker.stop()
