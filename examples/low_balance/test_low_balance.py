"""LOW_BALANCE's handler with the `handler_kit` fixture (`pip install 'hypercard-gateway[kit]'`, no pytest
configuration; the database is HYPERCARD_TEST_DATABASE's, and everything is rolled back)."""

from low_balance.kinds import LowBalance

from workers.outcomes import Outcome


def report(balance: int, at: int) -> LowBalance:
    return LowBalance(account_no="6200123456789012", balance=balance, reported_at=at)


async def test_the_latest_report_wins_once(handler_kit):
    async with handler_kit("LOW_BALANCE", modules=["low_balance.handlers"]) as kit:
        latest = await kit.run(report(300, at=1_800_000_200))
        older = await kit.run(report(900, at=1_800_000_100))
        assert (latest.outcome, older.outcome) == (Outcome.HANDLED, Outcome.HANDLED)
        assert await kit.tx.fetchval("SELECT balance FROM low_balances") == 300
        assert latest.logs[0]["account_no"] == "6200123456789012"  # its business id, in clear as in production
        assert (await kit.duplicate(latest)).outcome == Outcome.DUPLICATE


async def test_a_body_that_is_not_a_low_balance_is_quarantined(handler_kit):
    async with handler_kit("LOW_BALANCE", modules=["low_balance.handlers"]) as kit:
        run = await kit.run(b'{"notify_type": "LOW_BALANCE", "account_no": "6200123456789012", "balance": "low"}')
        assert run.outcome == Outcome.QUARANTINED and "$.balance" in str(run.error)
