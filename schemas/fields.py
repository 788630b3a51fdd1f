"""Field types of the platform's bodies that msgspec alone cannot express.

The platform documents most fields as strings but has been seen sending them as JSON numbers (`"code": 482913`,
a numeric `card_id`). A documented string field therefore takes a JSON number as its text. msgspec's
`strict=False` converts only the other way (`"1"` to an int), so these fields are types of their own, decoded by
`decode_field` (the decoders' dec_hook). Values are `str` subclasses: everything that takes a `str` takes them.

Which text: the platform signs a top-level number as its JSON text, so `"amount": 100.00` and `"amount": "100.00"`
verify with one signature and are one notification. A top-level field keeps the number's text as sent ("100.00",
not the float's "100"; `BodyDecoder`), so both get one inbox key. A nested value is signed in compact JSON, where
`1.50` and `1.5` read alike: there a number becomes its value's decimal text (`number_text`), alike too.
"""

from __future__ import annotations

import functools
import math
import re
from decimal import Decimal
from typing import Any, ClassVar, Generic, TypeVar

import msgspec


class Text(str):
    """A documented string field: non-empty; a JSON number becomes its decimal text."""

    min_length: ClassVar[int] = 1
    max_length: ClassVar[int | None] = None
    pattern: ClassVar[re.Pattern[str] | None] = None

    @classmethod
    def parse(cls, value: Any) -> Text:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(f"Expected `str`, got `{type(value).__name__}`")
        text = value if isinstance(value, str) else number_text(value)
        if len(text) < cls.min_length:
            raise ValueError(f"Expected `str` of length >= {cls.min_length}")
        if cls.max_length is not None and len(text) > cls.max_length:
            raise ValueError(f"Expected `str` of length <= {cls.max_length}")
        if cls.pattern is not None and not cls.pattern.fullmatch(text):
            raise ValueError(f"Expected `str` matching regex {cls.pattern.pattern!r}")
        return cls(text)


class AnyText(Text):
    """A documented string field that may be empty (names, remarks)."""

    min_length = 0


class Email(Text):
    max_length = 64


class Mobile(Text):
    min_length = 6
    max_length = 11


class MobileCode(Text):
    max_length = 5


class TxId(Text):
    max_length = 64


class Amount(Text):
    """A decimal amount as text ("100.00"): never a float in the project's hands."""

    pattern = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def number_text(value: int | float) -> str:
    """A JSON number as decimal text: `482913` -> "482913", `1.5` -> "1.5", `1e3` -> "1000"."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError("Expected a finite number")
    text = format(Decimal(repr(value)), "f")  # repr: the shortest text that reads back as the same float
    return text.removesuffix(".0") if "." in text and text.endswith(".0") else text


def decode_field(type_: type, value: Any) -> Any:
    """msgspec dec_hook for the types above."""
    if isinstance(type_, type) and issubclass(type_, Text):
        return type_.parse(value)
    raise NotImplementedError(f"no decoder for {type_!r}")


T = TypeVar("T", bound=msgspec.Struct)
_NUMBER_START = frozenset(b"-0123456789")


class BodyDecoder(Generic[T]):
    """Decodes a body into a Struct (one kind, or a union of kinds) as the platform sends it: numbers sent as strings
    (`strict=False`), documented strings sent as numbers (`decode_field`), and a top-level string field sent as a
    JSON number kept as the number's text as sent (the module docstring says why)."""

    def __init__(self, type_: Any) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_, strict=False, dec_hook=decode_field)

    def decode(self, body: bytes | str) -> T:
        decoded = self._decoder.decode(body)
        names = [name for name in decoded.__struct_fields__ if isinstance(getattr(decoded, name), Text)]
        if not names:
            return decoded
        sent = _sent_decoder(type(decoded)).decode(body)  # the Text fields' JSON text, every other field skipped
        texts: dict[str, Text] = {}
        for name in names:
            raw, value = bytes(getattr(sent, name)), getattr(decoded, name)
            if raw[:1] and raw[0] in _NUMBER_START and raw.decode() != value:  # 100.00 decoded as 100.0: "100.00"
                try:
                    texts[name] = type(value).parse(raw.decode())
                except ValueError as error:
                    body_name = sent.__struct_encode_fields__[sent.__struct_fields__.index(name)]
                    raise msgspec.ValidationError(f"{error} - at `$.{body_name}`") from None
        return msgspec.structs.replace(decoded, **texts) if texts else decoded


@functools.cache
def _sent_decoder(struct_type: type[msgspec.Struct]) -> msgspec.json.Decoder[Any]:
    """A decoder of a Struct type's fields as the JSON text sent (msgspec.Raw), each under its name in the body."""
    fields = msgspec.structs.fields(struct_type)
    sent = msgspec.defstruct(
        f"{struct_type.__name__}AsSent",
        [(field.name, msgspec.Raw, msgspec.Raw()) for field in fields],
        rename={field.name: field.encode_name for field in fields},
    )
    return msgspec.json.Decoder(sent)
