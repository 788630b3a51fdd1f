"""A worker's settings (HC_* variables; the README's worker settings table)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from infra.settings import BrokerSettings, Port, Seconds


class WorkerSettings(BrokerSettings, kw_only=True, frozen=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    # The user that may create and alter tables, for the migrations only; the workers then run as HC_DATABASE_URL's,
    # which needs no more than reading and writing rows. Empty: HC_DATABASE_URL's user does both.
    migration_database_url: str = ""
    prefetch: Annotated[int, msgspec.Meta(ge=1)] = 32
    # Deliveries per transaction, at most 64 (more savepoints than that in one transaction slow PostgreSQL down);
    # 1 runs each delivery in a transaction of its own, up to HC_PREFETCH at once.
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 32
    batch_wait: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05  # seconds a batch waits to fill after its first
    handler_timeout: Seconds = 30.0
    retry_delays: tuple[Annotated[float, msgspec.Meta(gt=0)], ...] = (1.0, 10.0, 60.0, 600.0, 3600.0)
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    handlers: tuple[str, ...] = ()
    # Days an inbox key is kept: a platform retry (within about 43.6 hours) must still find it. At least 3.
    inbox_retention_days: Annotated[float, msgspec.Meta(ge=3)] = 30.0
    inbox_prune_interval: Seconds = 600.0  # seconds between pruning rounds
    metrics_port: Port = 9100
    health_port: Port = 9101  # /livez and /readyz, answered from the event loop (workers.health); 0: none
