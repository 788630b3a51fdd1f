"""The worker's factory, used by `hypercard-worker` and by the tests alike (as `create_app` is for the gateway)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.metrics import WorkerMetrics
from workers.registry import REGISTRY, Registry, declare_handled_kinds
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from infra.spans import Tracing


class UnknownKind(ValueError):
    """A kind was asked for that no loaded module handles."""


def create_worker(
    settings: WorkerSettings,
    kinds: list[str],
    registry: Registry = REGISTRY,
    metrics: WorkerMetrics | None = None,
    tracing: Tracing | None = None,
) -> WorkerRuntime:
    """A worker for `kinds` (upper case), with the handlers and the schema statements of `registry`; `tracing`
    (`infra.tracing.start_tracing`) gives each delivery a span, None (the default) none."""
    missing = [kind for kind in kinds if kind not in registry.registrations]
    if not kinds or missing:
        wanted = f"no handler for {', '.join(missing)}" if missing else "name kinds or --all"
        raise UnknownKind(f"{wanted}; kinds with a handler: {', '.join(registry.kinds)}")
    declare_handled_kinds(registry)  # their business ids on the log lines, in clear
    registrations = [registry.registrations[kind] for kind in kinds]
    schema, migrations = registry.schema_statements, registry.module_migrations
    return WorkerRuntime(settings, registrations, metrics, schema, tracing, module_migrations=migrations)
