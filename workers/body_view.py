"""A held message's body as `hypercard-inspect --show` prints it: decoded whatever it is (a body nested 900 deep,
invalid UTF-8, not JSON: "not decodable", never a traceback); a known kind's values redacted by structure, an
unknown kind's reduced to its field names and the length of each value, unless the operator asks for values."""

from __future__ import annotations

import json

from infra.redaction import redact
from infra.terminal import printable
from schemas.events import KNOWN_KINDS

MAX_TEXT = 500  # characters of one string value shown: cut before anything is scrubbed
MAX_ITEMS = 50  # fields of an object or items of a list shown
MAX_DEPTH = 32  # no event nests deeper; a body that does is not decodable here


class TooDeep(ValueError):
    """A body nested deeper than MAX_DEPTH."""


def _cut(value: object, depth: int = 0) -> object:
    """Every string cut to MAX_TEXT and every container to MAX_ITEMS, so that redaction costs a bounded time."""
    if depth > MAX_DEPTH:
        raise TooDeep(f"nested deeper than {MAX_DEPTH}")
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, dict):
        return {str(k)[:MAX_TEXT]: _cut(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, list):
        return [_cut(item, depth + 1) for item in value[:MAX_ITEMS]]
    return value


def _shape(value: object) -> object:
    """Field names kept, each value replaced by its type and length: what an unknown kind carries, not its data."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    if isinstance(value, str):
        return f"<text, {len(value)} characters>"
    if value is None or isinstance(value, bool):
        return f"<{json.dumps(value)}>"
    return f"<number, {len(str(value))} characters>"


def body_view(body: bytes, kind: str, *, values: bool = False) -> object:
    """What --show prints of `body`; `values` shows an unknown kind's values too (redacted by structure)."""
    try:
        decoded = _cut(json.loads(body))
        if kind in KNOWN_KINDS or values:
            return redact(decoded)
        return _shape(decoded)
    except (ValueError, RecursionError, MemoryError) as error:  # UnicodeDecodeError is a ValueError
        return f"not decodable ({type(error).__name__}: {printable(error, 80)}): {printable(body, 200)}"


def render_body(view: object) -> str:
    """The view as indented JSON, ASCII only: no character of it can drive a terminal."""
    try:
        return json.dumps(view, indent=2, ensure_ascii=True, sort_keys=True)
    except (ValueError, RecursionError) as error:
        return f"not decodable ({type(error).__name__})"
