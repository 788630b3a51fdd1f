"""The workers' database users: migrations run as a DDL user (HC_MIGRATION_DATABASE_URL), the workers as a
DML-only one, with the grants of `infra.permissions.database_grants` (what the deployment's set-up applies). Real
roles, made in the tests' database for this run and dropped at its end: each forbidden statement is refused by
PostgreSQL itself (issue 26, finding 6: workers migrated as the superuser)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from yarl import URL

from infra.permissions import database_grants
from tests.support.database import DATABASE_URL
from workers import database

pytestmark = pytest.mark.database
RUN = secrets.token_hex(4)


@dataclass
class Users:
    ddl_url: str
    dml_url: str


def url_of(role: str, password: str) -> str:
    return str(URL(DATABASE_URL).with_user(role).with_password(password))


@pytest.fixture
async def users() -> AsyncIterator[Users]:
    """A DDL user owning a schema of its own (the migrations' tables go there) and a DML user granted its tables."""
    ddl, dml, password = f"hc_ddl_{RUN}", f"hc_dml_{RUN}", secrets.token_hex(8)
    admin = await asyncpg.connect(DATABASE_URL)
    try:
        await admin.execute(f"CREATE ROLE {ddl} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE ROLE {dml} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE SCHEMA {ddl} AUTHORIZATION {ddl}")
        await admin.execute(f"ALTER ROLE {dml} SET search_path = {ddl}")
        database_name = URL(DATABASE_URL).path.lstrip("/")
        for statement in database_grants(owner=ddl, worker=dml, database=database_name, schema=ddl):
            await admin.execute(statement)
        yield Users(url_of(ddl, password), url_of(dml, password))
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {ddl} CASCADE")
        for role in (dml, ddl):
            await admin.execute(f"DROP OWNED BY {role} CASCADE")
            await admin.execute(f"DROP ROLE {role}")
        await admin.close()


# As the README's Database users table words them (a test below compares), and the statement tried.
FORBIDDEN = {
    "`CREATE TABLE`": "CREATE TABLE forged (id integer)",
    "`DROP TABLE`": "DROP TABLE hypercard_inbox",
    "`ALTER TABLE`": "ALTER TABLE hypercard_inbox ADD COLUMN forged integer",
    "`TRUNCATE`": "TRUNCATE hypercard_inbox",
    "`CREATE INDEX`": "CREATE INDEX forged ON hypercard_inbox (kind)",
}


async def test_migrations_run_as_the_ddl_user_and_the_worker_user_may_only_read_and_write_rows(users):
    pool = await database.create_pool(users.dml_url, 2)
    try:
        applied = await database.migrate(pool, migration_url=users.ddl_url)
        assert applied == [version for version, _, _ in database.migration_files()]
        assert await database.migrate(pool) == [], "a worker with no migration URL finds nothing to do, and no DDL"
        async with pool.acquire() as connection:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute("DROP TABLE hypercard_schema_migrations")
        async with pool.acquire() as connection:
            inbox = await connection.fetchval("SELECT count(*) FROM hypercard_inbox")
            assert inbox == 0
            refused = []
            for what, statement in FORBIDDEN.items():
                try:
                    await connection.execute(statement)
                except asyncpg.InsufficientPrivilegeError:
                    refused.append(what)
            assert refused == list(FORBIDDEN), f"the worker user may {set(FORBIDDEN) - set(refused)}"
    finally:
        await pool.close()


async def test_the_worker_user_cannot_migrate(users):
    pool = await database.create_pool(users.dml_url, 1)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await database.migrate(pool)
    finally:
        await pool.close()


def test_the_readme_lists_what_the_worker_user_is_refused_as_postgresql_is_asked_here():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| worker (`hypercard_worker`")]
    refused = row.strip().strip("|").split(" | ")[2].strip().split(", ")
    assert refused == [*FORBIDDEN, "running the migrations"]
