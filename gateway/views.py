"""HTTP handlers: the push endpoint (and its extra paths), health, readiness and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import envelope
from gateway.errors import (
    BadRequest,
    BrokerUnavailable,
    Forbidden,
    GatewayError,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)
from gateway.keys import ADDRESS_POLICY, DRAINING, METRICS, PUBLISHER, SETTINGS, VERIFIER
from gateway.replies import failure, ok
from gateway.signature import (
    FIELDS_DECODER,
    SIGNATURE_HEADER,
    SIGNED_HEADERS,
    SignatureOutcome,
    candidate_strings,
    rendered_fields,
)
from schemas.events import KNOWN_KINDS

log = structlog.get_logger("gateway")
JSON_TYPES = {"application/json", "text/json"}


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The body, refused past `limit` bytes; a client that sends too slowly is cut off after `timeout` seconds."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the body is larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout:g} seconds") from None
    return b"".join(chunks)


def check_signature(request: web.Request, body_fields: dict[str, str]) -> SignatureOutcome:
    settings = request.app[SETTINGS]
    if settings.signature_mode == "off":
        return SignatureOutcome.UNCHECKED
    signature = request.headers.get(SIGNATURE_HEADER)
    verifier = request.app[VERIFIER]
    if not signature:
        outcome = SignatureOutcome.MISSING
    else:
        headers = {name: request.headers.get(name, "") for name in SIGNED_HEADERS}
        assert verifier is not None  # create_app refuses enforce/monitor without keys
        valid = verifier.verify(candidate_strings(headers, body_fields), signature)
        outcome = SignatureOutcome.VALID if valid else SignatureOutcome.INVALID
    if outcome is not SignatureOutcome.VALID:
        request.app[METRICS].signature_failures.labels(str(outcome)).inc()
        if settings.signature_mode == "enforce":
            raise Unauthorized(f"signature {outcome}: sign the request with the platform's key (SHA256withRSA)")
        log.warning("signature not verified; accepted in monitor mode", signature_outcome=str(outcome))
    return outcome


def event_receiver(default_kind: str | None = None) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The push endpoint's handler; `default_kind` is used for bodies without notify_type (older push URLs)."""

    async def receive_event(request: web.Request) -> web.Response:
        return await _answer(request, default_kind)

    return receive_event


async def _answer(request: web.Request, default_kind: str | None) -> web.Response:
    """Checks, validates and durably queues one push event; code 1 only after the broker's confirm."""
    started = time.perf_counter()
    metrics = request.app[METRICS]
    structlog.contextvars.clear_contextvars()
    line: dict[str, object] = {"path": request.path, "kind": "-"}
    metrics.in_flight.inc()
    try:
        response = await _receive(request, line, default_kind)
    except GatewayError as error:
        line["outcome"] = type(error).__name__
        line["reason"] = str(error)
        response = failure(error.status, str(error))
    finally:
        metrics.in_flight.dec()
    kind = str(line["kind"])
    metric_kind = kind if kind in KNOWN_KINDS or line.get("signature_outcome") == "valid" else "other"
    metrics.requests.labels(metric_kind, line.get("outcome", "-"), response.status).inc()
    log_method = log.info if response.status < 500 else log.warning
    log_method("request", status=response.status, latency_ms=round((time.perf_counter() - started) * 1000, 2), **line)
    return response


async def _receive(request: web.Request, line: dict[str, object], default_kind: str | None) -> web.Response:
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise PayloadTooLarge(f"the body is larger than {settings.max_body_bytes} bytes")

    policy = request.app[ADDRESS_POLICY]
    client_ip = policy.client_address(request.remote, request.headers.get("X-Forwarded-For"))
    line["client_ip"] = client_ip
    if not policy.allows(client_ip):
        raise Forbidden(f"address {client_ip} is not in the allow-list")

    if request.content_type not in JSON_TYPES and not request.content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {request.content_type}")
    body = await read_body(request, settings.max_body_bytes, settings.read_timeout)
    try:
        body_fields = rendered_fields(FIELDS_DECODER.decode(body))
    except (msgspec.MsgspecError, UnicodeDecodeError) as error:
        raise BadRequest(f"the body must be a JSON object: {error}") from None
    except RecursionError:
        raise BadRequest("the body must be a JSON object: it is nested too deeply") from None

    outcome = check_signature(request, body_fields)
    line["signature_outcome"] = str(outcome)

    kind = body_fields.get("notify_type") or default_kind
    if not kind:
        raise BadRequest("the body has no notify_type")
    line["kind"] = kind
    verdict = envelope.validate(kind, body)
    event_id = envelope.event_id(body_fields)
    line["event_id"] = event_id
    structlog.contextvars.bind_contextvars(event_id=event_id, notify_type=kind)

    properties = envelope.properties(
        kind=kind,
        event_id=event_id,
        client_ip=client_ip,
        path=request.path,
        signature_outcome=outcome,
        request_headers=request.headers,
        validation_error=verdict.error,
    )
    metrics = request.app[METRICS]
    publish_started = time.perf_counter()
    await request.app[PUBLISHER].publish_confirmed(body, verdict.routing_key, properties)
    metrics.confirm_seconds.observe(time.perf_counter() - publish_started)

    line["outcome"] = verdict.outcome
    if verdict.outcome == "quarantined":
        metrics.quarantined.labels(kind if kind in KNOWN_KINDS else "other").inc()
        log.warning("event failed validation; kept in hypercard.invalid", validation_error=verdict.error)
    elif verdict.outcome == "unknown_kind":
        # Only a verified sender names a label: forged kinds in monitor mode must not grow the metric's series.
        metrics.unrouted.labels(kind if outcome is SignatureOutcome.VALID else "other").inc()
    return ok()


async def healthz(request: web.Request) -> web.Response:
    """The process is alive."""
    return ok()


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: connected to the broker with the topology declared, and not draining."""
    if request.app[DRAINING].is_set():
        return failure(503, "draining: shutting down")
    if not request.app[PUBLISHER].ready:
        raise BrokerUnavailable("not connected to the message broker")
    return ok()


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
