"""The monitoring proven on data: `make dashboards`' script and Prometheus against a real gateway, worker and
broker; every PromQL expression of the Grafana dashboard returns series."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from gateway.send import generate_keys, load_private_key, signed_headers
from schemas.samples import sample_body, sample_names
from tests.support.database import reset_database
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import REPO, gateway_process, worker_process
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
DASHBOARD = REPO / "deploy/grafana/dashboards/hypercard-pipeline.json"


def query(port: int, expr: str, path: str = "query") -> list:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode({"query": expr} if expr else {})
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.load(reply)["data"]["result" if path == "query" else "activeTargets"]


async def test_every_dashboard_query_returns_series_from_a_running_system(tmp_path: Path, amqp):
    await reset_database()
    key = load_private_key(generate_keys(tmp_path)[0])
    port, gateway_metrics, worker_metrics, prometheus_port = (free_port() for _ in range(4))
    gateway = gateway_process(tmp_path, port, {"HC_GATEWAY_METRICS_PORT": str(gateway_metrics)})
    worker = worker_process(
        tmp_path, "--all", "--handlers", "tests.support.tracked_kind", env={"HC_METRICS_PORT": str(worker_metrics)}
    )
    state = tmp_path / "prometheus"
    script = await asyncio.to_thread(
        subprocess.run, [str(REPO / "deploy/local/dashboards.sh")], capture_output=True, text=True, timeout=180,
        env={**os.environ, "PROMETHEUS_PORT": str(prometheus_port), "DASHBOARDS_STATE": str(state),
             "GATEWAY_METRICS": f"127.0.0.1:{gateway_metrics}", "WORKER_METRICS": f"127.0.0.1:{worker_metrics}"},
    )  # fmt: skip
    try:
        assert script.returncode == 0, script.stdout + script.stderr
        assert "http://127.0.0.1:15672/#/queues" in script.stdout and f":{prometheus_port}/alerts" in script.stdout
        await asyncio.to_thread(wait_until_ready, port)

        async def all_targets_up() -> bool:
            targets = await asyncio.to_thread(query, prometheus_port, "", "targets")
            return len(targets) == 3 and all(target["health"] == "up" for target in targets)

        await eventually(all_targets_up, timeout=60, interval=1)
        await send_traffic(port, key)

        dashboard = json.loads(DASHBOARD.read_text())
        expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
        empty: list[str] = expressions

        async def every_query_has_series() -> bool:
            nonlocal empty
            empty = [expr for expr in empty if not await asyncio.to_thread(query, prometheus_port, expr)]
            return not empty

        # rate() needs two scrapes (5 s apart) after the traffic: give it a few.
        with contextlib.suppress(AssertionError):
            await eventually(every_query_has_series, timeout=45, interval=1)
        assert not empty, f"dashboard queries without series: {empty}"
    finally:
        if (state / "prometheus.pid").exists():
            os.kill(int((state / "prometheus.pid").read_text()), signal.SIGTERM)
        gateway.stop()
        worker.stop()


async def send_traffic(port: int, key) -> None:
    """Every sample, a duplicate, a forged push, an invalid and an unknown kind, a retried and a given-up event."""
    url = f"http://127.0.0.1:{port}/hc_sync/common"
    bodies = [sample_body(name) for name in sample_names()] + [sample_body("recharge")]
    bodies += [
        b'{"notify_type":"RECHARGE","card_id":"c-1"}',
        b'{"notify_type":"LOW_BALANCE","card_id":"c-1"}',
        b'{"notify_type":"TEST_TRACKED","token":"retried","fail_until":2}',
        b'{"notify_type":"TEST_TRACKED","token":"dead","outcome":"give_up"}',
    ]
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            headers = {**signed_headers(key, body, "merchant-1"), "Content-Type": "application/json"}
            async with session.post(url, data=body, headers=headers) as reply:
                assert reply.status == 200
        forged = {**headers, "signature": "Zm9yZ2Vk"}
        async with session.post(url, data=bodies[0], headers=forged) as reply:
            assert reply.status == 401
