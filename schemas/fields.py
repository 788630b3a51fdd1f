"""Field types of the platform's bodies that msgspec alone cannot express.

The platform documents most fields as strings but has been seen sending them as JSON numbers (`"code": 482913`,
a numeric `card_id`). A documented string field therefore takes a JSON number as its decimal text. msgspec's
`strict=False` converts only the other way (`"1"` to an int), so these fields are types of their own, decoded by
`decode_field` (the decoders' dec_hook). Values are `str` subclasses: everything that takes a `str` takes them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any, ClassVar


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
