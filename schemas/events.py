"""HyperCard push events (doc 2.2.4) as msgspec Structs: one tagged union on `notify_type`.

Decoding is tolerant in the ways the platform is sloppy (numbers sent as strings, documented strings sent as
numbers: `schemas.fields`) and strict where it matters (required fields, length limits, known status codes).
Unknown fields are ignored: the platform may add fields at any time.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, ClassVar, get_args

import msgspec

from schemas import topology
from schemas.fields import Amount, AnyText, BodyDecoder, Email, Mobile, MobileCode, Text, TxId

# A kind's name, exactly: upper-case ASCII letters, digits and _ as the platform writes them. Its routing key and queue
# are the name in lower case, so a name with lower-case letters would share another kind's queue (`open_card` with
# OPEN_CARD's), and none of the topology's own names is a kind (topology.RESERVED_KIND_NAMES). `\Z`, not `$`: `$`
# also matches before a final newline.
KIND_NAME = re.compile(rf"^(?!(?:{'|'.join(sorted(topology.RESERVED_KIND_NAMES))})\Z)[A-Z0-9_]{{1,64}}\Z")

# A time the platform sends (Unix seconds), from 2015-01-01 to 2100-01-01 UTC: a fixed window, so a retry two days
# later validates as the first delivery did. Out of it the event is quarantined with the field's `$.path`; in it,
# every handler's datetime and PostgreSQL timestamptz can hold it. Numbers sent as strings are bounded alike.
EARLIEST_TIME = 1_420_070_400  # 2015-01-01T00:00:00Z
LATEST_TIME = 4_102_444_800  # 2100-01-01T00:00:00Z
UnixSeconds = Annotated[int, msgspec.Meta(ge=EARLIEST_TIME, le=LATEST_TIME)]
# A business id's value on a log line: text cut to this length (the platform's are 19 to 32 characters; a body the
# signature does not vouch for is logged too and may hold anything), an integer only within 64 bits.
MAX_BUSINESS_ID_LENGTH = 64
_INT64 = range(-(2**63), 2**63)


class Event(msgspec.Struct, tag_field="notify_type", kw_only=True):
    """Base of every event kind; a subclass names its kind with `tag=`."""

    # Fields whose values are secrets or personal data: never logged, never stored in plain text.
    sensitive: ClassVar[frozenset[str]] = frozenset()
    # Fields that name what the event is about (its trade, card, operation, auth, purchase): neither secret nor
    # personal, logged on the gateway's and the workers' canonical lines so that a support question finds the event.
    business_ids: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def kind(cls) -> str:
        tag = cls.__struct_config__.tag
        assert isinstance(tag, str), f"{cls.__name__} has no string tag"
        return tag

    def idempotency_key(self) -> str | None:
        """What names this one notification, for the workers' inbox; None: every delivery is handled.

        The default is every documented field (the Struct's fields), so two notifications that differ in any of
        them are both handled, and a platform retry (the same body) is handled once. Undocumented fields stay out:
        the platform may add one whose value changes between retries. The key may hold a one-time code or an
        e-mail in clear: the workers keep only its keyed digest (`infra.identifiers`), and hand only that on."""
        return notification_key(self)

    def business_id_values(self) -> dict[str, str | int]:
        """The business ids this event has, as a log line shows them: plain text (cut to MAX_BUSINESS_ID_LENGTH) or
        an integer; a field that is absent, None or of another type is left out."""
        values: dict[str, str | int] = {}
        for name in self.business_ids:
            value = getattr(self, name, None)
            if isinstance(value, str):
                values[name] = value[:MAX_BUSINESS_ID_LENGTH]
            elif type(value) is int and value in _INT64:  # not a bool, nor an IntEnum
                values[name] = value
        return values


def kind_name_problem(kind: str) -> str | None:
    """Why `kind` is no kind name, for a reason or an error message; None when it is one."""
    if kind in topology.RESERVED_KIND_NAMES:
        return f"{kind} is reserved: {topology.routing_key(kind)} is the topology's own name, not a kind's queue"
    if not KIND_NAME.match(kind):
        return f"{kind[:80]!r} is not a kind name (upper-case letters, digits and _ only)"
    return None


def notification_key(event: Event) -> str:
    # An unkeyed digest of a sensitive value here would be reversible (10^6 one-time codes): the whole key is digested
    # once, keyed, by the workers.
    return "&".join(f"{name}={_key_text(getattr(event, name))}" for name in event.__struct_fields__)


def _key_text(value: Any) -> str:
    # An empty object or array is an empty value, as null is: the string to sign leaves all of them out, so a field
    # sent as [] must not make a notification of its own.
    if value is None or (isinstance(value, (list, dict, tuple, set, frozenset)) and not value):
        return ""
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


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
    business_ids = ("mc_trade_no",)

    card_type_id: Text
    email: Email
    mobile: Mobile
    mobile_code: MobileCode
    result: ApplicationResult
    remark: AnyText | None = None
    mc_trade_no: AnyText | None = None


class Recharge(Event, tag="RECHARGE"):
    business_ids = ("card_id", "mc_trade_no")

    card_id: Text
    mc_trade_no: Text
    result: ApplicationResult
    remark: AnyText | None = None


class Operation(Event, tag="OPERATION"):
    business_ids = ("card_id", "request_number")

    card_id: Text
    request_number: Text
    operate_status: OperateStatus


class Consume(Event, tag="CONSUME"):
    """A new card transaction exists; the amount is fetched with the transaction record API (2.1.23)."""

    business_ids = ("card_id",)

    card_id: Text

    def idempotency_key(self) -> None:
        # The body is only the card: a retry and a new transaction look the same. Every delivery is handled, and
        # the handler's effect (mark the card for a transaction sync) is the same however often it runs.
        return None


class BuyCoin(Event, tag="BUY_COIN"):
    business_ids = ("card_id", "mc_trade_no", "tx_id")

    card_id: Text
    mc_trade_no: Text
    status: CoinStatus
    tx_id: TxId
    reason: AnyText | None = None


class CancelCard(Event, tag="CANCEL_CARD"):
    business_ids = ("card_id",)

    card_id: Text
    refund_amount: Amount


class Auth3ds(Event, tag="AUTH_3DS"):
    business_ids = ("auth_id", "card_id")

    auth_id: int
    card_id: Text
    card_no: Text
    txn_currency: Text
    txn_amount: Amount
    card_acceptor_merchant_name: AnyText
    # Quirk: documented as a string, the platform's own example sends the number 1 (kept as "1").
    card_acceptor_location_country: AnyText
    auth_result: int
    expired_time: UnixSeconds
    created_Time: UnixSeconds  # noqa: N815 - the platform's spelling
    updated_Time: UnixSeconds  # noqa: N815 - the platform's spelling
    app_card_id: AnyText | None = None
    app3ds_auth_transaction_id: AnyText | None = None


class OptCode(Event, tag="OPT_CODE"):
    """A one-time code for a card: a secret, never logged or stored in plain text."""

    sensitive = frozenset({"code"})
    business_ids = ("card_id",)

    card_id: Text
    code: Text
    create_time: UnixSeconds


class CardConfigChange(Event, tag="CARD_CONFIG_CHANGE"):
    card_type_id: Text
    modify_time: UnixSeconds


# The one list of the kinds this project knows: a new kind is a Struct above and its name here. A union written out,
# so that the type checker and msgspec's tagged-union decoder both read it; KNOWN_EVENTS is derived from it.
AnyEvent = OpenCard | Recharge | Operation | Consume | BuyCoin | CancelCard | Auth3ds | OptCode | CardConfigChange
KNOWN_EVENTS: tuple[type[Event], ...] = get_args(AnyEvent)
KNOWN_KINDS: frozenset[str] = frozenset(event.kind() for event in KNOWN_EVENTS)

# Fields that carry secrets or personal data in any kind: the log redaction processor drops them by name.
SENSITIVE_FIELDS: frozenset[str] = frozenset().union(*(event.sensitive for event in KNOWN_EVENTS))
# Fields that are a business id in any kind: logged as they are, never scrubbed as a run of digits.
BUSINESS_ID_FIELDS: frozenset[str] = frozenset().union(*(event.business_ids for event in KNOWN_EVENTS))


def decoder_for(event_type: type[Event]) -> BodyDecoder[Event]:
    """A decoder for one kind: numbers sent as strings ("result": "1") and strings sent as numbers, a top-level one
    kept as the number's text as sent (`schemas.fields`)."""
    return BodyDecoder(event_type)


EVENT_DECODER: BodyDecoder[Event] = BodyDecoder(AnyEvent)
