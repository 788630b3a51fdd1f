"""The Kubernetes manifests (deploy/kubernetes/), without a cluster: the core objects against the API's own schemas
(kubernetes-validate, strict), KEDA's objects against the fields KEDA documents, every custom object (KEDA,
Prometheus operator, cert-manager) against its CRD's published schema, and what the project needs of them:
the drain fits in the grace period, every kind has one consuming Deployment and scales on its queue, every HC_*
variable is one a process reads, secrets come from a Secret, and no container runs as root or writes its image."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import jsonschema
import kubernetes_validate
import msgspec
import pytest
import yaml

from gateway.app import COMMON_PATH
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
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "cert-manager.io/")  # CRDs: schemas in deploy/kubernetes/schemas
# Kustomize components on top of the base (a user's kind: README, "Shipping a kind"), validated alike.
COMPONENT_OBJECTS = [doc for path in sorted(FOLDER.glob("*/*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
ALL_OBJECTS = OBJECTS + [doc for doc in COMPONENT_OBJECTS if doc]
CORE = [doc for doc in ALL_OBJECTS if not doc["apiVersion"].startswith((*CUSTOM_GROUPS, "kustomize."))]
CUSTOM = [doc for doc in ALL_OBJECTS if doc["apiVersion"].startswith(CUSTOM_GROUPS)]
KEDA = [doc for doc in ALL_OBJECTS if doc["apiVersion"].startswith("keda.sh/")]


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
                            "properties": {
                                "parameter": {"enum": ["host"]},
                                "name": {"type": "string"},
                                "key": {"type": "string"},
                            },  # fmt: skip
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
    secret_variables = re.compile(
        r"^(HC_AMQP_URL|HC_DATABASE_URL|HC_MIGRATION_DATABASE_URL|HC_API_KEY|HC_ID_SECRET|HYPERCARD_\w+_AMQP_URL)$"
    )
    for doc in [*DEPLOYMENTS.values(), SETUP]:
        for name, entry in env(doc).items():
            if secret_variables.match(name):
                assert "value" not in entry, f"{doc['metadata']['name']} sets {name} in the manifest"
                assert entry["valueFrom"]["secretKeyRef"]["name"] == "hypercard"
    broker_user = {doc["metadata"]["name"]: env(doc)["HC_AMQP_URL"]["valueFrom"]["secretKeyRef"]["key"]
                   for doc in [*DEPLOYMENTS.values(), SETUP]}  # fmt: skip
    assert broker_user.pop("hypercard-gateway") == "gateway-amqp-url"
    assert broker_user.pop("hypercard-broker-setup") == "admin-amqp-url"
    # One broker user per worker group, reading only its kinds' queues (issue 26, finding 6).
    setup = env(SETUP)
    assert {"HYPERCARD_GATEWAY_AMQP_URL", "HYPERCARD_OPERATOR_AMQP_URL"} <= setup.keys()
    for name, key in broker_user.items():
        group = name.removeprefix("hypercard-")  # worker-cards
        assert key == f"{group}-amqp-url", name
        variable = f"HYPERCARD_{group.upper().replace('-', '_')}"
        assert setup[f"{variable}_AMQP_URL"]["valueFrom"]["secretKeyRef"]["key"] == key
        assert setup[f"{variable}_KINDS"]["value"].split(",") == container(DEPLOYMENTS[name])["args"], name
    assert len(set(broker_user.values())) == len(WORKERS)
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


def crd_schema(manifest: dict) -> dict:
    """The CRD's schema kept in deploy/kubernetes/schemas, strict: a field the CRD does not define is an error (the
    API server would drop it without a word, `kubectl apply --validate=strict` refuses it)."""
    group, version = manifest["apiVersion"].split("/")
    path = FOLDER / "schemas" / f"{manifest['kind'].lower()}-{group.split('.')[0]}-{version}.json"
    schema = json.loads(path.read_text())

    def strict(node: object) -> None:
        if isinstance(node, dict):
            if str(node.get("pattern", "")).startswith("^(?i)"):  # Go's RE2 takes a flag there; Python's re first
                node["pattern"] = "(?i)^" + node["pattern"][5:]
            if "properties" in node and "additionalProperties" not in node:
                if not node.get("x-kubernetes-preserve-unknown-fields"):
                    node["additionalProperties"] = False
            for child in node.values():
                strict(child)
        elif isinstance(node, list):
            for child in node:
                strict(child)

    strict(schema)
    return schema


@pytest.mark.parametrize("manifest", CUSTOM, ids=lambda doc: f"{doc['kind']} {doc['metadata']['name']}")
def test_each_custom_object_is_valid_for_its_published_crd_schema(manifest):
    jsonschema.validate(manifest, crd_schema(manifest))


def test_a_field_the_crd_does_not_define_fails_the_schema_check():
    scaled = next(doc for doc in CUSTOM if doc["kind"] == "ScaledObject")
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        jsonschema.validate({**scaled, "spec": {**scaled["spec"], "minReplicas": 2}}, crd_schema(scaled))
    assert {doc["kind"] for doc in CUSTOM} == {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PodMonitor",
                                             "PrometheusRule", "Certificate"}  # fmt: skip


def test_the_prometheus_rule_is_generated_from_the_one_rules_file():
    generator = runpy.run_path(str(FOLDER / "prometheus_rule.py"))
    assert (FOLDER / "prometheusrule.yaml").read_text() == generator["prometheus_rule"](), (
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: run make kubernetes-rules"
    )
    (rule,) = named("PrometheusRule").values()
    assert rule["spec"] == yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())


def test_the_gateway_and_every_worker_are_scraped_under_the_job_names_of_the_alert_rules():
    compose_prometheus = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in compose_prometheus["scrape_configs"]}
    gateway_monitor = named("ServiceMonitor")["hypercard-gateway"]
    service = named("Service")["hypercard-gateway"]
    assert gateway_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = gateway_monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]} and endpoint["port"] == "metrics"
    (worker_monitor,) = named("PodMonitor").values()
    (pod_endpoint,) = worker_monitor["spec"]["podMetricsEndpoints"]
    for deployment in WORKERS.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert worker_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pod_endpoint["port"] in {port["name"] for port in container(deployment)["ports"]}
    named_jobs = [relabel["replacement"] for monitor in (endpoint, pod_endpoint) for relabel in monitor["relabelings"]
                  if relabel["targetLabel"] == "job"]  # fmt: skip
    assert named_jobs == ["gateway", "workers"] and set(named_jobs) <= jobs


def test_every_job_an_alert_rule_names_is_scraped_under_that_name():
    """HypercardBrokerDown asks for up{job="rabbitmq"} and the queue alerts read RabbitMQ's per-queue figures: a job
    no monitor fills never fires, and in Kubernetes nothing else names the jobs."""
    rules = (REPO / "deploy/prometheus/alerts.yml").read_text()
    wanted = set(re.findall(r'job="([^"]+)"', rules)) | ({"rabbitmq"} if "rabbitmq_queue_" in rules else set())
    scraped: dict[str, list[dict]] = {}
    for monitor in [*named("ServiceMonitor").values(), *named("PodMonitor").values()]:
        for endpoint in monitor["spec"].get("endpoints", []) + monitor["spec"].get("podMetricsEndpoints", []):
            for relabel in endpoint.get("relabelings", []):
                if relabel.get("targetLabel") == "job":
                    scraped.setdefault(relabel["replacement"], []).append(endpoint)
    assert wanted <= set(scraped), f"no monitor scrapes the job(s) {wanted - set(scraped)} the alert rules name"
    assert [endpoint.get("path") for endpoint in scraped["rabbitmq"]] == ["/metrics/per-object"], (
        "per-queue figures (rabbitmq_queue_messages by queue) come from RabbitMQ's per-object endpoint only"
    )


def policy_ports(policy: dict) -> dict[str, set[str]]:
    """Each port a policy opens -> the namespaces allowed to reach it."""
    opened: dict[str, set[str]] = {}
    for rule in policy["spec"].get("ingress", []):
        sources = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]}
        for port in rule["ports"]:
            opened.setdefault(port["port"], set()).update(sources)
    return opened


def test_the_namespace_is_closed_but_to_the_ingress_and_to_the_monitoring():
    policies = named("NetworkPolicy")
    deny = policies["hypercard-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}, "every pod: no connection but those allowed"
    gateway, workers = policies["hypercard-gateway"], policies["hypercard-workers"]
    assert gateway["spec"]["podSelector"]["matchLabels"] == GATEWAY["spec"]["selector"]["matchLabels"]
    assert policy_ports(gateway) == {"http": {"ingress-nginx"}, "metrics": {"monitoring"}}
    assert policy_ports(workers) == {"metrics": {"monitoring"}}
    for deployment in WORKERS.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert workers["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy_ports(gateway)) <= {port["name"] for port in container(GATEWAY)["ports"]}
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    (namespace,) = named("Namespace")
    assert kustomization["namespace"] == namespace
    assert not [doc["metadata"]["name"] for doc in OBJECTS if "namespace" in doc.get("metadata", {})], (
        "the kustomization sets every object's namespace"
    )


def test_the_ingress_serves_the_push_path_with_the_certificate_cert_manager_renews():
    (ingress,) = named("Ingress").values()
    (certificate,) = named("Certificate").values()
    (tls,) = ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    assert tls["secretName"] == certificate["spec"]["secretName"]
    assert tls["hosts"] == [rule["host"]] == certificate["spec"]["dnsNames"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == (COMMON_PATH, "Exact"), "the push path only"
    assert path["backend"]["service"] == {"name": "hypercard-gateway", "port": {"name": "http"}}
    assert certificate["spec"]["renewBefore"], "renewed by cert-manager before it expires"


# cert-manager answers Let's Encrypt's HTTP-01 challenge from a solver pod it starts in the Certificate's namespace
# (this label, port 8089), which the ACME server reaches through the ingress controller.
ACME_SOLVER_LABELS = {"acme.cert-manager.io/http01-solver": "true"}
ACME_SOLVER_PORT = 8089


def test_the_ingress_controller_reaches_cert_managers_challenge_solver_in_the_closed_namespace():
    opened: dict[str, set[str]] = {}
    for policy in named("NetworkPolicy").values():
        if policy["spec"]["podSelector"].get("matchLabels", {}).items() <= ACME_SOLVER_LABELS.items():
            for port, sources in policy_ports(policy).items():
                opened.setdefault(port, set()).update(sources)
    assert "ingress-nginx" in opened.get(ACME_SOLVER_PORT, set()), (
        "the default deny drops the challenge: the certificate is never issued, nor renewed"
    )


# The worker's health server (HC_HEALTH_PORT, default 9101): /livez answers while the event loop refreshes its
# heartbeat, /readyz while the worker consumes and is not paused.
WORKER_HEALTH_PORT = 9101


def test_every_worker_is_probed_on_the_health_endpoint_its_event_loop_answers():
    for name, deployment in WORKERS.items():
        worker = container(deployment)
        ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
        assert ports["health"] == WORKER_HEALTH_PORT, name
        assert worker["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}, name
        assert worker["startupProbe"]["httpGet"] == {"path": "/livez", "port": "health"}, name
        assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}, name


def test_the_gateway_has_no_database_url_and_the_workers_migrate_as_another_user():
    """The internet-facing gateway never holds a database password; workers work as a DML-only user and migrate
    as the DDL one (issue 26, finding 6)."""
    assert not {name for name in env(GATEWAY) if "DATABASE" in name}
    for name, doc in WORKERS.items():
        variables = env(doc)
        assert variables["HC_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "worker-database-url", name
        assert variables["HC_MIGRATION_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "migration-database-url"
