"""HyperCard request signatures: SHA256withRSA (PKCS#1 v1.5) over a sorted `name=value&...` string.

String to sign (PLATFORM.md): the signed headers and the body's top-level fields, without `signature` and
without empty values (empty string, null), sorted by name in byte order, joined as `name=value` with `&`.
Strings enter as they are, numbers as their JSON text (`1` and `"1"` both give `1`).

Where the platform's documentation leaves a point open:
- `{}` and `[]`: primary reading "empty, left out"; the other reading (entered as `{}` / `[]`) is tried only when
  the body has one. Either way the signature must come from a platform key. Only a real empty object or array is
  empty: a string that spells one (`"[]"`) is a string like any other, entered as it is. Otherwise a genuine push
  without an optional field would verify again with that field holding "[]", and be handled as another event.
- nested objects, arrays and booleans: compact JSON text (as one public integration renders them).

The joined string is read back into one set of pairs only when no name holds `=` or `&` and no value holds a
`&name=`: then every `&name=` in it starts a pair, and each pair's name ends at its first `=`. So:
- a signed header's value must match the header's documented format (HEADER_FORMATS: none admits `&` or `=`);
  a malformed one is MALFORMED, refused in enforce mode like a missing one;
- a body field named outside the documented names (letters, digits and `_`), named like a signed header, or
  holding a `&name=` pair: the string cannot tell such a body from another one (a header moved into the body,
  one field folded into another or into a name), so the signature does not prove which body the platform sent.
  Such a signature is still checked, and when genuine the outcome is AMBIGUOUS: the event is kept in
  hypercard.unverified for review, never handed to the workers (the platform sent it: refusing it would only
  make the platform send it again for 43 hours).
A signed header's value is only ever taken from the header.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SIGNED_HEADERS = ("api-key", "timestamp", "nonce", "version", "lang")
SIGNATURE_HEADER = "signature"
# Every platform push carries these; in enforce mode a push without one of them is refused.
REQUIRED_HEADERS = ("api-key", "timestamp", "nonce", SIGNATURE_HEADER)
_EMPTY_CONTAINERS = ("{}", "[]")
# Every name the string to sign can hold (body names and `api-key`), after a `&`: the start of a pair.
_PAIR_INSIDE = re.compile(r"&[A-Za-z0-9_-]+=")
# The body names of the platform's documentation (push-events 2.2.4): `card_id`, `created_Time`, `app3ds_...`.
BODY_NAME = re.compile(r"[A-Za-z0-9_]+")
# The signed headers' formats (PLATFORM.md, Authentication), each with what a refusal says it should be. Where the
# documentation shows an example rather than a rule, the format is wider than the example, so that a change at the
# platform does not stop every push; none admits `&`, `=` or a space, so no header can hold a pair of the string.
HEADER_FORMATS = {
    # "Merchant identification", format undocumented: visible ASCII (the ranges ! to ~) but the two separators.
    "api-key": (re.compile(r"[!-%'-<>-~]{1,256}"), "a token of visible ASCII characters other than & and ="),
    # Unix seconds: 10 digits from 2001 to 2286; 9 to 13 digits tolerated (milliseconds have 13).
    "timestamp": (re.compile(r"[0-9]{9,13}"), "Unix seconds (digits)"),
    # "Random string, 10 characters": any 1 to 64 letters, digits, `_` and `-` (a UUID fits too).
    "nonce": (re.compile(r"[A-Za-z0-9_-]{1,64}"), "a random string of letters and digits"),
    "version": (re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,4}){0,3}"), "a version such as 1.0"),
    # `en` or `zh-CN`; other language tags (`zh-Hant-TW`, `pt_BR`) are tolerated.
    "lang": (re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,3}"), "a language tag such as en or zh-CN"),
}

_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
BodyFields = dict[str, msgspec.Raw]
FIELDS_DECODER = msgspec.json.Decoder(BodyFields)


class SignatureOutcome(enum.StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    MISSING = "missing"
    MALFORMED = "malformed"  # a signed header is not in its documented format
    AMBIGUOUS = "ambiguous"  # genuine, but the signed string fits more than one body
    UNCHECKED = "unchecked"


class RenderedBody(dict[str, str]):
    """The body's non-empty top-level values as they enter the string to sign, and the names of those that are a
    real empty object or array in the body: only those are empty in the primary reading, never a string that spells
    one (`"[]"` renders as `[]` too)."""

    empty_containers: frozenset[str] = frozenset()


class Reading(NamedTuple):
    """One reading of a request as a string to sign."""

    message: bytes  # the whole string to sign
    body: bytes  # its body pairs alone: what identifies the event, whatever the headers of the attempt


def render(raw: msgspec.Raw) -> str | None:
    """A body value as it enters the string to sign; None for an empty value (left out)."""
    text = bytes(raw)
    first = text[:1]
    if first == b'"':
        value = msgspec.json.decode(text, type=str)
        return value or None
    if text == b"null":
        return None
    if first in (b"{", b"["):
        return msgspec.json.encode(msgspec.json.decode(text)).decode()
    return text.decode()  # a number or a boolean: its JSON text


def rendered_fields(fields: BodyFields) -> RenderedBody:
    """The body's non-empty top-level values, rendered. Raises msgspec.DecodeError on a malformed value."""
    rendered = RenderedBody()
    empty_containers = []
    for name, raw in fields.items():
        value = render(raw)
        if value is not None:
            rendered[name] = value
            if value in _EMPTY_CONTAINERS and bytes(raw)[:1] in (b"{", b"["):  # `[ ]` too; never the string "[]"
                empty_containers.append(name)
    rendered.empty_containers = frozenset(empty_containers)
    return rendered


def join_sorted(items: Mapping[str, str]) -> bytes:
    return "&".join(f"{name}={items[name]}" for name in sorted(items)).encode()


def malformed_header(headers: Mapping[str, str]) -> str | None:
    """Which signed header is not in its documented format; None when all are. `headers`: the non-empty ones."""
    for name, value in headers.items():
        pattern, expected = HEADER_FORMATS[name]
        if not pattern.fullmatch(value):
            return f"the {name} header is not {expected}"
    return None


def ambiguity(body: Mapping[str, str]) -> str | None:
    """Why the string to sign cannot tell this body from another one; None when it can."""
    for name, value in body.items():
        if name == SIGNATURE_HEADER:
            continue  # not signed
        if not BODY_NAME.fullmatch(name):
            return f"the body field name {name[:80]!r} is not letters, digits and _ only"
        if name in SIGNED_HEADERS:
            return f"the body field {name!r} is named like a signed header"
        if "&" in value and _PAIR_INSIDE.search(value):
            return f"the value of {name!r} holds a `&name=` pair"
    return None


def readings(headers: Mapping[str, str], body: Mapping[str, str]) -> Iterator[Reading]:
    """The primary reading, then the alternatives for the open points in the module docstring.

    `headers` has lower-case names; `body` is what rendered_fields returned."""
    header_items = {name: value for name in SIGNED_HEADERS if (value := headers.get(name))}
    body_items = {name: value for name, value in body.items() if name != SIGNATURE_HEADER}
    empties = body.empty_containers & body_items.keys() if isinstance(body, RenderedBody) else frozenset()
    clashes = {name for name in body_items if name in header_items}
    seen: set[bytes] = set()
    for keep_empties in (False, True) if empties else (False,):
        signed_body = {k: v for k, v in body_items.items() if keep_empties or k not in empties}
        # A clash is AMBIGUOUS whatever verifies: both ways are tried only to tell a genuine signature from a forgery.
        for header_wins in (False, True) if clashes else (False,):
            items = {**header_items, **signed_body} if not header_wins else {**signed_body, **header_items}
            message = join_sorted(items)
            if message not in seen:
                seen.add(message)
                yield Reading(message, join_sorted(signed_body))


def string_to_sign(headers: Mapping[str, str], body: Mapping[str, str]) -> bytes:
    """The primary reading: what the platform signs and what hypercard-send signs."""
    return next(readings(headers, body)).message


def fingerprint(key: rsa.RSAPublicKey) -> str:
    """A key's name in logs and metrics: `sha256:` and the first 16 hex digits of the SHA-256 of its DER form."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


class Verified(NamedTuple):
    reading: Reading  # the reading the signature verifies
    key: str  # the fingerprint of the key that verified it


class SignatureVerifier:
    """Verifies a base64 signature against any of the platform's public keys (several during a key rotation)."""

    def __init__(self, keys: Sequence[rsa.RSAPublicKey]) -> None:
        self.replace_keys(keys)

    def replace_keys(self, keys: Sequence[rsa.RSAPublicKey]) -> None:
        """The keys from now on; one assignment, so a request is checked against the old set or the new one."""
        if not keys:
            raise ValueError("no public key to verify signatures with")
        self._keys = tuple((fingerprint(key), key) for key in keys)

    @property
    def keys(self) -> list[rsa.RSAPublicKey]:
        return [key for _, key in self._keys]

    @property
    def fingerprints(self) -> list[str]:
        return [name for name, _ in self._keys]

    def verify(self, message: bytes, signature: str) -> bool:
        return self.verified_reading([Reading(message, b"")], signature) is not None

    def verified_reading(self, candidates: Iterable[Reading], signature: str) -> Verified | None:
        """The first reading the signature verifies with any of the keys, and that key; None if it verifies none."""
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return None
        keys = self._keys
        for reading in candidates:
            for name, key in keys:
                try:
                    key.verify(raw_signature, reading.message, _PKCS1, _SHA256)
                except InvalidSignature:
                    continue
                return Verified(reading, name)
        return None


def sign(private_key: rsa.RSAPrivateKey, message: bytes) -> str:
    """What the platform does: base64(SHA256withRSA(message))."""
    return base64.b64encode(private_key.sign(message, _PKCS1, _SHA256)).decode()


def sign_request(private_key: rsa.RSAPrivateKey, headers: Mapping[str, str], body: bytes) -> str:
    """Signature for a JSON body and its signed headers, as the platform computes it."""
    fields = rendered_fields(FIELDS_DECODER.decode(body))
    return sign(private_key, string_to_sign({k.lower(): v for k, v in headers.items()}, fields))
