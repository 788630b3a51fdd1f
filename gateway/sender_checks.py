"""Is the sender the platform, for this merchant? Header text, api key and signature checks of a push."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from multidict import MultiMapping

from gateway.errors import BadRequest, Unauthorized
from gateway.signature import (
    REQUIRED_HEADERS,
    SIGNATURE_HEADER,
    SIGNED_HEADERS,
    SignatureOutcome,
    SignatureVerifier,
    ambiguity,
    malformed_header,
    readings,
)

# Every header the gateway reads: their values reach the string to sign, the log line or the message headers.
READ_HEADERS = (*SIGNED_HEADERS, SIGNATURE_HEADER, "x-forwarded-for", "content-type")


class SignatureCheck(NamedTuple):
    outcome: SignatureOutcome
    signed_body: bytes  # the body pairs the signature covers (or would cover): the event id is derived from them
    reason: str | None = None  # why the outcome is not VALID
    key: str | None = None  # the fingerprint of the platform key the signature verified with


def check_header_text(headers: MultiMapping[str]) -> None:
    """A header that is not UTF-8 text (aiohttp keeps such bytes as surrogates) is the client's mistake: 400."""
    for name in READ_HEADERS:
        for value in headers.getall(name, ()):
            if not value.isascii():
                try:
                    value.encode()
                except UnicodeEncodeError:
                    raise BadRequest(f"the {name} header is not UTF-8 text") from None


def check_api_key(headers: Mapping[str, str], api_keys: tuple[str, ...]) -> None:
    """With HC_API_KEY set, a push for another merchant is refused before its signature is looked at."""
    if api_keys and headers.get("api-key") not in api_keys:
        raise Unauthorized("the api-key header is not this merchant's (HC_API_KEY)")


def header_problem(headers: MultiMapping[str]) -> tuple[SignatureOutcome, str] | None:
    """MISSING or MALFORMED and why, from the headers alone; None when they can carry a signature."""
    missing = [name for name in REQUIRED_HEADERS if not headers.get(name)]
    if missing:
        return SignatureOutcome.MISSING, f"no {', '.join(missing)} header"
    # One value per signed header: what is signed, logged and published is then the one value sent.
    repeated = [name for name in (*SIGNED_HEADERS, SIGNATURE_HEADER) if len(headers.getall(name, ())) > 1]
    signed = {name: value for name in SIGNED_HEADERS if (value := headers.get(name))}
    if reason := (f"more than one {repeated[0]} header" if repeated else malformed_header(signed)):
        return SignatureOutcome.MALFORMED, reason
    return None


def check_signature(
    headers: MultiMapping[str], body: Mapping[str, str], verifier: SignatureVerifier | None
) -> SignatureCheck:
    """The signature's outcome (UNCHECKED without a verifier: HC_SIGNATURE_MODE=off, development only). The caller
    decides what MISSING, MALFORMED, INVALID or AMBIGUOUS means in its mode; such an event is never handed to the
    workers."""
    signed = {name: value for name in SIGNED_HEADERS if (value := headers.get(name))}
    candidates = list(readings(signed, body))  # usually one; each is built once
    primary = candidates[0]
    if verifier is None:
        return SignatureCheck(SignatureOutcome.UNCHECKED, primary.body)
    if problem := header_problem(headers):
        return SignatureCheck(problem[0], primary.body, problem[1])
    verified = verifier.verified_reading(candidates, headers[SIGNATURE_HEADER])
    if verified is None:
        return SignatureCheck(SignatureOutcome.INVALID, primary.body, "the signature does not verify")
    if reason := ambiguity(body):
        return SignatureCheck(SignatureOutcome.AMBIGUOUS, verified.reading.body, reason, verified.key)
    return SignatureCheck(SignatureOutcome.VALID, verified.reading.body, key=verified.key)
