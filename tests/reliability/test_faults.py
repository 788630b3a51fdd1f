"""Every event accounted for under faults: each test plays the platform through one fault and counts."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

import pytest

from tests.support.cluster import NODES, LocalCluster
from tests.support.harness import assert_every_event_accounted_for, dead_letters
from tests.support.services import outage, postgres_start, postgres_stop, rabbitmq_start, rabbitmq_stop
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]
COUNT, RATE = 600, 60  # ten seconds of steady load, the fault two to three seconds in
PAUSED = "database unreachable: consumption paused, deliveries returned without counting an attempt"


async def test_rabbitmq_restarted_mid_load(system):
    await system.start_gateway()
    await system.wait_consuming(system.start_worker())
    events, player = await system.play(
        COUNT, RATE, fault=lambda: outage(rabbitmq_stop, rabbitmq_start, 2), fault_after=3
    )
    report = await system.account(events, player)
    assert_every_event_accounted_for(report)
    assert report.resent > 0, "the outage was not felt: nothing was answered non-1"
    assert await dead_letters() == 0


async def test_connection_cut_half_open_then_reset(system):
    proxy = await TcpProxy().start()
    system.amqp_url = proxy.url
    try:
        await system.start_gateway()
        await system.wait_consuming(system.start_worker())

        async def cut() -> None:
            proxy.hold_replies()  # half-open: publishes go out, confirms never come back
            await asyncio.sleep(3)
            proxy.reset_all()  # then the link is reset
            proxy.release_replies()

        events, player = await system.play(COUNT, RATE, fault=cut, fault_after=2)
        report = await system.account(events, player)
    finally:
        await proxy.close()
    assert_every_event_accounted_for(report)
    assert report.resent > 0
    assert await dead_letters() == 0


async def test_worker_killed_mid_handling_then_restarted(system):
    await system.start_gateway()
    worker = system.start_worker()
    await system.wait_consuming(worker)

    async def kill_and_restart() -> None:
        worker.signal(signal.SIGKILL)
        await asyncio.to_thread(worker.wait)
        await asyncio.sleep(1)
        system.start_worker()

    events, player = await system.play(COUNT, RATE, fault=kill_and_restart, fault_after=3)
    report = await system.account(events, player)
    assert_every_event_accounted_for(report)
    assert await dead_letters() == 0


async def test_gateway_sigterm_mid_load_drains(system):
    first = await system.start_gateway()
    await system.start_gateway()
    await system.wait_consuming(system.start_worker())

    async def terminate_first() -> None:
        first.signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.wait) == 0

    events, player = await system.play(COUNT, RATE, fault=terminate_first, fault_after=3)
    report = await system.account(events, player)
    # A request written onto an idle keep-alive connection just as the drain closed it got no reply (counted as
    # cut) and was sent again, as the platform does: every event is accounted for, none lost, none doubled.
    assert_every_event_accounted_for(report)


async def test_postgresql_down_longer_than_the_whole_retry_schedule_is_not_the_events_fault(system):
    await system.start_gateway()
    worker = system.start_worker(HC_RETRY_DELAYS="0.2,0.4,0.8")  # 1.4 s in all; the database is down 5 s
    await system.wait_consuming(worker)
    events, player = await system.play(
        COUNT, RATE, fault=lambda: outage(postgres_stop, postgres_start, 5), fault_after=3
    )
    report = await system.account(events, player)
    assert_every_event_accounted_for(report)
    assert await dead_letters() == 0
    # The worker paused, said why once (not per message), returned what it held, and resumed by itself.
    assert len(worker.events(event=PAUSED)) == 1 and worker.events(event="database answers again: consuming")
    assert worker.events(event="message", outcome="returned") and not worker.events(outcome="retried")


async def test_one_node_of_a_three_node_cluster_stopped_mid_load(system, tmp_path_factory):
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="hc-cluster-")))
    try:
        await asyncio.to_thread(cluster.start)
        system.amqp_url = cluster.amqp_url
        await system.start_gateway()
        await system.wait_consuming(system.start_worker())
        # Every queue is a quorum queue with a member on each node: losing one node of three keeps a majority.
        events, player = await system.play(
            COUNT, RATE, fault=lambda: asyncio.to_thread(cluster.stop_node, NODES[0][0]), fault_after=3
        )
        report = await system.account(events, player)
        assert_every_event_accounted_for(report)
        assert await dead_letters(f"amqp://guest:guest@127.0.0.1:{NODES[1][1]}/") == 0
    finally:
        system.stop()
        await asyncio.to_thread(cluster.stop)
