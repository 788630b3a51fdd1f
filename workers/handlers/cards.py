"""Card lifecycle: applications (OPEN_CARD), transactions to sync (CONSUME), cancellations, card type changes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from schemas.events import CancelCard, CardConfigChange, Consume, OpenCard
from workers.context import HandlerContext
from workers.registry import handles


@handles(OpenCard)
async def card_opened(event: OpenCard, ctx: HandlerContext) -> None:
    """One row per application: its mc_trade_no, or, when the platform sent none, the notification itself (the body
    cannot tell two applications by the same person for the same card type apart, so they never share a row)."""
    application = event.mc_trade_no or f"notification:{ctx.idempotency_key or ctx.event_id}"
    await ctx.tx.execute(
        """INSERT INTO hypercard_card_applications AS a
               (application_key, mc_trade_no, card_type_id, email, mobile_code, mobile, result, remark, event_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (application_key) DO UPDATE SET
               result = EXCLUDED.result, remark = EXCLUDED.remark, event_id = EXCLUDED.event_id, updated_at = now()""",
        application, event.mc_trade_no, event.card_type_id, event.email, event.mobile_code, event.mobile,
        int(event.result), event.remark, ctx.event_id,
    )  # fmt: skip


@handles(Consume)
async def card_transaction(event: Consume, ctx: HandlerContext) -> None:
    """Marks the card for a transaction-record sync (API 2.1.23); repeating it changes nothing more."""
    await ctx.tx.execute(
        """INSERT INTO hypercard_transaction_syncs AS s (card_id, last_notified_at, pending, event_id)
           VALUES ($1, $2, true, $3)
           ON CONFLICT (card_id) DO UPDATE SET
               pending = true,
               last_notified_at = GREATEST(s.last_notified_at, EXCLUDED.last_notified_at),
               event_id = EXCLUDED.event_id""",
        event.card_id, ctx.received_at, ctx.event_id,
    )  # fmt: skip


@handles(CancelCard)
async def card_cancelled(event: CancelCard, ctx: HandlerContext) -> None:
    await ctx.tx.execute(
        """INSERT INTO hypercard_card_cancellations (card_id, refund_amount, event_id) VALUES ($1, $2, $3)
           ON CONFLICT (card_id) DO NOTHING""",
        event.card_id, Decimal(event.refund_amount), ctx.event_id,
    )  # fmt: skip


@handles(CardConfigChange)
async def card_config_changed(event: CardConfigChange, ctx: HandlerContext) -> None:
    """Keeps the latest modify time per card type; an older notification arriving late changes nothing."""
    await ctx.tx.execute(
        """INSERT INTO hypercard_card_type_configs AS c (card_type_id, modify_time, event_id) VALUES ($1, $2, $3)
           ON CONFLICT (card_type_id) DO UPDATE SET modify_time = EXCLUDED.modify_time, event_id = EXCLUDED.event_id
           WHERE c.modify_time < EXCLUDED.modify_time""",
        event.card_type_id, datetime.fromtimestamp(event.modify_time, UTC), ctx.event_id,
    )  # fmt: skip
