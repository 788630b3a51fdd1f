"""The Kubernetes manifests (deploy/kubernetes/), without a cluster: the core objects against the API's own schemas
(kubernetes-validate, strict), KEDA's objects against the fields KEDA documents, and what the project needs of them:
the drain fits in the grace period, every kind has one consuming Deployment and scales on its queue, every HC_*
variable is one a process reads, secrets come from a Secret, and no container runs as root or writes its image."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import msgspec
import pytest
import yaml

from gateway.settings import GatewaySettings
from infra.settings import BrokerSettings, env_name
from schemas import topology
from schemas.events import KNOWN_KINDS
from workers.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "deploy/kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest with the preStop sleep action
MANIFESTS = sorted(FOLDER.glob("*.yaml"))
OBJECTS = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]
# Kustomize components on top of the base (a user's kind: README, "Shipping a kind"), validated alike.
COMPONENT_OBJECTS = [doc for path in sorted(FOLDER.glob("*/*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
CORE = [doc for doc in OBJECTS + COMPONENT_OBJECTS if not doc["apiVersion"].startswith(("keda.sh/", "kustomize."))]
KEDA = [doc for doc in OBJECTS + COMPONENT_OBJECTS if doc["apiVersion"].startswith("keda.sh/")]


def named(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in OBJECTS if doc["kind"] == kind}


DEPLOYMENTS = named("Deployment")
GATEWAY = DEPLOYMENTS["hypercard-gateway"]
WORKERS = {name: doc for name, doc in DEPLOYMENTS.items() if name.startswith("hypercard-worker-")}
SETUP = named("Job")["hypercard-broker-setup"]


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def env(workload: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container(workload).get("env", [])}


def env_names(settings: type[msgspec.Struct]) -> set[str]:
    return {env_name(field.name) for field in msgspec.structs.fields(settings)}


# HC_ID_SECRET: the deployment secret of the keyed event ids (issue 19), read by the gateway and the workers.
KNOWN = {
    "gateway": env_names(GatewaySettings) | {"HC_ID_SECRET"},
    "worker": env_names(WorkerSettings) | {"HC_ID_SECRET"},
    "setup": env_names(BrokerSettings) | {"HC_MANAGEMENT_URL"},
}


@pytest.mark.parametrize("manifest", CORE, ids=lambda doc: f"{doc['kind']} {doc['metadata']['name']}")
def test_each_core_object_is_valid_for_the_kubernetes_api(manifest):
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


# KEDA's CRDs are not in kubernetes-validate's schemas: the fields of https://keda.sh/docs/2.14/reference/scaledobject-spec/
# and of the rabbitmq scaler (https://keda.sh/docs/2.14/scalers/rabbitmq-queue/) this project uses, nothing else.
RABBITMQ_TRIGGER = {
    "type": "object",
    "required": ["type", "metadata"],
    "additionalProperties": False,
    "properties": {
        "type": {"const": "rabbitmq"},
        "name": {"type": "string"},
        "metricType": {"enum": ["AverageValue", "Value"]},
        "authenticationRef": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "kind": {"enum": ["TriggerAuthentication"]}},
        },
        "metadata": {
            "type": "object",
            "required": ["mode", "value", "queueName"],
            "additionalProperties": False,
            "properties": {
                "protocol": {"enum": ["auto", "amqp", "http"]},
                "mode": {"enum": ["QueueLength", "MessageRate"]},
                "value": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                "activationValue": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                "queueName": {"type": "string"},
                "vhostName": {"type": "string"},
                "hostFromEnv": {"type": "string"},
            },
        },
    },
}
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string"},
                            "apiVersion": {"type": "string"},
                        },
                    },
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "triggers": {"type": "array", "minItems": 1, "items": RABBITMQ_TRIGGER},
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "spec": {
                "type": "object",
                "required": ["secretTargetRef"],
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {"parameter": {"enum": ["host"]}, "name": {"type": "string"},
                                           "key": {"type": "string"}},  # fmt: skip
                        },
                    }
                },
            },
        },
    },
}


@pytest.mark.parametrize("manifest", KEDA, ids=lambda doc: f"{doc['kind']} {doc['metadata']['name']}")
def test_each_keda_object_has_only_the_fields_keda_documents(manifest):
    jsonschema.validate(manifest, KEDA_SCHEMAS[manifest["kind"]])


def test_the_kustomization_applies_every_manifest():
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS if p.name != "kustomization.yaml")


def test_the_gateway_drains_within_its_grace_period():
    spec = GATEWAY["spec"]["template"]["spec"]
    drain = float(env(GATEWAY)["HC_DRAIN_SECONDS"]["value"])
    pre_stop = container(GATEWAY)["lifecycle"]["preStop"]["sleep"]["seconds"]
    # After the drain, in-flight requests get up to 2 x HC_PUBLISH_TIMEOUT (gateway.cli), then the broker closes.
    in_flight = max(2 * GatewaySettings().publish_timeout, 10.0)
    assert pre_stop >= 5, "the endpoints must be gone from every node before SIGTERM"
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain + in_flight


def test_the_gateway_is_ready_on_readyz_of_its_push_port():
    gateway = container(GATEWAY)
    ports = {port["name"]: port["containerPort"] for port in gateway["ports"]}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ports == {"http": int(env(GATEWAY)["HC_PORT"]["value"]),
                     "metrics": int(env(GATEWAY)["HC_GATEWAY_METRICS_PORT"]["value"])}  # fmt: skip
    assert ports == {"http": GatewaySettings().port, "metrics": GatewaySettings().gateway_metrics_port}
    service = named("Service")["hypercard-gateway"]["spec"]
    assert {port["targetPort"] for port in service["ports"]} == set(ports)
    assert service["selector"].items() <= GATEWAY["spec"]["template"]["metadata"]["labels"].items()
    budget = named("PodDisruptionBudget")["hypercard-gateway"]["spec"]
    assert budget["selector"]["matchLabels"] == GATEWAY["spec"]["selector"]["matchLabels"]
    assert budget["minAvailable"] < GATEWAY["spec"]["replicas"]


def test_every_kind_is_consumed_by_exactly_one_worker_deployment_that_scales_on_its_queue():
    consumed = {}
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in KEDA if doc["kind"] == "ScaledObject"}
    for name, deployment in WORKERS.items():
        worker = container(deployment)
        assert worker["command"] == ["hypercard-worker"]
        assert int(env(deployment)["HC_METRICS_PORT"]["value"]) == worker["ports"][0]["containerPort"]
        kinds = worker["args"]
        queues = {trigger["metadata"]["queueName"] for trigger in scaled[name]["spec"]["triggers"]}
        assert queues == {topology.kind_queue(kind) for kind in kinds}, name
        for kind in kinds:
            assert kind not in consumed, f"{kind} is consumed by {consumed[kind]} and {name}"
            consumed[kind] = name
        grace = float(env(deployment)["HC_SHUTDOWN_GRACE"]["value"])
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
        assert "replicas" not in deployment["spec"], "the ScaledObject owns the replica count"
    assert sorted(consumed) == sorted(KNOWN_KINDS)


def test_every_hc_variable_is_one_its_process_reads():
    workloads = {"gateway": [GATEWAY], "worker": list(WORKERS.values()), "setup": [SETUP]}
    for role, docs in workloads.items():
        for doc in docs:
            unknown = {name for name in env(doc) if name.startswith("HC_")} - KNOWN[role]
            assert not unknown, f"{doc['metadata']['name']}: {unknown}"


def test_secrets_come_from_the_secret_and_each_process_has_its_own_broker_user():
    secret_variables = re.compile(r"^(HC_AMQP_URL|HC_DATABASE_URL|HC_API_KEY|HC_ID_SECRET|HYPERCARD_\w+_AMQP_URL)$")
    for doc in [*DEPLOYMENTS.values(), SETUP]:
        for name, entry in env(doc).items():
            if secret_variables.match(name):
                assert "value" not in entry, f"{doc['metadata']['name']} sets {name} in the manifest"
                assert entry["valueFrom"]["secretKeyRef"]["name"] == "hypercard"
    broker_user = {doc["metadata"]["name"]: env(doc)["HC_AMQP_URL"]["valueFrom"]["secretKeyRef"]["key"]
                   for doc in [*DEPLOYMENTS.values(), SETUP]}  # fmt: skip
    assert broker_user.pop("hypercard-gateway") == "gateway-amqp-url"
    assert broker_user.pop("hypercard-broker-setup") == "admin-amqp-url"
    assert set(broker_user.values()) == {"worker-amqp-url"}
    setup_roles = {name for name in env(SETUP) if name.startswith("HYPERCARD_")}
    assert setup_roles == {f"HYPERCARD_{role.upper()}_AMQP_URL" for role in ("gateway", "worker", "operator")}
    (auth,) = [doc for doc in KEDA if doc["kind"] == "TriggerAuthentication"]
    assert auth["spec"]["secretTargetRef"][0]["key"] == "operator-amqp-url"


def test_no_container_runs_as_root_writes_its_image_or_keeps_a_capability():
    for doc in [*DEPLOYMENTS.values(), SETUP]:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        context = container(doc)["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        resources = container(doc)["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"]
        assert container(doc)["command"][0].startswith("hypercard-")
