"""What an operator tool prints: free text from the wire cut, scrubbed and escaped, so that a crafted header or
body can neither spend the CPU it chooses nor drive the operator's terminal; and a progress line for a terminal."""

from __future__ import annotations

import sys
from typing import TextIO

from infra.redaction import scrub

# C0 and C1 control characters and DEL; a newline in a value would forge a line of the tool's output too.
_CONTROL = {n: f"\\x{n:02x}" for n in [*range(0x20), *range(0x7F, 0xA0)]}
_CONTROL.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})


def escape(text: str) -> str:
    """`text` with every control character written out (`\\x1b`), printable as it stands."""
    return text.translate(_CONTROL)


def printable(value: object, limit: int = 200) -> str:
    """A value from a message, for a tool's output: cut to `limit` first (scrubbing is then bounded), scrubbed of
    secrets as log lines are, then escaped."""
    if isinstance(value, bytes):
        value = value[: limit * 4].decode(errors="replace")
    text = str(value)
    if len(text) <= limit:
        return escape(scrub(text))
    return escape(scrub(text[: limit - 1])) + "…"  # marked as cut, `limit` characters before escaping


class Progress:
    """One line on stderr, rewritten in place, only when stderr is a terminal: what a long pass has done so far."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.shown = self.stream.isatty()

    def show(self, text: str) -> None:
        if self.shown:
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
