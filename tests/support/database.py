"""The tests' PostgreSQL database: a fresh schema per test, and the table where handled test events leave a row."""

from __future__ import annotations

import os

import asyncpg

# HYPERCARD_TEST_DATABASE lets two checkouts run their suites side by side on one server (not an HC_* setting).
DATABASE_URL = os.environ.get("HYPERCARD_TEST_DATABASE", "postgresql://postgres@127.0.0.1:5432/test")
# One row per committed handling of a test event (tests/support/tracked_kind.py, tests/support/effect_tap.py).
CREATE_TABLE = """CREATE TABLE IF NOT EXISTS test_effects (
    kind text NOT NULL, token text NOT NULL, attempt integer NOT NULL, at timestamptz NOT NULL DEFAULT now())"""
# One row per call of an effect outside the database (tests/support/effect_tap.py), written outside the transaction.
CREATE_EXTERNAL_CALLS = """CREATE TABLE IF NOT EXISTS test_external_calls (
    kind text NOT NULL, token text NOT NULL, idempotency_key text NOT NULL, pid integer NOT NULL,
    at timestamptz NOT NULL DEFAULT now())"""


async def reset_database() -> None:
    """A fresh schema: every project table dropped, so the migrations run as on a new machine."""
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND (tablename LIKE 'hypercard_%' OR tablename IN ('test_effects', 'test_external_calls'))"
        )
        for row in tables:
            await connection.execute(f'DROP TABLE "{row["tablename"]}" CASCADE')
        await connection.execute(CREATE_TABLE)
        await connection.execute(CREATE_EXTERNAL_CALLS)
    finally:
        await connection.close()
