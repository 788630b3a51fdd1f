"""HTTP handlers: the push endpoint (and its extra paths), health and readiness."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from gateway import envelope
from gateway.app_keys import ADDRESS_POLICY, DRAINING, IDENTIFIERS, METRICS, PUBLISHER, SETTINGS, TRACING, VERIFIER
from gateway.body import body_fields, read_body
from gateway.envelope import VerdictOutcome
from gateway.errors import (
    BadRequest,
    BrokerUnavailable,
    Draining,
    Forbidden,
    GatewayError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from gateway.replies import ok
from gateway.sender_checks import check_api_key, check_header_text, check_signature, header_problem
from gateway.signature import SignatureOutcome
from infra.redaction import bind_secrets, clear_secrets, secret_fields
from schemas.kinds import KINDS

if TYPE_CHECKING:
    from infra.spans import Span, Tracing

log = structlog.get_logger("gateway")
JSON_TYPES = {"application/json", "text/json"}
# A Content-Type longer than this is refused unread: the platform's is `application/json` (with a charset at most).
MAX_CONTENT_TYPE = 256
TRUSTED_OUTCOMES = (SignatureOutcome.VALID, SignatureOutcome.UNCHECKED)


def event_receiver(default_kind: str | None = None) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The push endpoint's handler; `default_kind` is used for bodies without notify_type (older push URLs)."""

    async def receive_event(request: web.Request) -> web.Response:
        return await _answer(request, default_kind)

    return receive_event


async def _answer(request: web.Request, default_kind: str | None) -> web.Response:
    """Checks, validates and durably queues one push event; code 1 only after the broker's confirm."""
    started = time.perf_counter()
    metrics = request.app[METRICS]
    tracing = request.app[TRACING]
    span = None if tracing is None else tracing.push_started(request.path, request.headers)
    structlog.contextvars.clear_contextvars()
    clear_secrets()
    line: dict[str, object] = {"path": request.path, "kind": "-"}
    status = 200
    metrics.in_flight.inc()
    try:
        return await _receive(request, line, default_kind, span)
    except GatewayError as error:  # the reply_contract middleware turns it into the reply
        line["outcome"] = type(error).__name__
        line["reason"] = str(error)
        status = error.status
        raise
    except BaseException:  # a bug or a cancelled request: the middleware answers 503 if anything still listens
        line["outcome"] = "internal_error"
        status = 503
        raise
    finally:
        metrics.in_flight.dec()
        kind = str(line["kind"])
        metric_kind = kind if kind in KINDS or line.get("signature_outcome") == "valid" else "other"
        metrics.requests.labels(metric_kind, line.get("outcome", "-"), status).inc()
        log_method = log.info if status < 500 else log.warning
        log_method("request", status=status, latency_ms=round((time.perf_counter() - started) * 1000, 2), **line)
        if tracing is not None and span is not None:
            tracing.push_ended(span, status, line)


async def _receive(
    request: web.Request, line: dict[str, object], default_kind: str | None, span: Span | None
) -> web.Response:
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise PayloadTooLarge(f"the body is larger than {settings.max_body_bytes} bytes")
    headers = request.headers
    check_header_text(headers)

    policy = request.app[ADDRESS_POLICY]
    client_ip = policy.client_address(request.remote, tuple(headers.getall("X-Forwarded-For", ())))
    line["client_ip"] = client_ip
    if not policy.allows(client_ip):
        raise Forbidden(f"address {client_ip} is not in the allow-list")

    content_type = headers.get("Content-Type", "")
    if len(content_type) > MAX_CONTENT_TYPE:
        raise UnsupportedMediaType(f"Content-Type must be application/json, in at most {MAX_CONTENT_TYPE} characters")
    media_type = content_type.split(";", 1)[0].strip().lower()  # not aiohttp's parser: slow on crafted parameters
    if media_type not in JSON_TYPES and not media_type.endswith("+json"):
        # The reply names what was sent, cut: the sender's own text is never copied whole into a reply or a line.
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {media_type[:40]!r}")
    check_api_key(headers, settings.api_key)
    metrics = request.app[METRICS]
    if (
        settings.signature_mode == "enforce"
        and request.app[VERIFIER] is not None
        and (problem := header_problem(headers))
    ):  # refused whatever the body says: it is not read, nor decoded
        line["signature_outcome"] = str(problem[0])
        metrics.signature_failures.labels(str(problem[0])).inc()
        raise Unauthorized(f"signature {problem[0]}: {problem[1]}; sign the request with the platform's key")
    body = await read_body(request, settings.max_body_bytes, settings.read_timeout)
    fields = body_fields(body)
    # Scrubbed from any text logged from here, an installed kind's secret fields too (the kind is not known yet).
    bind_secrets(fields[name] for name in secret_fields() if name in fields)

    check = check_signature(headers, fields, request.app[VERIFIER])
    line["signature_outcome"] = str(check.outcome)
    if check.key is not None:
        line["signature_key"] = check.key
        metrics.key_verifications.labels(check.key).inc()
    trusted = check.outcome in TRUSTED_OUTCOMES
    if not trusted:
        metrics.signature_failures.labels(str(check.outcome)).inc()
        if settings.signature_mode == "enforce" and check.outcome is not SignatureOutcome.AMBIGUOUS:
            raise Unauthorized(f"signature {check.outcome}: {check.reason}; sign the request with the platform's key")

    kind = fields.get("notify_type") or default_kind
    if not kind:
        raise BadRequest("the body has no notify_type")
    line["kind"] = kind
    # An event the signature does not vouch for is kept for review, never handed to the workers.
    verdict = envelope.validate(kind, body) if trusted else envelope.unverified(kind, body, check.reason)
    event_id = request.app[IDENTIFIERS].event_id(check.signed_body)
    line["event_id"] = event_id
    structlog.contextvars.bind_contextvars(event_id=event_id, notify_type=kind)
    if verdict.event is not None:
        # Its trade, card, ...: what a support question names. Only from a body that decoded as its kind, so each is
        # plain text of bounded length or an integer. An unverified event's are logged too, though a forged body can
        # put anything there: the line says `outcome: unverified`, and a genuine event held for review is found.
        business_ids = verdict.event.business_id_values()
        line.update(business_ids)
        structlog.contextvars.bind_contextvars(**business_ids)

    properties = envelope.properties(
        kind=kind,
        event_id=event_id,
        client_ip=client_ip,
        path=request.path,
        signature_outcome=check.outcome,
        request_headers=headers,
        verdict=verdict,
        # The push's trace context (`traceparent`), which the workers continue; none while tracing is off.
        trace_headers=None if span is None else _tracing(request).message_headers(span),
    )
    publish_started = time.perf_counter()
    await request.app[PUBLISHER].publish_confirmed(body, verdict.routing_key, properties)
    confirm_seconds = time.perf_counter() - publish_started
    metrics.confirm_seconds.observe(confirm_seconds)
    line["confirm_ms"] = round(confirm_seconds * 1000, 2)  # the broker's share of latency_ms

    line["outcome"] = str(verdict.outcome)
    if verdict.outcome == VerdictOutcome.QUARANTINED:
        metrics.quarantined.labels(kind if kind in KINDS else "other").inc()
        log.warning("event failed validation; kept in hypercard.invalid", validation_error=verdict.error)
    elif verdict.outcome == VerdictOutcome.UNVERIFIED:
        metrics.unverified.labels(str(check.outcome)).inc()
        log.warning("signature not verified; event kept in hypercard.unverified", reason=check.reason)
    elif verdict.outcome == VerdictOutcome.UNKNOWN_KIND:
        metrics.unknown_kind.labels(kind if check.outcome is SignatureOutcome.VALID else "other").inc()
    return ok()


async def healthz(request: web.Request) -> web.Response:
    """The process is alive."""
    return ok()


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: connected to the broker with the topology declared, not blocked by it, not draining."""
    if request.app[DRAINING].is_set():
        raise Draining("draining: shutting down")
    publisher = request.app[PUBLISHER]
    if not publisher.ready:
        raise BrokerUnavailable("not connected to the message broker")
    if publisher.blocked is not None:
        raise BrokerUnavailable(f"the message broker blocks publishing: {publisher.blocked}")
    return ok()


def _tracing(request: web.Request) -> Tracing:
    """The app's tracing, for a push that has a span (which only tracing gives it)."""
    tracing = request.app[TRACING]
    assert tracing is not None
    return tracing
