"""Reading a push body: bounded in size and time, one JSON object with one reading of each top-level field."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import msgspec
from aiohttp import web

from gateway.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from gateway.signature import FIELDS_DECODER, RenderedBody, rendered_fields

# Every key is followed by a colon, and so is nothing else but a colon inside a string: when a body has no more colons
# than distinct top-level fields, no key can repeat, and the slower exact check is skipped (counted, not searched:
# bytes.count is a fraction of the cost of a pattern over 64 KB).
# Top-level fields of a body: the platform's events have at most 14. Each one more is work for the signature check,
# the log line and the workers; past this many a body is no event of the platform's.
MAX_FIELDS = 256


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The body, refused past `limit` bytes; a client that sends too slowly is cut off after `timeout` seconds.

    A compressed body is refused before it is read: the platform documents no Content-Encoding, and the server never
    inflates one (`auto_decompress=False`), so no zip bomb and no broken gzip stream reaches memory or the log. A body
    the HTTP layer cannot deliver (bad chunked encoding, the client gone) is a 400, never an internal error."""
    # Every Content-Encoding line counts, and each coding listed in one: `identity` then `gzip` is a gzip body.
    for line in request.headers.getall("Content-Encoding", ()):
        if any(coding.strip().lower() != "identity" for coding in line.split(",")):
            raise UnsupportedMediaType(f"Content-Encoding {line[:40]!r} is not accepted: send the body uncompressed")
    try:
        return await _read(request, limit, timeout)
    except (web.RequestPayloadError, ConnectionError) as error:
        raise BadRequest(f"the body could not be read: {type(error).__name__}") from None


async def _read(request: web.Request, limit: int, timeout: float) -> bytes:
    content = request.content
    if content.is_eof():  # the whole body came with the headers, as a push's small body does: nothing to wait for
        body = content.read_nowait()
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        return body
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


def body_fields(body: bytes) -> RenderedBody:
    """The body's non-empty top-level fields as they enter the string to sign (BadRequest if it is no JSON object,
    or names a top-level field twice: a consumer whose parser keeps the first value would act on a value the
    signature never covered)."""
    try:
        fields = FIELDS_DECODER.decode(body)
        if len(fields) > MAX_FIELDS:
            raise BadRequest(f"the body has {len(fields)} top-level fields; an event has at most {MAX_FIELDS}")
        rendered = rendered_fields(fields)
    except (msgspec.MsgspecError, UnicodeDecodeError) as error:
        raise BadRequest(f"the body must be a JSON object: {error}") from None
    except RecursionError:
        raise BadRequest("the body must be a JSON object: it is nested too deeply") from None
    if body.count(b":") > len(fields) and (repeated := _repeated_top_level_key(body)):
        raise BadRequest(f"the body has the top-level field {repeated[:80]!r} more than once")
    return rendered


def _repeated_top_level_key(body: bytes) -> str | None:
    objects: list[list[tuple[str, object]]] = []

    def keep_pairs(pairs: list[tuple[str, object]]) -> list[tuple[str, object]]:
        objects.append(pairs)  # innermost objects first: the top-level object comes last
        return pairs  # only the pairs are read: no dict is built

    try:
        json.loads(body, object_pairs_hook=keep_pairs)
    except (ValueError, RecursionError):
        # msgspec read it but json does not (their limits differ): the check cannot be made, so it is not passed.
        raise BadRequest("the body could not be checked for repeated top-level fields") from None
    counts = Counter(name for name, _ in objects[-1])
    return next((name for name, count in counts.items() if count > 1), None)
