"""Prometheus metrics of the gateway, served at GET /metrics.

With several gateway processes (`--processes N`) prometheus-client's multi-process mode is used: the CLI sets
PROMETHEUS_MULTIPROC_DIR before the workers start, and every process serves the sum of all of them."""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
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
        self.quarantined = Counter(
            "hypercard_gateway_quarantined",
            "Signed events of a known kind that failed validation, kept in hypercard.invalid.",
            ["kind"],
            registry=registry,
        )
        self.unrouted = Counter(
            "hypercard_gateway_unknown_kind",
            "Events of a kind the gateway does not know, published for hypercard.unrouted or a user's worker.",
            ["kind"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "hypercard_gateway_in_flight",
            "Requests being handled now.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
