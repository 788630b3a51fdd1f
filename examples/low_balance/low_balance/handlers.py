"""The kind's handler, what the `hypercard.handlers` entry point names: the workers import it."""

from importlib.resources import files

from low_balance.kinds import LowBalance
from workers import HandlerContext, handles, schema

# Its table, applied at worker start after the project's migrations.
schema((files("low_balance") / "migrations" / "001_low_balances.sql").read_text())


@handles(LowBalance)
async def low_balance_reported(event: LowBalance, ctx: HandlerContext) -> None:
    # The latest report wins, whatever order the notifications arrive in.
    await ctx.tx.execute(
        """INSERT INTO low_balances AS b (account_no, balance, reported_at) VALUES ($1, $2, to_timestamp($3))
           ON CONFLICT (account_no) DO UPDATE SET balance = EXCLUDED.balance, reported_at = EXCLUDED.reported_at
           WHERE b.reported_at < EXCLUDED.reported_at""",
        event.account_no,
        event.balance,
        event.reported_at,
    )
    ctx.log.info("low balance reported", balance=event.balance)
