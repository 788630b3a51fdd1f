"""structlog set-up shared by the gateway and the workers, with redaction of secrets and personal data."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

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
SECRET_VALUES = [
    re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),  # e-mail
    re.compile(r"-----BEGIN [A-Z ]+-----[^-]*-----END [A-Z ]+-----", re.S),  # PEM key material
    re.compile(r"(?<![\w.])\+?\d{6,}(?![\w.])"),  # mobile numbers, OTP codes
    re.compile(r"amqp://[^@\s]*@"),  # credentials in a broker URL
]
# Identifiers that are long digit strings but are neither secrets nor personal data.
SAFE_KEYS = {"event_id", "card_id", "card_type_id", "mc_trade_no", "request_number", "tx_id", "auth_id", "pid"}


def _mask(value: str) -> str:
    for pattern in SECRET_VALUES:
        value = pattern.sub(REDACTED, value)
    return value


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return _mask(value)
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in SECRET_KEYS else _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(item) for item in value]
    return value


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop secret keys and mask secret-looking values in every log event."""
    for key, value in list(event_dict.items()):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        elif key not in SAFE_KEYS:
            event_dict[key] = _redact(value)
    return event_dict


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """JSON lines when stdout is not a terminal, console output on a terminal; stdlib logs go the same way."""
    if json is None:
        json = not sys.stdout.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log formats a line per request on the hot path; the gateway writes its own canonical line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(max(logging.INFO, root.level))
    logging.getLogger("aio_pika").setLevel(max(logging.INFO, root.level))
