"""A user module's own versioned migrations: applied once each, in version order, under the migration lock, across
worker restarts; recorded with the module's name and version."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import load_settings
from tests.support.broker import AMQP_URL
from tests.support.database import DATABASE_URL
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.tracked_kind import TEST_DELAYS, Tracked, record
from workers.app import create_worker
from workers.registry import Registry
from workers.settings import WorkerSettings

pytestmark = [pytest.mark.broker, pytest.mark.database]
FIRST = """CREATE TABLE test_card_notes (card_id text PRIMARY KEY);
CREATE TABLE test_migration_log (n serial PRIMARY KEY, version integer NOT NULL);
INSERT INTO test_migration_log (version) VALUES (1);"""
SECOND = """ALTER TABLE test_card_notes ADD COLUMN note text NOT NULL DEFAULT '';
INSERT INTO test_migration_log (version) VALUES (2);"""
THIRD = """CREATE INDEX test_card_notes_note ON test_card_notes (note);
INSERT INTO test_migration_log (version) VALUES (3);"""


async def start_and_stop(registry: Registry) -> None:
    settings = load_settings(
        WorkerSettings, {}, database_url=DATABASE_URL, amqp_url=AMQP_URL, retry_delays=TEST_DELAYS, shutdown_grace=5,
        id_secret=TEST_ID_SECRET,
    )  # fmt: skip
    runtime = create_worker(settings, ["TEST_TRACKED"], registry=registry)
    await runtime.start()
    assert runtime.consuming
    await runtime.stop()


async def test_a_modules_migrations_are_applied_once_each_in_order_across_restarts(db, tmp_path: Path):
    await db.execute("DROP TABLE IF EXISTS test_card_notes, test_migration_log")
    folder = tmp_path / "card_notes_migrations"
    folder.mkdir()
    # Written in the wrong order on purpose: the version in the name decides.
    (folder / "002_note.sql").write_text(SECOND)
    (folder / "001_card_notes.sql").write_text(FIRST)
    (folder / "README.txt").write_text("not a migration")
    registry = Registry()
    registry.handles(Tracked, retry_delays=TEST_DELAYS)(record)
    registry.migrations("card_notes", folder)

    await start_and_stop(registry)
    await start_and_stop(registry)  # a restart: nothing applied again
    (folder / "003_note_index.sql").write_text(THIRD)
    await start_and_stop(registry)  # the module's next version: only the new migration

    assert await db.fetch("SELECT version FROM test_migration_log ORDER BY n") == [(1,), (2,), (3,)]
    recorded = await db.fetch(
        "SELECT module, version, name FROM hypercard_module_migrations WHERE module = 'card_notes' ORDER BY version"
    )
    assert [tuple(row) for row in recorded] == [
        ("card_notes", 1, "card_notes"), ("card_notes", 2, "note"), ("card_notes", 3, "note_index"),
    ]  # fmt: skip
    await db.execute("INSERT INTO test_card_notes (card_id, note) VALUES ('c-1', 'migrated')")


def test_two_modules_cannot_register_migrations_under_one_name(tmp_path: Path):
    registry = Registry()
    registry.migrations("card_notes", tmp_path / "a")
    with pytest.raises(ValueError, match="card_notes"):
        registry.migrations("card_notes", tmp_path / "b")
