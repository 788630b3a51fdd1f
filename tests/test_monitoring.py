"""The monitoring proven on data: `make dashboards`' script and Prometheus against a real gateway, worker and
broker; every PromQL expression of the Grafana dashboard returns series, and those this test makes happen (a failure
contained, a batch rolled back on a lock, inbox keys pruned, a key file that does not load) show it. In compose, every
replica of a scaled service is scraped, and HAProxy logs its requests and serves its own metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import pytest
import yaml

from gateway.send_cli import generate_keys, load_private_key, signed_headers
from schemas import topology
from schemas.samples import sample_body, sample_names
from tests.support.database import DATABASE_URL, reset_database
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import REPO, gateway_process, worker_process
from tests.support.tls import self_signed_pem
from tests.support.waiting import eventually

DASHBOARD = REPO / "deploy/grafana/dashboards/hypercard-pipeline.json"
# (panel title, refId) of the queries that must show a value above 0 once the test has made their event happen.
MOVED = {
    ("Failures contained to one delivery, and restarted loops", "A"),
    ("Gateways: ready, blocked by a broker alarm, key file not loading", "A"),
    ("Gateways: ready, blocked by a broker alarm, key file not loading", "C"),
    ("Deliveries by outcome", "A"),
    ("Batch size", "A"),
    ("Batches rolled back, handled one delivery per transaction", "A"),
    ("Inbox pruning", "A"),
    ("Signature verifications by platform key", "A"),
}


def query(port: int, expr: str, path: str = "query") -> list:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode({"query": expr} if expr else {})
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.load(reply)["data"]["result" if path == "query" else "activeTargets"]


def alert_states(port: int) -> tuple[set[tuple[str, str]], list[str]]:
    """(name, state) of the alerts pending or firing, and the errors of the rules that failed to evaluate."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as reply:
        rules = [rule for group in json.load(reply)["data"]["groups"] for rule in group["rules"]]
    active = {(rule["name"], alert["state"]) for rule in rules for alert in rule.get("alerts", [])}
    return active, [f"{rule['name']}: {rule.get('lastError')}" for rule in rules if rule["health"] == "err"]


def above_zero(port: int, expr: str) -> bool:
    """One of the query's series is above 0 (NaN, a quantile of no observation, is not)."""
    return any(float(series["value"][1]) > 0 for series in query(port, expr))


@pytest.mark.broker
@pytest.mark.database
async def test_every_dashboard_query_returns_series_from_a_running_system(tmp_path: Path, amqp):
    await reset_database()
    db = await asyncpg.connect(DATABASE_URL)
    await db.execute("DROP TABLE IF EXISTS test_hot")
    await db.execute("CREATE TABLE test_hot (touched integer NOT NULL); INSERT INTO test_hot VALUES (0)")
    key = load_private_key(generate_keys(tmp_path)[0])
    port, gateway_metrics, worker_metrics, prometheus_port, alertmanager_port = (free_port() for _ in range(5))
    gateway = gateway_process(tmp_path, port, {"HC_GATEWAY_METRICS_PORT": str(gateway_metrics)})
    worker = worker_process(
        tmp_path, "--all", "--handlers", "tests.support.tracked_kind",
        env={"HC_METRICS_PORT": str(worker_metrics), "HC_INBOX_PRUNE_INTERVAL": "1", "HC_BATCH_WAIT": "0.3"},
    )  # fmt: skip
    state = tmp_path / "prometheus"
    script = await asyncio.to_thread(
        subprocess.run, [str(REPO / "deploy/local/dashboards.sh")], capture_output=True, text=True, timeout=180,
        env={**os.environ, "PROMETHEUS_PORT": str(prometheus_port), "DASHBOARDS_STATE": str(state),
             "ALERTMANAGER_PORT": str(alertmanager_port),
             "GATEWAY_METRICS": f"127.0.0.1:{gateway_metrics}", "WORKER_METRICS": f"127.0.0.1:{worker_metrics}"},
    )  # fmt: skip
    try:
        assert script.returncode == 0, script.stdout + script.stderr
        assert "http://127.0.0.1:15672/#/queues" in script.stdout and f":{prometheus_port}/alerts" in script.stdout
        await asyncio.to_thread(wait_until_ready, port)

        async def all_targets_up() -> bool:
            targets = await asyncio.to_thread(query, prometheus_port, "", "targets")
            return len(targets) == 3 and all(target["health"] == "up" for target in targets)

        await eventually(all_targets_up, timeout=60, interval=1)  # every counter scraped at 0 before the events
        await send_traffic(port, key)
        await amqp.default_exchange.publish(  # straight to the kind's queue, as no gateway would: does not decode
            aio_pika.Message(b'{"notify_type":"TEST_TRACKED"}', headers={"event_id": "undecodable"}),
            routing_key=topology.kind_queue("TEST_TRACKED"),
        )
        await amqp.default_exchange.publish(  # a header no gateway writes: a failure contained to its delivery
            aio_pika.Message(b'{"notify_type":"TEST_TRACKED","token":"bad-attempt"}',
                             headers={"event_id": "bad-attempt", "attempt": "first"}),
            routing_key=topology.kind_queue("TEST_TRACKED"),
        )
        async with db.transaction():  # a row the batch updates, held past its lock timeout: rolled back
            await db.execute("SELECT * FROM test_hot FOR UPDATE")
            await send_traffic(port, key, [f'{{"notify_type":"TEST_TRACKED","token":"hot-{n}","touch_hot":true}}'
                                           .encode() for n in range(8)])  # fmt: skip
            await asyncio.sleep(1.5)
        await db.execute(  # past HC_INBOX_RETENTION_DAYS (30): the next round, within a second, prunes them
            "INSERT INTO hypercard_inbox (kind, idempotency_key, event_id, handled_at) "
            "SELECT 'TEST_TRACKED', 'old-' || n, 'old-' || n, now() - interval '40 days' FROM generate_series(1, 3) n"
        )
        (tmp_path / "platform-public.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nhalf writ")

        dashboard = json.loads(DASHBOARD.read_text())
        targets = {(panel["title"], target["refId"]): target["expr"]
                   for panel in dashboard["panels"] for target in panel["targets"]}  # fmt: skip
        assert MOVED <= targets.keys(), f"no such panel query: {MOVED - targets.keys()}"
        empty, still = list(targets.values()), [targets[name] for name in MOVED]

        async def every_query_shows_its_data() -> bool:
            nonlocal empty, still
            empty = [expr for expr in empty if not await asyncio.to_thread(query, prometheus_port, expr)]
            still = [expr for expr in still if not await asyncio.to_thread(above_zero, prometheus_port, expr)]
            return not empty and not still

        # rate() needs two scrapes (5 s apart) after the traffic: give it a few.
        with contextlib.suppress(AssertionError):
            await eventually(every_query_shows_its_data, timeout=45, interval=1)
        assert not empty, f"dashboard queries without series: {empty}"
        assert not still, f"dashboard queries still at 0 (or NaN) after their event: {still}"

        # The alert rules, on the same data: the contained failure fires (no `for`), the key file's is pending (5 m).
        expected = {("HypercardWorkerFailuresContained", "firing"), ("HypercardPlatformKeyFileNotLoading", "pending")}
        active: set[tuple[str, str]] = set()
        errors: list[str] = []

        async def alerts_follow() -> bool:
            nonlocal active, errors
            active, errors = await asyncio.to_thread(alert_states, prometheus_port)
            return expected <= active or bool(errors)

        with contextlib.suppress(AssertionError):
            await eventually(alerts_follow, timeout=45, interval=1)
        assert not errors, f"alert rules that fail on real data: {errors}"
        assert expected <= active, f"alerts pending or firing: {active}"
    finally:
        for started in ("prometheus.pid", "alertmanager.pid"):
            if (state / started).exists():
                os.kill(int((state / started).read_text()), signal.SIGTERM)
        gateway.stop()
        worker.stop()
        await db.close()


async def send_traffic(port: int, key, together: list[bytes] | None = None) -> None:
    """Every sample, a duplicate, a forged push, an invalid and an unknown kind, a retried and a given-up event; or
    the `together` bodies, all at once so that they arrive in one batch."""
    url = f"http://127.0.0.1:{port}/hc_sync/common"
    bodies = [sample_body(name) for name in sample_names()] + [sample_body("recharge")]
    bodies += [
        b'{"notify_type":"RECHARGE","card_id":"c-1"}',
        b'{"notify_type":"LOW_BALANCE","card_id":"c-1"}',
        b'{"notify_type":"TEST_TRACKED","token":"retried","fail_until":2}',
        b'{"notify_type":"TEST_TRACKED","token":"dead","outcome":"give_up"}',
    ]
    async with aiohttp.ClientSession() as session:

        async def push(body: bytes, forged: bool = False) -> int:
            headers = {**signed_headers(key, body, "merchant-1"), "Content-Type": "application/json"}
            if forged:
                headers["signature"] = "Zm9yZ2Vk"
            async with session.post(url, data=body, headers=headers) as reply:
                return reply.status

        if together is not None:
            assert await asyncio.gather(*(push(body) for body in together)) == [200] * len(together)
            return
        for body in bodies:
            assert await push(body) == 200
        assert await push(bodies[0], forged=True) == 401


COMPOSE_FILE = REPO / "docker-compose.yml"


def rendered_compose(tmp_path: Path) -> dict:
    """The compose file as `docker-compose config` renders it, every secret given."""
    secrets = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE_FILE.read_text()))
    (tmp_path / "empty.env").touch()
    rendered = subprocess.run(
        ["docker-compose", "--env-file", str(tmp_path / "empty.env"), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True, text=True, env={**os.environ, **{name: "secret1" for name in secrets}},
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    return yaml.safe_load(rendered.stdout)["services"]


def test_every_scaled_compose_service_is_scraped_through_dns_discovery(tmp_path: Path):
    """`--scale worker-cards=3` is three containers behind one DNS name: Prometheus must find each through that
    name (dns_sd_configs, type A) on the port the service serves its metrics, never a fixed host:port target."""
    services = rendered_compose(tmp_path)
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    discovered = {name: sd["port"] for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])
                  if sd.get("type") == "A" for name in sd["names"]}  # fmt: skip
    static = {target.split(":")[0] for job in config["scrape_configs"] for c in job.get("static_configs", [])
              for target in c["targets"]}  # fmt: skip
    ours = {name: service for name, service in services.items()
            if service.get("command", [""])[0] in ("hypercard-gateway", "hypercard-worker")}  # fmt: skip
    assert len(ours) >= 4
    for name, service in ours.items():
        environment = service["environment"]
        port = environment.get("HC_GATEWAY_METRICS_PORT") or environment["HC_METRICS_PORT"]
        assert discovered.get(name) == int(port), f"{name}'s replicas are not all scraped on :{port}"
        assert name not in static, f"{name} is scraped as one fixed target"
    checked = subprocess.run(["promtool", "check", "config", str(REPO / "deploy/prometheus/prometheus.yml")],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_haproxy_logs_each_request_and_serves_its_own_metrics(tmp_path: Path):
    """The shipped HAProxy config, its two listeners moved to loopback ports: a push gets a log line on HAProxy's
    output (over TLS, `push~`; no gateway behind it here: 503), and its metrics frontend serves Prometheus' format
    with that request counted."""
    push_port, metrics_port = free_port(), free_port()
    config = re.sub(r"maxconn \d+", "maxconn 1000", (REPO / "deploy/haproxy/haproxy.cfg").read_text())  # open files
    config, moved = re.subn(r"bind :8443 ", f"bind 127.0.0.1:{push_port} ", config)
    config, also = re.subn(r"bind :8405\n", f"bind 127.0.0.1:{metrics_port}\n", config)
    assert moved == also == 1
    (tmp_path / "haproxy.cfg").write_text(config)
    env = {**os.environ, "HC_TLS_CERT": str(self_signed_pem(tmp_path / "hypercard.pem"))}
    check = ["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")]
    checked = await asyncio.to_thread(subprocess.run, check, capture_output=True, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    log = tmp_path / "haproxy.log"
    with log.open("wb") as output:
        haproxy = await asyncio.to_thread(
            subprocess.Popen, ["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")], env=env,
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        context = ssl.create_default_context(cafile=env["HC_TLS_CERT"])

        async def pushed() -> int | None:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as session:
                    url = f"https://127.0.0.1:{push_port}/hc_sync/common"
                    async with session.post(url, data=b"{}", ssl=context) as reply:
                        return reply.status
            return None

        assert await eventually(pushed, timeout=15, interval=0.2) == 503

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
                return reply.read().decode()

        text = await asyncio.to_thread(metrics)
        assert re.search(r'^haproxy_frontend_http_requests_total\{proxy="push"\} [1-9]', text, re.M), text[:2000]
        assert 'haproxy_backend_active_servers{proxy="gateways"}' in text

        async def logged() -> bool:
            return "POST /hc_sync/common" in log.read_text()

        await eventually(logged, timeout=10, interval=0.2)
    finally:
        haproxy.terminate()
        haproxy.wait(10)
    lines = [line for line in log.read_text().splitlines() if "/hc_sync/common" in line]
    assert len(lines) == 1 and "push~ gateways/<NOSRV>" in lines[0] and " 503 " in lines[0], lines
    assert "/metrics" not in log.read_text(), "a scrape every 5 s is not logged"
