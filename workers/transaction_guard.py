"""The transaction a handler is given: the worker's, which the handler uses and never ends, on a pooled connection
that the next batch uses after it. Refused, as PostgreSQL would read the query (past its string literals, quoted
identifiers, comments and dollar-quoted bodies, in every statement of a multi-statement query):
- transaction control, COMMIT, ROLLBACK, END, ABORT, BEGIN, START TRANSACTION, SAVEPOINT, RELEASE, PREPARE
  TRANSACTION (HandlerEndedTransaction); nested `async with ctx.tx.transaction()` savepoints still work;
- statements that change the session and outlive the transaction, SET (and SET SESSION, SET ROLE, ...), RESET,
  DISCARD, LISTEN, UNLISTEN, PREPARE, DEALLOCATE (HandlerChangedSession). SET LOCAL, SET TRANSACTION and SET
  CONSTRAINTS end with the transaction and are allowed.
After the handler, the worker checks that its transaction is still open (`ended`)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.transaction import Transaction as Savepoint

    from workers.database import Transaction

# A statement that would end, or reach around, the worker's transaction or the savepoint a handler runs in.
ENDING = re.compile(
    r"(?:COMMIT|ROLLBACK|END|ABORT|BEGIN|START\s+TRANSACTION|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)\b", re.I
)
# A statement whose effect outlives the transaction on the pooled connection: the next batch would run under it.
SESSION = re.compile(
    r"(?:SET(?!\s+(?:LOCAL|TRANSACTION|CONSTRAINTS)\b)|RESET|DISCARD|LISTEN|UNLISTEN|PREPARE|DEALLOCATE)\b", re.I
)
# A dollar quote's opening: `$$` or `$tag$` (a `$1` is a parameter, not a tag).
DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
IDENTIFIER_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]")
# A function body in SQL-standard form holds statements of its own, up to its lone END.
ATOMIC_BODY = re.compile(r"^\s*CREATE\b.*\bBEGIN\s+ATOMIC\b", re.I | re.S)


class HandlerEndedTransaction(Exception):
    """A handler tried to commit, roll back or otherwise end the transaction the worker owns: its delivery fails.
    `lost`: the transaction did end (the handler reached around the guard), so its batch's claims are undone."""

    def __init__(self, message: str, *, lost: bool = False) -> None:
        super().__init__(message)
        self.lost = lost


class HandlerChangedSession(Exception):
    """A handler tried to change the pooled connection's session (SET, RESET, DISCARD, LISTEN, ...), which would
    outlive its transaction and reach the next batch: its delivery fails. SET LOCAL is the handler's to use."""


def statements(query: str) -> list[str]:
    """The statements of `query` as PostgreSQL splits them at its `;`, each with its literals, quoted identifiers and
    dollar-quoted bodies blanked out (`''`, `""`, `$$`) and its comments turned into spaces."""
    found: list[str] = []
    current: list[str] = []
    at, length = 0, len(query)
    while at < length:
        char = query[at]
        following = query[at + 1] if at + 1 < length else ""
        if char == "-" and following == "-":
            end = query.find("\n", at)
            at = length if end < 0 else end
            current.append(" ")
        elif char == "/" and following == "*":
            at = _comment_end(query, at)
            current.append(" ")
        elif char == "'":
            escapes = at > 0 and query[at - 1] in "eE" and (at < 2 or not IDENTIFIER_CHAR.match(query[at - 2]))
            at = _quoted_end(query, at, "'", backslash=escapes)
            current.append("''")
        elif char == '"':
            at = _quoted_end(query, at, '"', backslash=False)
            current.append('""')
        elif (
            char == "$"
            and not (at > 0 and IDENTIFIER_CHAR.match(query[at - 1]))
            and (tag := DOLLAR_TAG.match(query, at))
        ):
            end = query.find(tag.group(), tag.end())
            at = length if end < 0 else end + len(tag.group())
            current.append("$$")
        elif char == ";":
            found.append("".join(current))
            current = []
            at += 1
        else:
            current.append(char)
            at += 1
    found.append("".join(current))
    return _join_atomic_bodies(found)


def _quoted_end(query: str, at: int, quote: str, *, backslash: bool) -> int:
    """Where the literal or identifier opened at `at` ends (a doubled quote is one quote; `\\` escapes in E'...')."""
    at += 1
    while at < len(query):
        char = query[at]
        if backslash and char == "\\":
            at += 2
        elif char == quote:
            if query[at + 1 : at + 2] != quote:
                return at + 1
            at += 2
        else:
            at += 1
    return at  # unterminated: PostgreSQL refuses the whole query


def _comment_end(query: str, at: int) -> int:
    """Where the block comment opened at `at` ends: they nest."""
    depth, at = 0, at
    while at < len(query):
        pair = query[at : at + 2]
        if pair == "/*":
            depth, at = depth + 1, at + 2
        elif pair == "*/":
            depth, at = depth - 1, at + 2
            if depth == 0:
                return at
        else:
            at += 1
    return at


def _join_atomic_bodies(parts: list[str]) -> list[str]:
    """`CREATE FUNCTION ... BEGIN ATOMIC a; b; END` is one statement, not three."""
    joined: list[str] = []
    body: list[str] | None = None
    for part in parts:
        if body is not None:
            body.append(part)
            if part.strip().upper() == "END":
                joined.append(";".join(body))
                body = None
        elif ATOMIC_BODY.match(part):
            body = [part]
        else:
            joined.append(part)
    if body is not None:
        joined.append(";".join(body))
    return joined


class GuardedTransaction:
    """The worker's connection as a handler gets it: asyncpg's methods, transaction control and session changes
    refused."""

    __slots__ = ("_connection", "refused")

    def __init__(self, connection: Transaction) -> None:
        self._connection = connection
        self.refused: Exception | None = None  # what was refused, if anything: the delivery fails even if caught

    def _check(self, query: str) -> None:
        for statement in statements(query):
            text = statement.strip()
            if ENDING.match(text):
                self.refused = HandlerEndedTransaction(
                    f"a handler may not end the worker's transaction ({text[:60]!r}): the worker commits or rolls "
                    "back; use `async with ctx.tx.transaction()` for a savepoint of its own"
                )
            elif SESSION.match(text):
                self.refused = HandlerChangedSession(
                    f"a handler may not change the session of the worker's pooled connection ({text[:60]!r}): it "
                    "would outlive the transaction; use SET LOCAL, which ends with it"
                )
            else:
                continue
            raise self.refused

    def ended(self) -> Exception | None:
        """What the handler did to its transaction or session, if it ended or changed them or tried to (a local
        check: no round trip)."""
        if not self._connection.is_in_transaction():
            return HandlerEndedTransaction("the handler ended the worker's transaction", lost=True)
        if self.refused is None:
            return None
        return type(self.refused)(f"the handler tried this and caught the refusal: {self.refused}")

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        self._check(query)
        return await self._connection.execute(query, *args, timeout=timeout)

    async def executemany(self, command: str, args: Any, *, timeout: float | None = None) -> None:
        self._check(command)
        await self._connection.executemany(command, args, timeout=timeout)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[asyncpg.Record]:
        self._check(query)
        return await self._connection.fetch(query, *args, timeout=timeout)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> asyncpg.Record | None:
        self._check(query)
        return await self._connection.fetchrow(query, *args, timeout=timeout)

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        self._check(query)
        return await self._connection.fetchval(query, *args, column=column, timeout=timeout)

    async def prepare(self, query: str, **options: Any) -> Any:
        self._check(query)
        return await self._connection.prepare(query, **options)

    def cursor(self, query: str, *args: Any, **options: Any) -> Any:
        self._check(query)
        return self._connection.cursor(query, *args, **options)

    async def copy_from_query(self, query: str, *args: Any, **options: Any) -> str:
        self._check(query)
        return await self._connection.copy_from_query(query, *args, **options)

    def transaction(self, **options: Any) -> Savepoint:
        """A savepoint inside the worker's transaction (`async with ctx.tx.transaction(): ...`)."""
        return self._connection.transaction(**options)

    def is_in_transaction(self) -> bool:
        return self._connection.is_in_transaction()

    def __getattr__(self, name: str) -> Any:  # copy_records_to_table, ...: asyncpg's own
        return getattr(self._connection, name)
