"""A kind the project does not know, handled by a user module: run it with
`hypercard-worker CARD_STATUS_CHANGE --handlers card_status_change` (this folder on PYTHONPATH)."""

from schemas.events import Event
from workers import HandlerContext, Skip, handles, schema


class CardStatusChange(Event, tag="CARD_STATUS_CHANGE"):
    card_id: str
    old_status: str
    new_status: str

    def idempotency_key(self) -> str:
        return f"{self.card_id}:{self.old_status}:{self.new_status}"


schema(
    """CREATE TABLE IF NOT EXISTS card_statuses (
           card_id text PRIMARY KEY,
           status text NOT NULL,
           changed_at timestamptz NOT NULL)"""
)


@handles(CardStatusChange)
async def card_status_changed(event: CardStatusChange, ctx: HandlerContext) -> None:
    if event.old_status == event.new_status:
        raise Skip("no change")
    await ctx.tx.execute(
        """INSERT INTO card_statuses (card_id, status, changed_at) VALUES ($1, $2, $3)
           ON CONFLICT (card_id) DO UPDATE SET status = EXCLUDED.status, changed_at = EXCLUDED.changed_at""",
        event.card_id,
        event.new_status,
        ctx.received_at,
    )
    ctx.log.info("card status changed", card_id=event.card_id, status=event.new_status)
