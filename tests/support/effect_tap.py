"""Wraps every registered handler so that, inside the handler's own transaction, it appends (kind, event id) to
test_effects. The accounting harness counts effects from that table: one row per committed handling."""

from __future__ import annotations

from tests.support.database import CREATE_TABLE
from workers.context import HandlerContext
from workers.registry import REGISTRY, Handler


def tapped(kind: str, handler: Handler) -> Handler:
    async def handle(event, ctx: HandlerContext) -> None:
        await handler(event, ctx)
        await ctx.tx.execute(
            "INSERT INTO test_effects (kind, token, attempt) VALUES ($1, $2, $3)", kind, ctx.event_id, ctx.attempt
        )

    return handle


REGISTRY.schema(CREATE_TABLE)
for registration in list(REGISTRY.registrations.values()):
    REGISTRY.handles(registration.event_type, retry_delays=registration.retry_delays, replace=True)(
        tapped(registration.kind, registration.handler)
    )
