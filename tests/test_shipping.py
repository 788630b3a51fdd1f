"""The shipping path of a user's kind, as deploy/ and examples/ show it (README, "Shipping a kind"), checked without
an engine or a cluster: the derived image passes hadolint and installs only the package's wheel on top of the
project's image; the compose override runs the kind's worker and gives the derived image to every service that must
know the kind; the Kubernetes component adds the worker, its ScaledObject and its scrape target, and switches every
workload to the derived image (its objects are validated with the base's, tests/test_kubernetes.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from schemas import topology

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "low_balance"
COMPONENT = REPO / "deploy" / "kubernetes" / "low-balance"
KIND = "LOW_BALANCE"


def test_the_derived_image_adds_the_packages_wheel_to_the_projects_image_and_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(EXAMPLE / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.split(" ", 1) for line in (EXAMPLE / "Dockerfile").read_text().splitlines() if line[:1].isupper()]
    final = lines[[word for word, _ in lines].index("FROM", 2) :]  # the second stage: the image that ships
    assert final[0] == ["FROM", "${BASE}"] and ["ARG", "BASE=hypercard-gateway:0.1.0"] in lines
    (install,) = [arguments for word, arguments in final if word == "RUN"]
    assert "--no-index --no-deps /wheels/*.whl" in install  # only the package: the project is the base image's
    assert [arguments for word, arguments in final if word == "USER"][-1] == "10001:10001"


def test_the_compose_override_runs_the_kinds_worker_on_the_derived_image():
    override = yaml.safe_load((EXAMPLE / "compose.yaml").read_text())["services"]
    base = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert {"broker-setup", "gateway"} <= base.keys() and "worker-low-balance" not in base
    for name in ("broker-setup", "gateway", "worker-low-balance"):
        assert override[name]["build"] == "examples/low_balance", name  # relative to docker-compose.yml's folder
    worker = override["worker-low-balance"]
    assert worker["command"] == ["hypercard-worker", KIND]
    assert worker["depends_on"]["broker-setup"]["condition"] == "service_completed_successfully"


def load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((COMPONENT / name).read_text()) if doc]


def test_the_kubernetes_component_adds_the_worker_its_scaling_and_scrape_target_on_the_derived_image():
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in COMPONENT.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")  # fmt: skip
    (image,) = kustomization["images"]
    assert image["name"] == "hypercard-gateway" and image["newName"] == "hypercard-low-balance"
    (deployment,) = load("worker.yaml")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["hypercard-worker"] and container["args"] == [KIND]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(container["ports"][0]["containerPort"])
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    (scaled,) = load("autoscaling.yaml")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert [t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]] == [topology.kind_queue(KIND)]
