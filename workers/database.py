"""The PostgreSQL pool, versioned SQL migrations applied at start, and the inbox that makes handling idempotent."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from typing import TypeAlias

import asyncpg
import structlog

log = structlog.get_logger("workers.database")
MIGRATIONS = resources.files("workers") / "migrations"
PROBE_TIMEOUT = 2.0  # seconds a `SELECT 1` may take before PostgreSQL counts as not answering
# One worker migrates at a time; the others wait on this lock and then find nothing left to do.
MIGRATION_LOCK = 0x4859504552  # "HYPER"
# A connection as handlers and claims get it: asyncpg's own, or the proxy its pool hands out (the same methods).
Transaction: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
# What a delivery claims: (kind, inbox key, event id, inbox key under HC_ID_SECRET_PREVIOUS or None).
Claim = tuple[str, str, str, str | None]


async def _no_session_reset(connection: asyncpg.Connection) -> None:
    """Handlers run inside a transaction, so a connection comes back with no session state to undo. asyncpg's
    default reset (RESET ALL, UNLISTEN *, unlocking advisory locks) costs a round trip per message, about a tenth
    of a worker's CPU and more of PostgreSQL's in the benchmark's profile. Handlers use SET LOCAL and
    pg_advisory_xact_lock, which end with their transaction."""


async def probe(pool: asyncpg.Pool, timeout: float = PROBE_TIMEOUT) -> None:
    """Does PostgreSQL answer? Raises what the pool raised, or TimeoutError after `timeout` seconds."""
    await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout)


async def create_pool(url: str, size: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=size, command_timeout=30, reset=_no_session_reset)
    assert pool is not None
    return pool


def migration_files(folder: Traversable = MIGRATIONS) -> list[tuple[int, str, str]]:
    """(version, name, sql) for every `NNN_name.sql` of `folder`, in version order."""
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(version), name, entry.read_text()))
    return sorted(found)


async def migrate(
    pool: asyncpg.Pool,
    schema_statements: Sequence[str] = (),
    module_migrations: Mapping[str, Traversable] | None = None,
    *,
    migration_url: str | None = None,
) -> list[int]:
    """Under the migration lock: apply the migrations not applied yet, each in its own transaction, then each user
    module's (`module_migrations`, by module name), then the modules' `schema(...)` statements. Two workers starting
    at once never run the same DDL together. Returns the project's versions applied. With `migration_url`
    (HC_MIGRATION_DATABASE_URL, the DDL user) they run on a connection of that user, so the pool's user may be DML
    only; when every migration is applied and there is no module migration or schema statement, the pool's user only
    reads the ledger."""
    if not schema_statements and not module_migrations and await _all_applied(pool):
        return []
    if migration_url is None:
        async with pool.acquire() as pooled:
            return await _apply(pooled, schema_statements, module_migrations or {})
    connection = await asyncpg.connect(migration_url)
    try:
        return await _apply(connection, schema_statements, module_migrations or {})
    finally:
        await connection.close()


async def _all_applied(pool: asyncpg.Pool) -> bool:
    try:
        done = {row["version"] for row in await pool.fetch("SELECT version FROM hypercard_schema_migrations")}
    except asyncpg.UndefinedTableError:
        return False
    return done >= {version for version, _, _ in migration_files()}


async def _apply(
    connection: Transaction, schema_statements: Sequence[str], module_migrations: Mapping[str, Traversable]
) -> list[int]:
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        applied_now = await _apply_project_migrations(connection)
        for module, folder in sorted(module_migrations.items()):
            await _apply_module_migrations(connection, module, folder)
        for statement in schema_statements:
            await connection.execute(statement)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied_now


async def _apply_project_migrations(connection: Transaction) -> list[int]:
    applied_now = []
    await connection.execute(
        """CREATE TABLE IF NOT EXISTS hypercard_schema_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    done = {row["version"] for row in await connection.fetch("SELECT version FROM hypercard_schema_migrations")}
    for version, name, sql in migration_files():
        if version in done:
            continue
        async with connection.transaction():
            await connection.execute(sql)
            await connection.execute(
                "INSERT INTO hypercard_schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
        applied_now.append(version)
        log.info("migration applied", version=version, migration=name)
    return applied_now


async def _apply_module_migrations(connection: Transaction, module: str, folder: Traversable) -> None:
    """A user module's `NNN_name.sql` files not applied yet, in version order, each in its own transaction."""
    done = {
        row["version"]
        for row in await connection.fetch("SELECT version FROM hypercard_module_migrations WHERE module = $1", module)
    }
    for version, name, sql in migration_files(folder):
        if version in done:
            continue
        async with connection.transaction():
            await connection.execute(sql)
            await connection.execute(
                "INSERT INTO hypercard_module_migrations (module, version, name) VALUES ($1, $2, $3)",
                module, version, name,
            )  # fmt: skip
        log.info("migration applied", module=module, version=version, migration=name)


async def claim(tx: Transaction, kind: str, key: str, event_id: str, previous: str | None = None) -> bool:
    """Record that the inbox key `key` is being handled, inside the handler's transaction. False: handled before
    (or being handled by a concurrent delivery that then committed), so this delivery is a duplicate."""
    return bool(await claim_many(tx, [(kind, key, event_id, previous)]))


async def claim_many(tx: Transaction, claims: list[Claim]) -> set[tuple[str, str]]:
    """Claim (kind, inbox key, event id, inbox key under HC_ID_SECRET_PREVIOUS or None) rows in one statement; the
    (kind, key) pairs claimed now. During a rotation both keys are claimed, and a delivery is a duplicate if either
    was taken: by a worker still on the old secret too, which is why the old key is inserted, not just looked up.
    The rows go in sorted order, so two batches claiming overlapping keys wait on each other instead of
    deadlocking."""
    if not claims:
        return set()
    rows = [(kind, key, event_id) for kind, key, event_id, _ in claims]
    rows += [(kind, previous, event_id) for kind, _, event_id, previous in claims if previous is not None]
    kinds, keys, event_ids = zip(*rows, strict=True)
    inserted = await tx.fetch(
        """INSERT INTO hypercard_inbox (kind, idempotency_key, event_id)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ORDER BY 1, 2
           ON CONFLICT DO NOTHING RETURNING kind, idempotency_key""",
        kinds,
        keys,
        event_ids,
    )
    taken = {(row[0], row[1]) for row in inserted}
    return {
        (kind, key)
        for kind, key, _, previous in claims
        if (kind, key) in taken and (previous is None or (kind, previous) in taken)
    }


async def release_claim(tx: Transaction, kind: str, key: str, previous: str | None = None) -> None:
    """Undo a claim whose handler failed (its savepoint rolled back), so that the retry is not a duplicate."""
    await tx.execute(
        "DELETE FROM hypercard_inbox WHERE kind = $1 AND idempotency_key = ANY($2::text[])",
        kind,
        [key] if previous is None else [key, previous],
    )
