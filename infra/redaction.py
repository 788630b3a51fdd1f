"""Secrets and personal data out of every log line and message header, by structure and by value.

- By structure: a value under a secret key (`code`, `email`, `mobile`, `signature`, ...) is removed wherever it
  stands: a log call's keyword, a nested dict, a Struct (an event passed whole), a list.
- By value, in free text (log messages, exception text, dead-letter `error_message` headers, notifier failures):
  e-mail addresses, key material, broker credentials, and every run of six or more digits however it is written
  (`code:888666`, `Your code is 888666.`, `+86-183-0152-3750`); and the exact secrets of the event being handled
  (its one-time code even when short or not numeric, its e-mail, its mobile), bound with `bind_secrets`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from contextvars import ContextVar
from typing import Any

import msgspec

from schemas.events import BUSINESS_ID_FIELDS, SENSITIVE_FIELDS
from schemas.kinds import KINDS

REDACTED = "[redacted]"
# Keys whose values never reach a log line, whatever the call site: OTP codes, e-mail, mobile, signatures, keys.
SECRET_KEYS = SENSITIVE_FIELDS | frozenset(
    {
        "code",
        "otp",
        "email",
        "mobile",
        "signature",
        "api_key",
        "api-key",
        "key",
        "private_key",
        "public_key",
        "password",
        "authorization",
        "platform_headers",
        "id_secret",
        "id_secret_previous",
    }
)
# Identifiers that are long digit strings but are neither secrets nor personal data: the events' business ids, ...
SAFE_KEYS = BUSINESS_ID_FIELDS | frozenset(
    {
        "event_id",
        "card_id",
        "card_type_id",
        "mc_trade_no",
        "request_number",
        "tx_id",
        "auth_id",
        "pid",
        "timestamp",
        "client_ip",
        "received_at",
        "refund_amount",
        "txn_amount",
        "outcome",  # the project's own words (accepted, quarantined, Unauthorized...)
        "signature_outcome",
        "path",  # a route of the gateway's: only configured paths reach the push view
    }
)
_SECRET_TEXT = re.compile(
    "|".join(
        [
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",  # e-mail
            r"-----BEGIN [A-Z ]+-----[^-]*-----END [A-Z ]+-----",  # PEM key material
            r"amqp://[^@\s]*@",  # credentials in a broker URL
        ]
    )
)
# A run of digits, possibly written with a leading +, spaces, dashes or parentheses between them (not dots: an IP
# address or a decimal is no phone number), standing alone (not part of a hex id or a word).
_DIGIT_RUN = re.compile(r"(?<![A-Za-z0-9_])\+?\(?\d(?:[\d \-()]*\d)?\)?(?![A-Za-z0-9_])")
_MIN_SECRET_DIGITS = 6
_MIN_BOUND_SECRET = 3

_secrets: ContextVar[tuple[str, ...]] = ContextVar("hypercard_secrets", default=())


def secret_fields() -> frozenset[str]:
    """The names of the fields whose values are secrets: the project's, and those any kind known declares."""
    return SECRET_KEYS | KINDS.sensitive_fields()


def bind_secrets(values: Iterable[object]) -> None:
    """The exact secrets of the event now being handled (this task and those it starts): scrubbed from free text."""
    _secrets.set(tuple(text for value in values if value is not None and len(text := str(value)) >= _MIN_BOUND_SECRET))


def clear_secrets() -> None:
    _secrets.set(())


def scrub_bound(text: str) -> str:
    """Free text with the secrets bound for the event masked, and nothing else (a `$.path` message's limits, such as
    a time window's bounds, stay readable)."""
    for secret in _secrets.get():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _mask_digits(match: re.Match[str]) -> str:
    text = match.group()
    return REDACTED if sum(ch.isdigit() for ch in text) >= _MIN_SECRET_DIGITS else text


def scrub(text: str) -> str:
    """Free text with every form of the secrets masked."""
    text = scrub_bound(text)
    if len(text) < _MIN_SECRET_DIGITS:
        return text
    return _DIGIT_RUN.sub(_mask_digits, _SECRET_TEXT.sub(REDACTED, text))


def redact(value: Any) -> Any:
    """A value with secret keys removed at any depth and free text scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, msgspec.Struct):
        value = msgspec.structs.asdict(value)
    if isinstance(value, dict):
        return {k: _redact_item(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(item) for item in value]
    return scrub(str(value))  # an exception, a datetime, any object: as the renderer would print it


def _redact_item(key: str, value: Any) -> Any:
    if key.lower() in SECRET_KEYS or key in KINDS.sensitive_fields():  # an installed kind's secret fields too
        return REDACTED
    safe = key in SAFE_KEYS or key in KINDS.business_id_fields()  # an installed kind's business ids too
    return _identifier(value) if safe and isinstance(value, (str, int)) else redact(value)


def _identifier(value: str | int) -> str | int:
    """A safe key's value as it is (its digit runs are trade numbers and card ids, not phone numbers), unless it holds
    an e-mail address, key material, or a secret bound for the event: a mobile sent as the trade number. A short
    secret (a 4-digit code) only when it is the whole value: inside a card id it is a coincidence."""
    text = str(value)
    shown = _SECRET_TEXT.sub(REDACTED, text)
    for secret in _secrets.get():
        if secret == text or (len(secret) >= _MIN_SECRET_DIGITS and secret in shown):
            shown = shown.replace(secret, REDACTED)
    return value if shown == text else shown


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop secret keys and scrub every other value of a log event."""
    for key, value in event_dict.items():
        event_dict[key] = _redact_item(key, value)
    return event_dict
