"""LOW_BALANCE's handler, loaded by the workers (`--handlers tests.support.low_balance_handlers`, HC_HANDLERS or
the `hypercard.handlers` entry point)."""

from __future__ import annotations

from tests.support.low_balance import LowBalance
from workers import HandlerContext, handles


@handles(LowBalance)
async def on_low_balance(event: LowBalance, ctx: HandlerContext) -> None:
    ctx.log.info("low balance noted", balance=event.balance, pin=event.pin)  # as careless as a handler can be
