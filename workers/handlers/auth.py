"""Card holder authentication: 3-D Secure auths (AUTH_3DS) and one-time codes (OPT_CODE)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import msgspec
import structlog

from infra.redaction import bind_secrets
from schemas.events import Auth3ds, OptCode
from schemas.fields import Text
from workers.context import HandlerContext
from workers.outbox import effect
from workers.registry import handles

log = structlog.get_logger("workers")


def _time(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@handles(Auth3ds)
async def auth_3ds(event: Auth3ds, ctx: HandlerContext) -> None:
    """Keeps the newest state of each auth (by updated_Time); one that reached the gateway after its expired_time
    is recorded as expired: it can no longer be answered."""
    expired = ctx.received_at > _time(event.expired_time)
    await ctx.tx.execute(
        """INSERT INTO hypercard_auths_3ds AS a
               (auth_id, card_id, card_no, txn_currency, txn_amount, merchant_name, location_country, auth_result,
                expired_time, created_time, updated_time, expired, app_card_id, app3ds_auth_transaction_id, event_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
           ON CONFLICT (auth_id) DO UPDATE SET
               auth_result = EXCLUDED.auth_result, updated_time = EXCLUDED.updated_time,
               expired = EXCLUDED.expired, event_id = EXCLUDED.event_id
           WHERE a.updated_time <= EXCLUDED.updated_time""",
        event.auth_id, event.card_id, event.card_no, event.txn_currency, Decimal(event.txn_amount),
        event.card_acceptor_merchant_name, str(event.card_acceptor_location_country), event.auth_result,
        _time(event.expired_time), _time(event.created_Time), _time(event.updated_Time), expired,
        event.app_card_id, event.app3ds_auth_transaction_id, ctx.event_id,
    )  # fmt: skip
    if expired:
        ctx.log.warning("3-D Secure auth arrived after its expiry", auth_id=event.auth_id)


class OtpNotifier(Protocol):
    """Delivers a one-time code to the card holder (SMS, push, e-mail...). Called by the outbox relay once the
    notification's transaction committed, and again after a failure or a crash: pass `idempotency_key` on to the
    provider (or remember it) so that one key is one message. The code is a secret: never log it."""

    async def deliver(self, event: OptCode, idempotency_key: str) -> None: ...


class LogOnlyNotifier:
    """The default: one log line without the code. Replace it with `set_otp_notifier`."""

    async def deliver(self, event: OptCode, idempotency_key: str) -> None:
        log.info("one-time code received", card_id=event.card_id, create_time=event.create_time)


_notifier: list[OtpNotifier] = [LogOnlyNotifier()]


def set_otp_notifier(notifier: OtpNotifier) -> None:
    _notifier[0] = notifier


@effect
async def deliver_code(payload: object, idempotency_key: str) -> None:
    """The code to the notifier, after the commit (workers.outbox)."""
    fields = msgspec.convert(payload, dict[str, Any])
    event = OptCode(card_id=Text(fields["card_id"]), code=Text(fields["code"]), create_time=fields["create_time"])
    bind_secrets((event.code,))  # scrubbed from whatever the notifier logs
    await _notifier[0].deliver(event, idempotency_key)


@handles(OptCode)
async def one_time_code(event: OptCode, ctx: HandlerContext) -> None:
    """Handed to the notifier through the outbox, once per notification whatever happens to the batch: the inbox row
    (a keyed digest of card_id, code and create_time) keeps a retried notification from being delivered twice, and
    the outbox row, deleted once the notifier succeeded, keeps a rolled-back batch from sending it twice."""
    fields = {"card_id": str(event.card_id), "code": str(event.code), "create_time": event.create_time}
    await ctx.after_commit(deliver_code, fields)
