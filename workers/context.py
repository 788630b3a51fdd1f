"""What a handler is given besides its event."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from workers import outbox

if TYPE_CHECKING:
    from infra.identifiers import IdentifierKey
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
    kind: str = ""  # the event's kind: a worker of this kind performs the effects it hands over
    handed_over: list[str] = field(default_factory=list)  # the effects' keys handed over by `after_commit`
    identifiers: IdentifierKey | None = None  # seals what `after_commit` stores (None: stored as it is)

    async def after_commit(self, effect: outbox.Effect, payload: object) -> None:
        """Hand an effect outside the database (a call to another service) to the worker: written to the outbox in
        this transaction, performed as `effect(payload, key)` once it committed, never if it is rolled back, retried
        until it succeeds. `effect` is decorated with `@workers.outbox.effect`; `payload` is JSON data."""
        key = f"{self.idempotency_key or self.event_id}.{len(self.handed_over) + 1}"
        await outbox.hand_over(
            self.tx, kind=self.kind, idempotency_key=key, event_id=self.event_id, function=effect, payload=payload,
            sealer=None if self.identifiers is None else outbox.sealer_for(self.identifiers),
        )  # fmt: skip
        self.handed_over.append(key)
