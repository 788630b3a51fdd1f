"""Secrets and personal data out of free text: exception messages, reasons, dead-letter headers, a tool's output.

Which fields a log line carries is decided by name (`infra.log_fields`); what this module does is for the text that
cannot be chosen field by field. It is cut to a fixed length first, so that nothing below ever runs over a value of
unbounded length, then masked by one pass of patterns that run in linear time (each starts only where a run of its
characters starts, and none nests a quantifier in another over the same characters), then its control characters
are escaped. Masked: e-mail addresses (any script), key material, credentials in a URL, the value after a secret's
name (`cvv="123"`, `pin: 4321`, `'code': 'ab12'`), every number of six digits or more however it is written
(`+86 183 0152 3750`, `4111.1111.1111.1111`, `4111_1111_…`, `code:888666`) and of nine or more glued to a word
(`pan4111…`); and the exact secrets of the event being handled, bound with `bind_secrets`. Kept as they are: times
(`2026-12-03T08:00:38.123456+00:00`), decimal amounts (`1234567.00`), IPv4 addresses, hex digests and UUIDs, and
numbers of up to eight digits inside an identifier (`9f1c-20261203-ab`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import msgspec

from schemas.events import MAX_BUSINESS_ID_LENGTH, SENSITIVE_FIELDS
from schemas.kinds import KINDS

REDACTED = "[redacted]"
MAX_TEXT = 1000  # characters of free text kept, before anything is scrubbed
CUT = "…"
# Names whose values never reach a log line, a header or a tool's output, wherever they stand.
SECRET_KEYS = SENSITIVE_FIELDS | frozenset(
    {
        "code",
        "otp",
        "email",
        "mobile",
        "phone",
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
        "cvv",
        "cvc",
        "pin",
        "card_no",
        "card_number",
        "pan",
    }
)
# The same secrets named in free text, followed by `=` or `:` and a value (a quote around either is allowed).
_SECRET_NAMES = (
    r"cvv2?|cvc2?|pin(?:_?code)?|otp|(?:verify_|verification_|one_time_)?code|passw(?:or)?d|pwd|secret|token"
    r"|api[-_]?key|signature|authorization|card_?no|card_?number|pan|expiry(?:_date)?|exp_date|email|mobile|phone"
)
# One pass per form, each run only when the text holds what the form needs (most lines hold none of them), each
# starting only where a run of its characters starts.
_PEM = re.compile(r"-----BEGIN [A-Z ]{1,40}-----[^-]*(?:-----END [A-Z ]{1,40}-----)?")
_CREDENTIALS = re.compile(r"(?P<scheme>(?<![\w+.-])[A-Za-z][\w+.-]{0,30}://)[^@\s/]*@")
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)+")
_NAMED = re.compile(
    rf"(?P<name>(?<![A-Za-z])(?:{_SECRET_NAMES})[\"']?\s{{0,3}}[:=]\s{{0,3}}[\"']?)[^\"'\s,;&)}}\]]+", re.IGNORECASE
)
_NUMBERS = re.compile(
    "|".join(
        [
            # Kept: a digest or UUID, a date and time; they come first so that their digits are not read as numbers.
            r"(?P<keep>(?<![\w-])(?:[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|[0-9a-fA-F]{64}|[0-9a-fA-F]{32})"
            r"(?![\w-])|(?<!\d)(?:19|20)\d\d-[01]\d-[0-3]\d(?:[T ][0-2]\d:[0-5]\d(?::[0-5]\d(?:[.,]\d{1,9})?)?"
            r"(?:Z|[+-][0-2]\d(?::?[0-5]\d)?)?)?(?!\d))",
            # Digits, possibly written with a leading + or (, and one or two of ` .-_()+/` between groups.
            r"[+(]?\d+(?:[ .\-_()+/]{1,2}\d+)*\)?",
        ]
    )
)
_DIGIT = re.compile(r"\d")
_DECIMAL = re.compile(r"\d{1,12}\.\d{1,8}")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_MIN_SECRET_DIGITS = 6  # an OTP code
_MIN_GLUED_DIGITS = 9  # digits inside an identifier: a card or a mobile number is longer, an id's date part shorter
_MIN_BOUND_SECRET = 3
# C0 and C1 control characters and DEL; a newline in a value would forge a line of a console log or a tool's output.
_CONTROL = {n: f"\\x{n:02x}" for n in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}
_CONTROL.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_CONTROL_BUT_NEWLINE = {n: text for n, text in _CONTROL.items() if n != 0x0A}

_secrets: ContextVar[tuple[str, ...]] = ContextVar("hypercard_secrets", default=())


def secret_fields() -> frozenset[str]:
    """The names of the fields whose values are secrets: the project's, and those any kind known declares."""
    return SECRET_KEYS | KINDS.sensitive_fields()


def bind_secrets(values: Iterable[object]) -> None:
    """The exact secrets of the event now being handled (this task and those it starts): scrubbed from free text."""
    _secrets.set(tuple(text for value in values if value is not None and len(text := str(value)) >= _MIN_BOUND_SECRET))


def clear_secrets() -> None:
    _secrets.set(())


def bound_secrets() -> tuple[str, ...]:
    return _secrets.get()


def cut(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, marked as cut."""
    return text if len(text) <= limit else text[: limit - 1] + CUT


def escape(text: str, *, newlines: bool = False) -> str:
    """`text` with every control character written out (`\\x1b`); `newlines` keeps line breaks (a traceback's)."""
    return text.translate(_CONTROL_BUT_NEWLINE if newlines else _CONTROL)


def scrub(text: str, limit: int = MAX_TEXT, *, newlines: bool = False) -> str:
    """Free text cut to `limit` characters, then every form of a secret masked, then control characters escaped."""
    return escape(mask(cut(text, limit)), newlines=newlines)


def mask(text: str) -> str:
    """Every form of a secret in `text` masked, in time linear in its length (callers cut it first: `scrub`)."""
    for secret in _secrets.get():
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "-----BEGIN" in text:
        text = _PEM.sub(REDACTED, text)
    if "://" in text:
        text = _CREDENTIALS.sub(lambda match: match.group("scheme") + REDACTED + "@", text)
    if "@" in text:
        text = _EMAIL.sub(REDACTED, text)
    if ":" in text or "=" in text:
        text = _NAMED.sub(lambda match: match.group("name") + REDACTED, text)
    if _DIGIT.search(text):
        text = _NUMBERS.sub(_number, text)
    return text


def _number(match: re.Match[str]) -> str:
    text = match.group()
    if match.lastgroup == "keep":
        return text
    digits = sum(ch.isdigit() for ch in text)
    if digits < _MIN_SECRET_DIGITS or _DECIMAL.fullmatch(text) or _IPV4.fullmatch(text):
        return text
    if digits < _MIN_GLUED_DIGITS and _glued(match):
        return text
    return REDACTED


def _glued(match: re.Match[str]) -> bool:
    """Whether the number is part of a word (`9f1c-20261203-ab`, `order_123456`)."""
    source, (start, end) = match.string, match.span()
    before = source[start - 1] if start else " "
    after = source[end] if end < len(source) else " "
    return before.isalnum() or before in "_-" or after.isalnum() or after in "_-"


def is_secret_name(name: str) -> bool:
    """A built-in secret's name, or a field an installed kind declares sensitive."""
    return name.lower() in SECRET_KEYS or name in KINDS.sensitive_fields()


def redact(value: Any) -> Any:
    """A decoded value (already cut: `workers.body_view`) with secret keys masked at any depth, text scrubbed, and the
    business ids of every kind shown as they are."""
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, msgspec.Struct):
        value = msgspec.structs.asdict(value)
    if isinstance(value, dict):
        return {str(k): _redact_item(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(item) for item in value]
    return scrub(str(value))


def _redact_item(key: str, value: Any) -> Any:
    if is_secret_name(key):
        return REDACTED
    if key in KINDS.business_id_fields() and isinstance(value, (str, int)):
        return escape(value[:MAX_BUSINESS_ID_LENGTH]) if isinstance(value, str) else value
    return redact(value)
