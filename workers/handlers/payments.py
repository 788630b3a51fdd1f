"""Money movements and card operations: RECHARGE, BUY_COIN, OPERATION. A final status is never overwritten by an
in-progress one that arrives late (OPERATION 99 after 1, BUY_COIN 0 after 1)."""

from __future__ import annotations

from schemas.events import BuyCoin, CoinStatus, OperateStatus, Operation, Recharge
from workers.context import HandlerContext
from workers.registry import handles

FINAL_OPERATE_STATUSES = [int(status) for status in OperateStatus if status.is_final]
FINAL_COIN_STATUSES = [int(status) for status in CoinStatus if status.is_final]


@handles(Recharge)
async def recharged(event: Recharge, ctx: HandlerContext) -> None:
    await ctx.tx.execute(
        """INSERT INTO hypercard_recharges (mc_trade_no, card_id, result, remark, event_id) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (mc_trade_no) DO UPDATE SET
               result = EXCLUDED.result, remark = EXCLUDED.remark, event_id = EXCLUDED.event_id, updated_at = now()""",
        event.mc_trade_no, event.card_id, int(event.result), event.remark, ctx.event_id,
    )  # fmt: skip


@handles(Operation)
async def card_operation(event: Operation, ctx: HandlerContext) -> None:
    await ctx.tx.execute(
        """INSERT INTO hypercard_card_operations AS o (request_number, card_id, operate_status, event_id)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (request_number) DO UPDATE SET
               operate_status = EXCLUDED.operate_status, event_id = EXCLUDED.event_id, updated_at = now()
           WHERE NOT (o.operate_status = ANY($5::smallint[])) OR EXCLUDED.operate_status = ANY($5::smallint[])""",
        event.request_number, event.card_id, int(event.operate_status), ctx.event_id, FINAL_OPERATE_STATUSES,
    )  # fmt: skip


@handles(BuyCoin)
async def coin_purchase(event: BuyCoin, ctx: HandlerContext) -> None:
    await ctx.tx.execute(
        """INSERT INTO hypercard_coin_purchases AS p (tx_id, mc_trade_no, card_id, status, reason, event_id)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (tx_id) DO UPDATE SET
               status = EXCLUDED.status, reason = EXCLUDED.reason, event_id = EXCLUDED.event_id, updated_at = now()
           WHERE NOT (p.status = ANY($7::smallint[])) OR EXCLUDED.status = ANY($7::smallint[])""",
        event.tx_id, event.mc_trade_no, event.card_id, int(event.status), event.reason, ctx.event_id,
        FINAL_COIN_STATUSES,
    )  # fmt: skip
