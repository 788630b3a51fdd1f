"""A broker that blocks publishers (a resource alarm, `connection.blocked`) is answered at once, not after the
publish timeout; /readyz and a metric say so; publishing resumes on `connection.unblocked`.

RAISES A REAL DISK ALARM, on a RabbitMQ node this test starts for itself (never on the shared broker, where an alarm
would block every publisher of every checkout): `rabbitmqctl set_disk_free_limit` above the free space, then back
to the value read before, in a `finally`."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.app_keys import METRICS
from tests.support.private_node import PrivateNode

pytestmark = [pytest.mark.broker, pytest.mark.slow]
PATH = "/hc_sync/common"
PUBLISH_TIMEOUT = 5.0


@pytest.fixture
async def node():
    private = await asyncio.to_thread(PrivateNode("hcalarm").start)
    yield private
    await asyncio.to_thread(private.stop)


async def eventually(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


def gauges(metrics, *, blocked: int, ready: int):
    async def read() -> bool:
        sample = metrics.registry.get_sample_value
        return (sample("hypercard_gateway_broker_blocked"), sample("hypercard_gateway_ready")) == (blocked, ready)

    return read


async def test_a_blocked_broker_answers_503_at_once_and_readyz_says_why(node, make_gateway, sign, sample):
    client = await make_gateway(amqp_url=node.amqp_url, publish_timeout=PUBLISH_TIMEOUT)
    metrics = client.app[METRICS]
    body = sample("recharge")
    assert (await client.post(PATH, data=body, headers=sign(body))).status == 200

    limit = node.ctl("eval", "rabbit_disk_monitor:get_disk_free_limit().")
    free = int(node.ctl("eval", "rabbit_disk_monitor:get_disk_free()."))
    node.ctl("set_disk_free_limit", str(free * 100))
    try:
        assert "disk" in node.ctl("eval", "rabbit_alarm:get_alarms().")
        # RabbitMQ sends connection.blocked on the first publish during the alarm: that push, too, is answered then.
        started = time.perf_counter()
        first = await client.post(PATH, data=body, headers=sign(body))
        assert first.status == 503 and time.perf_counter() - started < PUBLISH_TIMEOUT / 2
        started = time.perf_counter()
        for _ in range(5):
            response = await client.post(PATH, data=body, headers=sign(body))
            assert response.status == 503 and "blocks publishing" in (await response.json())["msg"]
        assert time.perf_counter() - started < 1.0
        ready = await client.get("/readyz")
        assert ready.status == 503 and "blocks publishing" in (await ready.json())["msg"]
        await eventually(gauges(metrics, blocked=1, ready=0))  # the readiness task sets them every second
    finally:
        node.ctl("set_disk_free_limit", limit)

    async def ready_again() -> bool:
        return (await client.get("/readyz")).status == 200

    await eventually(ready_again)
    assert (await client.post(PATH, data=body, headers=sign(body))).status == 200
    await eventually(gauges(metrics, blocked=0, ready=1))
