"""The kind's shape, what the `hypercard.kinds` entry point names: the gateway validates a push against it."""

from schemas.events import Event
from schemas.fields import Text


class LowBalance(Event, tag="LOW_BALANCE"):
    business_ids = ("account_no",)  # logged in clear on the gateway's and the worker's lines

    account_no: Text
    balance: int  # in cents
    reported_at: int  # Unix seconds
