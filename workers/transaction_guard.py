"""The transaction a handler is given: the worker's, which the handler uses and never ends. COMMIT, ROLLBACK and the
other transaction-control statements are refused (nested `async with ctx.tx.transaction()` savepoints still work);
after the handler, the worker checks that its transaction is still open (`ended`)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.transaction import Transaction as Savepoint

    from workers.database import Transaction

# A statement that would end, or reach around, the worker's transaction or the savepoint a handler runs in.
CONTROL = re.compile(
    r"(?:^|;)\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*"
    r"(?:COMMIT|ROLLBACK|END|ABORT|BEGIN|START\s+TRANSACTION|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)\b",
    re.IGNORECASE | re.DOTALL,
)
# A query with no `;`, or with a `$` (a function or DO body has its own BEGIN and END), is checked at its start only.
LEADING = re.compile(CONTROL.pattern.replace("(?:^|;)", "^", 1), re.IGNORECASE | re.DOTALL)


class HandlerEndedTransaction(Exception):
    """A handler tried to commit, roll back or otherwise end the transaction the worker owns: its delivery fails.
    `lost`: the transaction did end (the handler reached around the guard), so its batch's claims are undone."""

    def __init__(self, message: str, *, lost: bool = False) -> None:
        super().__init__(message)
        self.lost = lost


class GuardedTransaction:
    """The worker's connection as a handler gets it: asyncpg's methods, transaction control refused."""

    __slots__ = ("_connection", "refused")

    def __init__(self, connection: Transaction) -> None:
        self._connection = connection
        self.refused: str | None = None  # the statement refused, if any: the delivery fails even if it was caught

    def _check(self, query: str) -> None:
        several = ";" in query and "$" not in query
        if (CONTROL.search(query) if several else LEADING.match(query)) is not None:
            self.refused = query.strip()[:60]
            raise HandlerEndedTransaction(
                f"a handler may not end the worker's transaction ({self.refused!r}): the worker commits or rolls "
                "back; use `async with ctx.tx.transaction()` for a savepoint of its own"
            )

    def ended(self) -> HandlerEndedTransaction | None:
        """What the handler did to its transaction, if it ended it or tried to (a local check: no round trip)."""
        if self._connection.is_in_transaction():
            if self.refused is None:
                return None
            return HandlerEndedTransaction(f"the handler tried to end the worker's transaction ({self.refused!r})")
        return HandlerEndedTransaction("the handler ended the worker's transaction", lost=True)

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

    def transaction(self, **options: Any) -> Savepoint:
        """A savepoint inside the worker's transaction (`async with ctx.tx.transaction(): ...`)."""
        return self._connection.transaction(**options)

    def is_in_transaction(self) -> bool:
        return self._connection.is_in_transaction()

    def __getattr__(self, name: str) -> Any:  # copy_records_to_table, cursor, prepare, ...: asyncpg's own
        return getattr(self._connection, name)
