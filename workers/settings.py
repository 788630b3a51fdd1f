"""A worker's settings (HC_* variables; the README's worker settings table)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from infra.settings import BrokerSettings, Port, Seconds


class WorkerSettings(BrokerSettings, kw_only=True, frozen=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    prefetch: Annotated[int, msgspec.Meta(ge=1)] = 32
    handler_timeout: Seconds = 30.0
    retry_delays: tuple[Annotated[float, msgspec.Meta(gt=0)], ...] = (1.0, 10.0, 60.0, 600.0, 3600.0)
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    handlers: tuple[str, ...] = ()
    metrics_port: Port = 9100
