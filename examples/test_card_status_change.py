"""The handler of `card_status_change.py`, tested with the kit: each run is a delivery as the worker makes it, on
the real PostgreSQL, and everything is rolled back at the end. Run with `pytest examples/` (the suite runs it)."""

import os

from card_status_change import CardStatusChange

from workers.outcomes import Outcome
from workers.testing import handler_kit

DATABASE_URL = os.environ.get("HYPERCARD_TEST_DATABASE", "postgresql://postgres@127.0.0.1:5432/test")


def change(new_status: str, at: int, old_status: str = "ACTIVE") -> CardStatusChange:
    return CardStatusChange(card_id="card-1", old_status=old_status, new_status=new_status, update_time=at)


async def test_the_newest_change_wins_once_whatever_the_order():
    async with handler_kit("CARD_STATUS_CHANGE", DATABASE_URL, modules=["card_status_change"]) as kit:
        newer = await kit.run(change("FROZEN", at=2000))
        older = await kit.run(change("LOST", at=1000))
        assert (newer.outcome, older.outcome) == (Outcome.HANDLED, Outcome.HANDLED)
        assert await kit.tx.fetchval("SELECT status FROM card_statuses WHERE card_id = 'card-1'") == "FROZEN"
        assert newer.logs[0]["event"] == "card status changed"

        again = await kit.duplicate(newer)  # the platform sends it again: claimed before, the handler is not run
        assert again.outcome == Outcome.DUPLICATE and again.event_id == newer.event_id and again.logs == []


async def test_a_change_to_the_same_status_is_skipped():
    async with handler_kit("CARD_STATUS_CHANGE", DATABASE_URL, modules=["card_status_change"]) as kit:
        run = await kit.run(change("ACTIVE", at=3000))
        assert run.outcome == Outcome.SKIPPED and str(run.error) == "no change"
        assert await kit.tx.fetchval("SELECT count(*) FROM card_statuses WHERE card_id = 'card-1'") == 0
