"""What a log line may carry, by field name (STYLE.md, Logging): a structlog processor that keeps each field for what
the code says it is, and never runs a pattern over a value of unbounded length.

- Named fields: the request's and the delivery's metadata, outcomes, timings and counts, which the project computes.
  Shown as they are (text cut and escaped, never scrubbed: a time, an amount or an id is never mangled).
- The kind (`kind`, `notify_type`): a kind this process knows as it is; any other text from the wire, cut and scrubbed.
- Business ids: the fields the line's kind declares as `business_ids` (every kind in the registry of kinds, user kinds
  included; any kind's when the line names none), as `Event.business_id_values` gives them. Shown as they are,
  unless one holds a secret bound for the event (a mobile sent as the trade number).
- Free text (the message, reasons, errors, a traceback): cut to a fixed length, then scrubbed (`infra.redaction`).
- A secret's name (`code`, `email`, `mobile`, `signature`, ...): `[redacted]`.
- Any other name (a handler's own field): its value cut and scrubbed as free text; a container or an object shown by
  its type and size, an event by its kind and business ids; a name itself cut and escaped.
"""

from __future__ import annotations

from collections.abc import Collection, MutableMapping
from datetime import date, datetime
from typing import Any

from infra.redaction import REDACTED, bound_secrets, cut, escape, is_secret_name, scrub
from schemas.events import MAX_BUSINESS_ID_LENGTH, Event
from schemas.kinds import KINDS

MAX_NAME = 64  # characters of a field's name
MAX_VALUE = 200  # characters of a named field's text, or of a field no list names
MAX_FREE_TEXT = 500  # characters of a message, a reason or an error
MAX_ITEMS = 50  # items of a named list (kinds, fingerprints)
MAX_TRACEBACK = 4000  # characters of a traceback, its end kept: the exception is last
# structlog's own keys and the project's metadata, outcomes, timings and counts.
METADATA = frozenset(
    {
        # structlog and logging
        "level",
        "timestamp",
        "logger",
        "_record",
        "_from_structlog",
        # a request or a delivery
        "event_id",
        "path",
        "status",
        "outcome",
        "signature_outcome",
        "signature_key",
        "latency_ms",
        "confirm_ms",
        "attempt",
        "attempts",
        "next_attempt",
        "delay_seconds",
        "received_at",
        "create_time",
        "stage",
        "fate",
        "tag",
        "queue",
        "routing_key",
        "error_type",
        "effect",
        # a process
        "host",
        "port",
        "metrics_port",
        "pid",
        "seconds",
        "grace_seconds",
        "retry_in",
        "prefetch",
        "count",
        "size",
        "rows",
        "batches",
        "loop",
        "handled_before",
        "module",
        "entry_point",
        "version",
        "migration",
        "node",
        "cause",
        "fingerprints",
        "added",
        "removed",
        "kinds",
        "exporters",
        "service",
        "missing",
    }
)
KIND_FIELDS = frozenset({"kind", "notify_type"})
# Text the code writes from what it was given: cut first, then scrubbed.
FREE_TEXT = frozenset(
    {"event", "reason", "error", "detail", "validation_error", "unverified_reason", "client_ip", "exception"}
)


def keep_named_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every field shown for what its name says it is (the module docstring)."""
    business_ids = _business_ids(event_dict)
    shown: dict[str, Any] = {}
    for key, value in event_dict.items():
        name = key if isinstance(key, str) and len(key) <= MAX_NAME else escape(cut(str(key), MAX_NAME))
        shown[name] = _shown(name, value, business_ids)
    return shown


def _business_ids(event_dict: MutableMapping[str, Any]) -> Collection[str]:
    for field in KIND_FIELDS:
        kind = event_dict.get(field)
        if isinstance(kind, str) and kind in KINDS:
            return KINDS.business_ids(kind)
    return KINDS.business_id_fields()


def _shown(name: str, value: Any, business_ids: Collection[str]) -> Any:
    if name in METADATA:
        return _metadata(value)
    if name in KIND_FIELDS:
        return value if isinstance(value, str) and value in KINDS else _free(value)
    if name in business_ids and isinstance(value, (str, int)) and not isinstance(value, bool):
        return _business_id(value)
    if name == "exception":
        return _traceback(value)
    if name in FREE_TEXT:
        return _free(value)
    if is_secret_name(name):
        return REDACTED
    return _unnamed(value)


def _metadata(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_metadata(item) for item in list(value)[:MAX_ITEMS]]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return escape(cut(str(value), MAX_VALUE))


def _business_id(value: str | int) -> str | int:
    """A business id as it is, unless it holds a secret bound for the event (a 4-digit code only when it is the whole
    value: inside a card id it is a coincidence) or an e-mail address (no id has an @): a body that puts a mobile or
    an e-mail where the trade number goes."""
    text = str(value)[:MAX_BUSINESS_ID_LENGTH]
    for secret in bound_secrets():
        if secret == text or (len(secret) >= 6 and secret in text):
            return REDACTED
    if "@" in text:
        return scrub(text, MAX_BUSINESS_ID_LENGTH)
    return value if isinstance(value, int) else escape(text)


def _free(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {_text(value)}", MAX_FREE_TEXT)
    return scrub(_text(value), MAX_FREE_TEXT)


def _traceback(value: Any) -> str:
    text = _text(value)
    if len(text) > MAX_TRACEBACK:
        text = "…" + text[-MAX_TRACEBACK:]  # the end of a traceback names the exception
    return scrub(text, MAX_TRACEBACK + 1, newlines=True)


def _unnamed(value: Any) -> Any:
    """A field no list names: a number, text, or the type and size of anything else."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        shown = scrub(str(value), MAX_VALUE)
        return value if shown == str(value) else shown  # an integer phone is masked as its digits would be
    if isinstance(value, Event):
        return {"notify_type": value.kind(), **{k: _business_id(v) for k, v in value.business_id_values().items()}}
    if isinstance(value, (str, BaseException, datetime, date)):
        return _free(value)
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return f"<{type(value).__name__}>"


def _text(value: Any) -> str:
    """`value` as text; a string is not copied, and an object's own text is cut as soon as it is made."""
    if isinstance(value, str):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    try:
        return str(value)
    except Exception as error:  # an object whose __str__ fails must not end the line
        return f"<{type(value).__name__}: str() failed with {type(error).__name__}>"
