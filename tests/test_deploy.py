"""The deployment files, validated without a Docker engine: they parse, reference what exists, pass the tools'
own checks, and the dashboard asks for metrics the project exports."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from gateway.metrics import GatewayMetrics
from schemas.events import KNOWN_KINDS
from workers.metrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_compose_has_the_whole_system():
    assert {"rabbitmq", "postgres", "gateway", "lb", "prometheus", "grafana"} <= set(SERVICES)
    assert SERVICES["gateway"]["command"][0] == "hypercard-gateway"
    assert "ports" not in SERVICES["gateway"], "replicas cannot share a host port: the load balancer publishes it"


def test_worker_services_cover_every_kind_once():
    kinds = [
        kind
        for service in SERVICES.values()
        if service.get("command", [None])[0] == "hypercard-worker"
        for kind in service["command"][1:]
    ]
    assert sorted(kinds) == sorted(KNOWN_KINDS)


def test_every_gateway_and_worker_is_given_the_one_id_secret_and_compose_refuses_to_start_without_it():
    runs_ours = [s for s in SERVICES.values() if s.get("command", [""])[0] in ("hypercard-gateway", "hypercard-worker")]
    assert len(runs_ours) >= 4
    for service in runs_ours:
        assert service["environment"]["HC_ID_SECRET"].startswith("${HC_ID_SECRET:?")


def test_commands_are_console_scripts_of_the_project():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for service in SERVICES.values():
        if service.get("build"):
            assert service["command"][0] in scripts


def test_every_mounted_file_and_the_dockerfile_exist():
    assert (REPO / "Dockerfile").is_file()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


def test_rabbitmq_enables_management_and_prometheus():
    plugins = (REPO / "deploy/rabbitmq/enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins


def test_prometheus_config_passes_promtool_and_scrapes_the_services():
    config_path = REPO / "deploy/prometheus/prometheus.yml"
    result = subprocess.run(["promtool", "check", "config", str(config_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(config_path.read_text())
    targets = [
        t.split(":")[0] for job in config["scrape_configs"] for c in job.get("static_configs", []) for t in c["targets"]
    ]
    targets += [n for job in config["scrape_configs"] for c in job.get("dns_sd_configs", []) for n in c["names"]]
    assert set(targets) <= set(SERVICES)


def test_every_alert_rule_passes_its_promtool_unit_test():
    folder = REPO / "deploy/prometheus"
    result = subprocess.run(["promtool", "test", "rules", "alerts.test.yml"], cwd=folder, capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule["alert"] for group in yaml.safe_load((folder / "alerts.yml").read_text())["groups"]
              for rule in group["rules"]}  # fmt: skip
    tested = {case["alertname"] for test in yaml.safe_load((folder / "alerts.test.yml").read_text())["tests"]
              for case in test["alert_rule_test"] if case["exp_alerts"]}  # fmt: skip
    assert alerts == tested, f"alerts without a firing test case: {alerts - tested}"
    readme = (REPO / "README.md").read_text()
    assert all(alert in readme for alert in alerts), "the README's Monitoring section explains every alert"


def test_haproxy_config_is_valid_and_checks_readiness():
    config = REPO / "deploy/haproxy/haproxy.cfg"
    result = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "httpchk GET /readyz" in config.read_text()


def exported_metric_names() -> set[str]:
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for registry in (GatewayMetrics().registry, WorkerMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_dashboard_loads_and_queries_exported_metrics():
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/hypercard-pipeline.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b(hypercard_[a-z_]+)\b", expr)}
    assert used, "the dashboard queries no project metric"
    assert used <= exported_metric_names()
    assert any("rabbitmq_queue_messages" in expr and ".dead" in expr for expr in expressions)
    provisioning = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/hypercard.yml").read_text())
    assert provisioning["providers"][0]["options"]["path"] in {v.split(":")[1] for v in SERVICES["grafana"]["volumes"]}
