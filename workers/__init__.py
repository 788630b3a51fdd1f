"""Worker processes: consume the per-kind queues and run the registered handlers."""

from workers.context import HandlerContext
from workers.errors import GiveUp, Retry, Skip
from workers.registry import handles, migrations, schema

__all__ = ["GiveUp", "HandlerContext", "Retry", "Skip", "handles", "migrations", "schema"]
