"""A kind the project does not know, handled by a user module: run it with
`hypercard-worker CARD_STATUS_CHANGE --handlers card_status_change` (this folder on PYTHONPATH).

A key names one notification, not one entity: the default key is every field, the event's own time included, so
a card frozen, unfrozen and frozen again is three notifications, while a platform retry is one."""

from schemas.events import Event
from schemas.fields import Text
from workers import HandlerContext, Skip, handles, schema


class CardStatusChange(Event, tag="CARD_STATUS_CHANGE"):
    card_id: Text
    old_status: Text
    new_status: Text
    update_time: int  # when the status changed (Unix seconds)


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
    # The newest change wins, whatever order the notifications arrive in.
    await ctx.tx.execute(
        """INSERT INTO card_statuses AS s (card_id, status, changed_at) VALUES ($1, $2, to_timestamp($3))
           ON CONFLICT (card_id) DO UPDATE SET status = EXCLUDED.status, changed_at = EXCLUDED.changed_at
           WHERE s.changed_at < EXCLUDED.changed_at""",
        event.card_id,
        event.new_status,
        event.update_time,
    )
    ctx.log.info("card status changed", card_id=event.card_id, status=event.new_status)
