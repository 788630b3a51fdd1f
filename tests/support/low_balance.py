"""A user's kind as a card programme would write it, in a module of its own: LOW_BALANCE, whose business id is the
account number. What the `hypercard.kinds` entry point (or HC_KINDS) names: the gateway imports this, never the
handler (tests/support/low_balance_handlers.py)."""

from __future__ import annotations

from schemas.events import Event


class LowBalance(Event, tag="LOW_BALANCE"):
    business_ids = ("account_no",)
    sensitive = frozenset({"pin"})  # as OPT_CODE declares its code: never logged, by the gateway or the workers

    account_no: str
    balance: int
    pin: str = ""
