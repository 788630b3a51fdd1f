"""Where an event goes and what travels with it: routing key, validation verdict, AMQP properties and headers."""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.signature import SIGNATURE_HEADER, SIGNED_HEADERS, SignatureOutcome, malformed_header
from gateway.wire import EncodedProperties, PublishFields, encode_properties
from infra.redaction import scrub
from schemas import topology
from schemas.events import KIND_NAME, Event, kind_name_problem
from schemas.kinds import KINDS

MAX_KIND_TEXT = 80  # characters of a notify_type that is no kind name, in a header
# A signature as the platform sends it: base64 of an RSA signature (512 characters for a 3072-bit key, 684 for 4096).
SIGNATURE_FORMAT = re.compile(r"[A-Za-z0-9+/]{1,1400}={0,2}")


class VerdictOutcome(enum.StrEnum):
    """Where validation sends an event; the `outcome` of its canonical log line."""

    ACCEPTED = "accepted"  # a known kind (built-in or installed), valid: its kind's queue
    UNKNOWN_KIND = "unknown_kind"  # a kind no installed package declares: its queue if any, or hypercard.unrouted
    QUARANTINED = "quarantined"  # its Struct refused it, or its kind is no kind name: hypercard.invalid
    UNVERIFIED = "unverified"  # its signature does not vouch for it: hypercard.unverified


class Verdict(msgspec.Struct, frozen=True):
    """The validation outcome: where the event is published and, for a quarantined one, why."""

    outcome: VerdictOutcome
    routing_key: str
    error: str | None = None  # why it was quarantined or left unverified
    event: Event | None = None  # the body as its kind's Struct, when it is a known kind and it decodes


def validate(kind: str, body: bytes) -> Verdict:
    """Known kinds are validated against their Struct; an invalid one is quarantined, never refused, because the
    platform would resend it forever. Unknown kinds are kept as they are."""
    decoder = KINDS.decoder(kind)
    if decoder is not None:
        try:
            event = decoder.decode(body)
        except (msgspec.MsgspecError, RecursionError) as error:
            return Verdict(VerdictOutcome.QUARANTINED, topology.INVALID_ROUTING_KEY, f"{kind}: {error}")
        return Verdict(VerdictOutcome.ACCEPTED, topology.routing_key(kind), event=event)
    if problem := kind_name_problem(kind):
        # Never routed by its lower-cased name: `open_card` would reach OPEN_CARD's queue without OPEN_CARD's checks,
        # `UNVERIFIED` the queue of events the signature does not vouch for.
        return Verdict(VerdictOutcome.QUARANTINED, topology.INVALID_ROUTING_KEY, f"notify_type {problem}")
    return Verdict(VerdictOutcome.UNKNOWN_KIND, topology.routing_key(kind))


def unverified(kind: str, body: bytes, reason: str | None) -> Verdict:
    """An event whose signature does not vouch for it (monitor mode, or a genuine but ambiguous signature): kept in
    hypercard.unverified for review, never routed to its kind's queue. It is decoded too, for its business ids only:
    a genuine event held here is found by its trade number like any other."""
    decoder = KINDS.decoder(kind)
    try:
        event = decoder.decode(body) if decoder is not None else None
    except (msgspec.MsgspecError, RecursionError):
        event = None
    return Verdict(VerdictOutcome.UNVERIFIED, topology.UNVERIFIED_ROUTING_KEY, reason, event=event)


def properties(
    *,
    kind: str,
    event_id: str,
    client_ip: str,
    path: str,
    signature_outcome: SignatureOutcome,
    request_headers: Any,
    verdict: Verdict,
    trace_headers: Mapping[str, str] | None = None,
) -> EncodedProperties:
    now = datetime.now(UTC)
    # The platform's signed headers travel with the message, so the event can be verified again later.
    # A header not in its documented format is wire text: only its length travels.
    platform_headers = {
        name: value if _in_format(name, value) else f"[not in its format: {len(value)} characters]"
        for name in (*SIGNED_HEADERS, SIGNATURE_HEADER)
        if (value := request_headers.get(name))
    }
    headers: dict[str, Any] = {
        # A kind name as it is; any other notify_type, and a forwarded hop that is no address, is text from the
        # wire: cut, then scrubbed, as on a log line (the body itself is the message).
        "notify_type": kind if KIND_NAME.match(kind) else scrub(kind, MAX_KIND_TEXT),
        "event_id": event_id,
        "received_at": now.isoformat(timespec="milliseconds"),
        "client_ip": scrub(client_ip, MAX_KIND_TEXT),
        "path": path,
        "signature_outcome": str(signature_outcome),
        "platform_headers": platform_headers,
    }
    if verdict.error is not None:
        name = "unverified_reason" if verdict.outcome == VerdictOutcome.UNVERIFIED else "validation_error"
        headers[name] = scrub(verdict.error, 1000)  # cut, then scrubbed: msgspec's text may quote a value
    if trace_headers:
        headers.update(trace_headers)
    fields: PublishFields = {
        "content_type": "application/json",
        "message_id": os.urandom(16).hex(),  # unique per publish: returns are matched to publishes by message id
        "timestamp": now,
        # AMQP's type property is a short string (<= 255 bytes): a kind that is no kind name is only in the header.
        "message_type": kind if KIND_NAME.match(kind) else "INVALID",
        "app_id": "hypercard-gateway",
    }
    encoded = encode_properties(headers=headers, **fields)
    return EncodedProperties(encoded, delivery_mode=2, headers=headers, **fields)  # delivery mode 2: persistent


def _in_format(name: str, value: str) -> bool:
    if name == SIGNATURE_HEADER:
        return SIGNATURE_FORMAT.fullmatch(value) is not None
    return malformed_header({name: value}) is None
