"""No code 1 without the broker's confirm: broker down, confirms held back, connection cut."""

from __future__ import annotations

import asyncio
import time

import pytest

from schemas import topology
from tests.support.broker import AMQP_URL, take
from tests.support.network import free_port
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.broker
PATH = "/hc_sync/common"


@pytest.fixture
async def proxy():
    proxy = await TcpProxy().start()
    yield proxy
    await proxy.close()


async def test_broker_unreachable_answers_503_at_once(make_gateway, sign, sample):
    client = await make_gateway(wait_ready=False, amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    body = sample("recharge")
    started = time.perf_counter()
    for _ in range(5):
        response = await client.post(PATH, data=body, headers=sign(body))
        assert response.status == 503 and (await response.json())["code"] != 1
    assert time.perf_counter() - started < 1.0
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200


async def test_code_1_is_not_sent_before_the_confirm(make_gateway, amqp, sign, sample, proxy):
    client = await make_gateway(amqp_url=proxy.url, publish_timeout=10)
    body = sample("operation")
    proxy.hold_replies()
    request = asyncio.create_task(client.post(PATH, data=body, headers=sign(body)))
    # The message reaches the broker and is stored, but its confirm is held in the proxy: no reply may leave.
    assert len(await take(amqp, topology.kind_queue("OPERATION"))) == 1
    await asyncio.sleep(0.5)
    assert not request.done()
    proxy.release_replies()
    response = await asyncio.wait_for(request, 5)
    assert response.status == 200 and (await response.json())["code"] == 1


async def test_confirm_that_never_arrives_answers_503(make_gateway, amqp, sign, sample, proxy):
    client = await make_gateway(amqp_url=proxy.url, publish_timeout=0.5)
    body = sample("operation")
    proxy.hold_replies()
    response = await client.post(PATH, data=body, headers=sign(body))
    assert response.status == 503 and (await response.json())["code"] != 1


async def test_reconnects_in_the_background_after_a_reset(make_gateway, amqp, sign, sample, proxy):
    client = await make_gateway(amqp_url=proxy.url)
    body = sample("consume")
    assert (await client.post(PATH, data=body, headers=sign(body))).status == 200
    proxy.reset_all()
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = await client.post(PATH, data=body, headers=sign(body))
        statuses.append(response.status)
        if response.status == 200:
            break
        await asyncio.sleep(0.1)
    assert statuses[-1] == 200 and set(statuses) <= {200, 503}
    accepted = 1 + statuses.count(200)
    assert len(await take(amqp, topology.kind_queue("CONSUME"))) == accepted


async def test_fails_over_to_the_next_broker_node(make_gateway, amqp, sign, sample):
    dead_node = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    client = await make_gateway(amqp_url=f"{dead_node},{AMQP_URL}")
    body = sample("consume")
    assert (await client.post(PATH, data=body, headers=sign(body))).status == 200


async def test_slow_body_is_cut_off(make_gateway, sign):
    client = await make_gateway(read_timeout=0.5)

    async def trickle():
        for byte in b'{"notify_type":"CONSUME","card_id":"1"}':
            yield bytes([byte])
            await asyncio.sleep(0.2)

    response = await client.post(PATH, data=trickle(), headers=sign(b"{}"))
    assert response.status == 408 and (await response.json())["code"] != 1


async def test_unknown_kind_with_no_queue_to_keep_it_answers_503_then_the_topology_is_declared_again(
    make_gateway, amqp, sign
):
    """mandatory=True is what stands between a deleted hypercard.unrouted and a code 1 for an event kept nowhere."""
    client = await make_gateway()
    await amqp.queue_delete(topology.UNROUTED_QUEUE)
    body = b'{"notify_type":"CARD_STATUS_CHANGE","card_id":"c-1","old_status":"ACTIVE","new_status":"FROZEN"}'
    response = await client.post(PATH, data=body, headers=sign(body))
    assert response.status == 503 and (await response.json())["code"] != 1

    # The returned message made the gateway reconnect and declare its topology again: the next push is kept.
    deadline = time.monotonic() + 10
    while (response := await client.post(PATH, data=body, headers=sign(body))).status != 200:
        assert response.status == 503 and time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await response.json())["code"] == 1
    assert len(await take(amqp, topology.UNROUTED_QUEUE)) == 1
