"""structlog set-up shared by the gateway and the workers: a line keeps each field for what its name says it is
(`infra.log_fields`), free text cut and then scrubbed of secrets and personal data (`infra.redaction`).

The project's own log calls go through structlog's fast path (level filtered at the call, JSON encoded by msgspec,
bytes written straight to stdout); stdlib logs (aiohttp, aio-pika) are rendered by the same processors."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

from infra.log_fields import keep_named_fields

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
        keep_named_fields,
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
