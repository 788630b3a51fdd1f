"""structlog set-up shared by the gateway and the workers, with redaction of secrets and personal data.

The project's own log calls go through structlog's fast path (level filtered at the call, JSON encoded by msgspec,
bytes written straight to stdout); stdlib logs (aiohttp, aio-pika) are rendered by the same processors."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

from schemas.events import SENSITIVE_FIELDS

REDACTED = "[redacted]"
# Keys whose values never reach a log line, whatever the call site: OTP codes, e-mail, mobile, signatures, keys.
SECRET_KEYS = SENSITIVE_FIELDS | {
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
}
# Values that look like secrets are masked even under an innocent key (an exception message quoting a body).
SECRET_VALUES = re.compile(
    "|".join(
        [
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",  # e-mail
            r"-----BEGIN [A-Z ]+-----[^-]*-----END [A-Z ]+-----",  # PEM key material
            r"(?<![\w.:-])\+?\d{6,}(?![\w.:-])",  # mobile numbers, OTP codes
            r"amqp://[^@\s]*@",  # credentials in a broker URL
        ]
    )
)
# Identifiers that are long digit strings but are neither secrets nor personal data.
SAFE_KEYS = {
    "event_id",
    "card_id",
    "card_type_id",
    "mc_trade_no",
    "request_number",
    "tx_id",
    "auth_id",
    "pid",
    "timestamp",
}


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return SECRET_VALUES.sub(REDACTED, value) if len(value) >= 6 else value
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in SECRET_KEYS else _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(item) for item in value]
    return value


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop secret keys and mask secret-looking values in every log event."""
    for key, value in event_dict.items():
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        elif key not in SAFE_KEYS and not isinstance(value, (int, float, bool)):
            event_dict[key] = _redact(value)
    return event_dict


_json = msgspec.json.Encoder(enc_hook=str)


def render_json(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> bytes:
    return _json.encode(event_dict)


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """JSON lines when stdout is not a terminal, console output on a terminal; stdlib logs go the same way."""
    if json is None:
        json = not sys.stdout.isatty()
    numeric_level = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    if json:
        structlog.configure(
            processors=[*shared, render_json],
            wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
            logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[*shared, structlog.dev.ConsoleRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
            logger_factory=structlog.PrintLoggerFactory(sys.stdout),
            cache_logger_on_first_use=True,
        )
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # aiohttp's access log formats a line per request on the hot path; the gateway writes its own canonical line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(max(logging.INFO, numeric_level))
    logging.getLogger("aio_pika").setLevel(max(logging.INFO, numeric_level))
