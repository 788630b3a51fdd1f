"""Prometheus metrics of the gateway, served at GET /metrics on HC_GATEWAY_METRICS_PORT, never on the push port.

With several gateway processes (`--processes N`) prometheus-client's multi-process mode is used: the CLI sets
PROMETHEUS_MULTIPROC_DIR before the processes start, and the parent serves the sum of all of them."""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

CONFIRM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "hypercard_gateway_requests",
            "Requests answered, by event kind, outcome and HTTP status.",
            ["kind", "outcome", "status"],
            registry=registry,
        )
        self.confirm_seconds = Histogram(
            "hypercard_gateway_publish_confirm_seconds",
            "Time from publish to the broker's confirm.",
            buckets=CONFIRM_BUCKETS,
            registry=registry,
        )
        self.signature_failures = Counter(
            "hypercard_gateway_signature_failures",
            "Requests whose signature was missing or did not verify.",
            ["reason"],
            registry=registry,
        )
        self.key_verifications = Counter(
            "hypercard_gateway_signature_key_verifications",
            "Signatures that verified, by the fingerprint of the platform key they verified with: during a key "
            "rotation the old key may be removed once its count stops growing.",
            ["fingerprint"],
            registry=registry,
        )
        self.quarantined = Counter(
            "hypercard_gateway_quarantined",
            "Signed events of a known kind that failed validation, kept in hypercard.invalid.",
            ["kind"],
            registry=registry,
        )
        self.unverified = Counter(
            "hypercard_gateway_unverified",
            "Events kept in hypercard.unverified because their signature did not vouch for them, by outcome.",
            ["reason"],
            registry=registry,
        )
        self.unknown_kind = Counter(
            "hypercard_gateway_unknown_kind",
            "Events of a kind the gateway does not know, published for hypercard.unrouted or a user's worker.",
            ["kind"],
            registry=registry,
        )
        self.ready = Gauge(
            "hypercard_gateway_ready",
            "1 while the gateway takes pushes: connected to the broker, topology declared, not draining.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.broker_blocked = Gauge(
            "hypercard_gateway_broker_blocked",
            "1 while the broker blocks this gateway's publishes (a memory or disk alarm): pushes answer 503 at once.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.key_reload_failed = Gauge(
            "hypercard_gateway_key_reload_failed",
            "1 while HC_PLATFORM_PUBLIC_KEY, read again (SIGHUP or a change of the file), does not load: the keys "
            "loaded before are still in use, and a gateway started now would refuse that file.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.open_connections = Gauge(
            "hypercard_gateway_open_connections",
            "Client connections open now, at most HC_MAX_CONNECTIONS per process.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connections_refused = Counter(
            "hypercard_gateway_connections_refused",
            "Connections answered and closed before a request was read: TooManyConnections (over "
            "HC_MAX_CONNECTIONS) or HeadTooLarge (a request head over 32 KB).",
            ["reason"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "hypercard_gateway_in_flight",
            "Requests being handled now.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def start_series(self, kinds: frozenset[str]) -> None:
        """The label sets known in advance at 0, so dashboards and alerts see them before the first failure."""
        for reason in ("missing", "malformed", "invalid", "ambiguous"):
            self.signature_failures.labels(reason)
            self.unverified.labels(reason)
        for kind in (*sorted(kinds), "other"):
            self.quarantined.labels(kind)
        self.unknown_kind.labels("other")

    def start_key_series(self, fingerprints: list[str]) -> None:
        """A key's count at 0 from its load on: a new key shows up before its first push."""
        for name in fingerprints:
            self.key_verifications.labels(name)

    def exposition(self) -> bytes:
        return generate_latest(self.registry if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") else all_processes())

    def serve(self, host: str, port: int) -> None:
        """Serve this process's metrics on `port` (0: not served)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)


def all_processes() -> CollectorRegistry:
    """The sum of every gateway process's metrics (multi-process mode)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def serve_all_processes(host: str, port: int) -> None:
    """Serve the sum of every process's metrics on `port` (0: not served): the parent of `--processes N`."""
    if port:
        start_http_server(port, addr=host, registry=all_processes())
