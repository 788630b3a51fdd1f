"""HyperCard push events (doc 2.2.4) as msgspec Structs: one tagged union on `notify_type`.

Decoding is tolerant in the ways the platform is sloppy (numbers sent as strings, a documented string sent as a
number) and strict where it matters (required fields, length limits, known status codes). Unknown fields are
ignored: the platform may add fields at any time.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, ClassVar

import msgspec

KIND_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")

Text = Annotated[str, msgspec.Meta(min_length=1)]
Amount = Annotated[str, msgspec.Meta(pattern=r"^-?[0-9]+(\.[0-9]+)?$")]
UnixSeconds = Annotated[int, msgspec.Meta(ge=0)]


class Event(msgspec.Struct, tag_field="notify_type", kw_only=True):
    """Base of every event kind; a subclass names its kind with `tag=`."""

    # Fields whose values are secrets or personal data: never logged, never stored in plain text.
    sensitive: ClassVar[frozenset[str]] = frozenset()
    # Without a natural identity, an event is de-duplicated by the gateway's event id, unless each notification
    # counts on its own (CONSUME: two identical bodies are two transactions).
    deduplicate_by_event_id: ClassVar[bool] = True

    @classmethod
    def kind(cls) -> str:
        return cls.__struct_config__.tag

    def idempotency_key(self) -> str | None:
        """The natural identity of this notification, from its fields; None when it has none."""
        return None


class ApplicationResult(enum.IntEnum):
    SUCCESS = 1
    FAILURE = 2


class OperateStatus(enum.IntEnum):
    IN_OPERATION = 0
    SUCCESS = 1
    FAILED = 2
    PENDING_PAYMENT = 98
    WAITING_THIRD_PARTY = 99

    @property
    def is_final(self) -> bool:
        return self in (OperateStatus.SUCCESS, OperateStatus.FAILED)


class CoinStatus(enum.IntEnum):
    PENDING = 0
    SUCCESS = 1
    FAILED = 2

    @property
    def is_final(self) -> bool:
        return self is not CoinStatus.PENDING


class OpenCard(Event, tag="OPEN_CARD"):
    sensitive = frozenset({"email", "mobile"})

    card_type_id: Text
    email: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    mobile: Annotated[str, msgspec.Meta(min_length=6, max_length=11)]
    mobile_code: Annotated[str, msgspec.Meta(min_length=1, max_length=5)]
    result: ApplicationResult
    remark: str | None = None
    mc_trade_no: str | None = None

    def idempotency_key(self) -> str:
        application = self.mc_trade_no or f"{self.card_type_id}:{self.email}:{self.mobile}"
        return f"{application}:{int(self.result)}"


class Recharge(Event, tag="RECHARGE"):
    card_id: Text
    mc_trade_no: Text
    result: ApplicationResult
    remark: str | None = None

    def idempotency_key(self) -> str:
        return f"{self.mc_trade_no}:{int(self.result)}"


class Operation(Event, tag="OPERATION"):
    card_id: Text
    request_number: Text
    operate_status: OperateStatus

    def idempotency_key(self) -> str:
        return f"{self.request_number}:{int(self.operate_status)}"


class Consume(Event, tag="CONSUME"):
    """A new card transaction exists; the amount is fetched with the transaction record API (2.1.23)."""

    deduplicate_by_event_id = False

    card_id: Text


class BuyCoin(Event, tag="BUY_COIN"):
    card_id: Text
    mc_trade_no: Text
    status: CoinStatus
    tx_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    reason: str | None = None

    def idempotency_key(self) -> str:
        return f"{self.tx_id}:{int(self.status)}"


class CancelCard(Event, tag="CANCEL_CARD"):
    card_id: Text
    refund_amount: Amount

    def idempotency_key(self) -> str:
        return self.card_id


class Auth3ds(Event, tag="AUTH_3DS"):
    auth_id: int
    card_id: Text
    card_no: Text
    txn_currency: Text
    txn_amount: Amount
    card_acceptor_merchant_name: str
    # Quirk: documented as a string, the platform's own example sends the number 1. Normalised to str below.
    card_acceptor_location_country: str | int
    auth_result: int
    expired_time: UnixSeconds
    created_Time: UnixSeconds  # noqa: N815 - the platform's spelling
    updated_Time: UnixSeconds  # noqa: N815 - the platform's spelling
    app_card_id: str | None = None
    app3ds_auth_transaction_id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.card_acceptor_location_country, int):
            self.card_acceptor_location_country = str(self.card_acceptor_location_country)

    def idempotency_key(self) -> str:
        return f"{self.auth_id}:{self.auth_result}:{self.updated_Time}"


class OptCode(Event, tag="OPT_CODE"):
    """A one-time code for a card: a secret, never logged or stored in plain text."""

    sensitive = frozenset({"code"})

    card_id: Text
    code: Text
    create_time: UnixSeconds

    def idempotency_key(self) -> str:
        return f"{self.card_id}:{self.create_time}"


class CardConfigChange(Event, tag="CARD_CONFIG_CHANGE"):
    card_type_id: Text
    modify_time: UnixSeconds

    def idempotency_key(self) -> str:
        return f"{self.card_type_id}:{self.modify_time}"


KNOWN_EVENTS: tuple[type[Event], ...] = (
    OpenCard,
    Recharge,
    Operation,
    Consume,
    BuyCoin,
    CancelCard,
    Auth3ds,
    OptCode,
    CardConfigChange,
)
KNOWN_KINDS: frozenset[str] = frozenset(event.kind() for event in KNOWN_EVENTS)
AnyEvent = OpenCard | Recharge | Operation | Consume | BuyCoin | CancelCard | Auth3ds | OptCode | CardConfigChange

# Fields that carry secrets or personal data in any kind: the log redaction processor drops them by name.
SENSITIVE_FIELDS: frozenset[str] = frozenset().union(*(event.sensitive for event in KNOWN_EVENTS))


def decoder_for(event_type: type[Event]) -> msgspec.json.Decoder:
    """A decoder for one kind. strict=False admits numbers sent as strings ("result": "1")."""
    return msgspec.json.Decoder(event_type, strict=False)


EVENT_DECODER = msgspec.json.Decoder(AnyEvent, strict=False)
