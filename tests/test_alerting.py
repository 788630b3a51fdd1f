"""Alerts that reach someone: `make dashboards`' script starts the real Prometheus and Alertmanager, a rule of
deploy/prometheus/alerts.yml fires on the metrics of a target this test serves, and the notification arrives at a
webhook this test runs, with the routing of deploy/alertmanager/alertmanager.yml (grouped by kind, a broker outage
holding back the alerts it causes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import yaml
from aiohttp import web

from tests.support.network import free_port
from tests.support.processes import REPO
from tests.support.waiting import eventually

ALERTMANAGER_CONFIG = REPO / "deploy/alertmanager/alertmanager.yml"


class Webhook:
    """An HTTP receiver for Alertmanager's webhook: every notification it gets, as JSON."""

    def __init__(self) -> None:
        self.notifications: list[dict] = []
        self.port = free_port()

    async def receive(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.Response(text="ok")

    def alerts(self, **labels: str) -> list[dict]:
        return [alert for notification in self.notifications for alert in notification["alerts"]
                if labels.items() <= alert["labels"].items()]  # fmt: skip


@contextlib.asynccontextmanager
async def serving(routes: list[web.RouteDef], port: int) -> AsyncIterator[None]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


def config_for(webhook: Webhook, folder: Path) -> Path:
    """The shipped Alertmanager config, its receiver pointed at the test's webhook and its first wait shortened
    (30 s in the file); routing, grouping and inhibition as shipped."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (receiver,) = config["receivers"]
    (hook,) = receiver["webhook_configs"]
    hook["url"] = f"http://127.0.0.1:{webhook.port}/hypercard-alerts"
    config["route"]["group_wait"] = "1s"
    path = folder / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def kill(pid_file: Path) -> None:
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_the_alertmanager_config_passes_amtool_and_prometheus_sends_to_it():
    checked = subprocess.run(["amtool", "check-config", str(ALERTMANAGER_CONFIG)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name, target in (("prometheus.yml", "alertmanager:9093"), ("local.yml", "127.0.0.1:9093")):
        config = yaml.safe_load((REPO / "deploy/prometheus" / name).read_text())
        targets = [t for manager in config["alerting"]["alertmanagers"] for c in manager["static_configs"]
                   for t in c["targets"]]  # fmt: skip
        assert targets == [target], name
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["alertmanager"]
    assert compose["ports"] == ["127.0.0.1:9093:9093"], "no login of its own: this host only"
    assert any(v.startswith("./deploy/alertmanager/alertmanager.yml:") for v in compose["volumes"])


async def test_a_rule_fired_by_prometheus_arrives_at_the_webhook(tmp_path: Path):
    """HypercardWorkerFailuresContained (no `for`) on a worker whose contained-failure counter rises at every
    scrape, for two stages: Prometheus evaluates the shipped rule, Alertmanager sends both in one notification (no
    kind between them) to the webhook."""
    webhook, target_port, prometheus_port, alertmanager_port = Webhook(), free_port(), free_port(), free_port()
    scrapes = 0

    async def metrics(request: web.Request) -> web.Response:
        nonlocal scrapes
        scrapes += 1
        lines = [f'hypercard_worker_contained_failures_total{{kind="OPEN_CARD",stage="{stage}"}} {scrapes}'
                 for stage in ("decode", "headers")]  # fmt: skip
        return web.Response(text="\n".join(["# TYPE hypercard_worker_contained_failures_total counter", *lines, ""]))

    state = tmp_path / "dashboards"
    state.mkdir()
    target = f"127.0.0.1:{target_port}"
    env = {**os.environ, "PROMETHEUS_PORT": str(prometheus_port), "ALERTMANAGER_PORT": str(alertmanager_port),
           "DASHBOARDS_STATE": str(state), "ALERTMANAGER_CONFIG": str(config_for(webhook, tmp_path)),
           "GATEWAY_METRICS": target, "WORKER_METRICS": target, "RABBITMQ_METRICS": target}  # fmt: skip
    async with serving([web.post("/hypercard-alerts", webhook.receive)], webhook.port):
        async with serving([web.get("/{path:.*}", metrics)], target_port):
            script = await asyncio.to_thread(
                subprocess.run, [str(REPO / "deploy/local/dashboards.sh")], capture_output=True, text=True,
                timeout=180, env=env,
            )  # fmt: skip
            try:
                assert script.returncode == 0, script.stdout + script.stderr
                assert f"http://127.0.0.1:{alertmanager_port}/#/alerts" in script.stdout

                async def both_stages_notified() -> bool:
                    contained = webhook.alerts(alertname="HypercardWorkerFailuresContained")
                    stages = {alert["labels"].get("stage") for alert in contained}
                    return stages == {"decode", "headers"}

                await eventually(both_stages_notified, timeout=90, interval=0.5)
            finally:
                kill(state / "prometheus.pid")
                kill(state / "alertmanager.pid")
    notification = webhook.notifications[0]
    assert notification["status"] == "firing" and notification["receiver"] == "operator"
    assert notification["groupLabels"] == {"alertname": "HypercardWorkerFailuresContained"}
    assert len(notification["alerts"]) == 2, json.dumps(webhook.notifications)
    alert = notification["alerts"][0]
    assert alert["status"] == "firing" and alert["labels"]["severity"] == "ticket"
    assert alert["annotations"]["summary"].startswith("worker failures contained at stage ")
    assert "grep the worker log" in alert["annotations"]["action"]


def post_alerts(port: int, alerts: list[dict[str, str]]) -> None:
    """Alerts as Prometheus sends them (Alertmanager's API v2), each firing now."""
    body = json.dumps([{"labels": labels, "annotations": {"summary": labels["alertname"]}} for labels in alerts])
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/alerts", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200


def alert_states(port: int) -> dict[str, str]:
    """alertname -> Alertmanager's state of it (active, suppressed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/alerts", timeout=5) as reply:
        return {alert["labels"]["alertname"]: alert["status"]["state"] for alert in json.load(reply)}


async def test_a_broker_down_holds_back_the_alerts_it_causes_and_each_kind_is_its_own_notification(tmp_path: Path):
    webhook, port = Webhook(), free_port()
    alertmanager = await asyncio.to_thread(
        subprocess.Popen,
        ["prometheus-alertmanager", f"--config.file={config_for(webhook, tmp_path)}",
         f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with serving([web.post("/hypercard-alerts", webhook.receive)], webhook.port):

            async def answers() -> bool:
                with contextlib.suppress(OSError):
                    return await asyncio.to_thread(alert_states, port) == {}
                return False

            await eventually(answers, timeout=30, interval=0.2)
            await asyncio.to_thread(post_alerts, port, [
                {"alertname": "HypercardBrokerDown", "severity": "page", "instance": "rabbitmq:15692"},
                {"alertname": "HypercardGatewayNotReady", "severity": "page", "instance": "gateway-1:9101"},
                {"alertname": "HypercardPushesAnswered503", "severity": "page"},
                {"alertname": "HypercardKindWithoutConsumer", "severity": "page", "queue": "hypercard.open_card"},
                {"alertname": "HypercardDeadLetters", "severity": "page", "queue": "hypercard.recharge.dead"},
                {"alertname": "HypercardDeadLetters", "severity": "page", "queue": "hypercard.opt_code.dead"},
            ])  # fmt: skip

            async def sent() -> bool:
                dead_letters = webhook.alerts(alertname="HypercardDeadLetters")
                return len(dead_letters) == 2 and bool(webhook.alerts(alertname="HypercardBrokerDown"))

            await eventually(sent, timeout=30, interval=0.2)
            await asyncio.sleep(3)  # past the 1 s group wait: an alert not held back would have been sent by now
            states = await asyncio.to_thread(alert_states, port)
    finally:
        alertmanager.terminate()
        alertmanager.wait(10)
    held_back = {"HypercardGatewayNotReady", "HypercardPushesAnswered503", "HypercardKindWithoutConsumer"}
    assert {name for name, state in states.items() if state == "suppressed"} == held_back
    received = {alert["labels"]["alertname"] for n in webhook.notifications for alert in n["alerts"]}
    assert received == {"HypercardBrokerDown", "HypercardDeadLetters"}
    dead_letters = [n for n in webhook.notifications if n["groupLabels"]["alertname"] == "HypercardDeadLetters"]
    kinds = sorted(n["groupLabels"]["queue"] for n in dead_letters)
    assert kinds == ["hypercard.opt_code.dead", "hypercard.recharge.dead"]
    assert all(len(n["alerts"]) == 1 for n in dead_letters), "one notification per kind"
