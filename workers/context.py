"""What a handler is given besides its event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from workers.database import Transaction
    from workers.transaction_guard import GuardedTransaction


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerContext:
    event_id: str
    # The inbox row's key: a keyed digest (HC_ID_SECRET) of the event's notification key, safe to log and store; the
    # same for every delivery of one notification. None for kinds where each notification counts, e.g. CONSUME.
    idempotency_key: str | None
    attempt: int  # 1 on the first delivery, 2 on the first retry, ...
    received_at: datetime  # when the gateway received the event
    log: structlog.stdlib.BoundLogger
    # The open transaction the handler runs in: its writes commit together with the inbox row, or not at all. The
    # worker owns it: COMMIT, ROLLBACK and the like are refused (workers.transaction_guard).
    tx: GuardedTransaction | Transaction
