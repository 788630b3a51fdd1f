"""Prometheus metrics of a worker process, served on HC_METRICS_PORT (0: not served)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from workers.outcomes import Outcome

# Where a failure was contained to its delivery: a bad `attempt` or `received_at` header, a body that does not
# decode, receiving it, settling it, a whole batch, or its frame (channel_closed: expected when the broker goes away).
CONTAINED_STAGES = ("headers", "decode", "receive", "settle", "batch", "ack", "channel_closed")
BATCH_SIZE_BUCKETS = (2, 4, 8, 16, 32, 48, 64)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["kind"]
        self.handled = Counter(
            "hypercard_worker_handled", "Events handled and committed.", labels, registry=self.registry
        )
        self.duplicates = Counter(
            "hypercard_worker_duplicates",
            "Deliveries acked with no effect: handled before.",
            labels,
            registry=self.registry,
        )
        self.retried = Counter(
            "hypercard_worker_retried", "Failed attempts scheduled for a retry.", labels, registry=self.registry
        )
        self.dead_lettered = Counter(
            "hypercard_worker_dead_lettered", "Events sent to hypercard.<kind>.dead.", labels, registry=self.registry
        )
        self.skipped = Counter("hypercard_worker_skipped", "Events a handler skipped.", labels, registry=self.registry)
        self.paused = Gauge(
            "hypercard_worker_paused",
            "1 while consumption is paused because PostgreSQL does not answer.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "hypercard_worker_batch_size",
            "Deliveries handled in one transaction (batches of two or more).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_rollbacks = Counter(
            "hypercard_worker_batch_rollbacks",
            "Batches rolled back and handled again one delivery per transaction: reason lock (another transaction "
            "held a row longer than the batch's lock timeout) or failure (the transaction failed as a whole).",
            ["reason"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "hypercard_worker_outcomes",
            "Deliveries by how they ended (workers.outcomes.Outcome): handled, duplicate, skipped, retried, "
            "dead_lettered, returned, left_for_redelivery, cut_off.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.contained_failures = Counter(
            "hypercard_worker_contained_failures",
            "Failures kept to one delivery (dead-lettered with a reason, or left for redelivery) instead of ending a "
            "loop, by stage: " + ", ".join(CONTAINED_STAGES) + ".",
            ["kind", "stage"],
            registry=self.registry,
        )
        self.unsettled = Counter(
            "hypercard_worker_unsettled",
            "Deliveries whose retry or dead-letter copy the broker did not store (a deleted queue declared again and "
            "refused once more, an alarm, a permission): held a moment, then requeued.",
            labels,
            registry=self.registry,
        )
        self.loop_restarts = Counter(
            "hypercard_worker_loop_restarts",
            "Batch loops that ended on an error and were started again.",
            registry=self.registry,
        )
        self.inbox_pruned = Counter(
            "hypercard_worker_inbox_pruned",
            "Inbox keys deleted past HC_INBOX_RETENTION_DAYS (by whichever worker held the pruning lock).",
            registry=self.registry,
        )
        self.inbox_prune_failures = Counter(
            "hypercard_worker_inbox_prune_failures",
            "Inbox pruning rounds that failed; the next round tries again.",
            registry=self.registry,
        )
        self.latency = Histogram(
            "hypercard_worker_handler_seconds",
            "Time from delivery to ack, retry or dead letter: waiting for the batch and its commit included.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def start_series(self, kinds: list[str]) -> None:
        """Every per-kind series at 0 from the start, so dashboards and alerts see a kind before its first event."""
        for reason in ("lock", "failure"):
            self.batch_rollbacks.labels(reason)
        for kind in kinds:
            per_kind = (self.handled, self.duplicates, self.retried, self.dead_lettered, self.skipped, self.unsettled)
            for metric in (*per_kind, self.latency):
                metric.labels(kind)
            for outcome in Outcome:
                self.outcomes.labels(kind, outcome)
            for stage in CONTAINED_STAGES:
                self.contained_failures.labels(kind, stage)

    def count(self, kind: str, outcome: Outcome) -> None:
        """One delivery's outcome: the one place deliveries are counted."""
        self.outcomes.labels(kind, outcome).inc()
        legacy = {Outcome.HANDLED: self.handled, Outcome.DUPLICATE: self.duplicates, Outcome.SKIPPED: self.skipped,
                  Outcome.RETRIED: self.retried, Outcome.DEAD_LETTERED: self.dead_lettered}.get(outcome)  # fmt: skip
        if legacy is not None:
            legacy.labels(kind).inc()

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
