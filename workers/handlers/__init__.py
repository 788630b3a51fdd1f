"""The default handlers: each known kind keeps a current-state table the merchant can query."""

from workers.handlers import auth, cards, payments

__all__ = ["auth", "cards", "payments"]
