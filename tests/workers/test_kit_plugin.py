"""The handler kit in a handler author's own project: the `handler_kit` fixture of the `pytest11` plugin with no
pytest configuration, and the kit's captured logs written through the production processors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from schemas.events import Event
from tests.support.database import DATABASE_URL
from workers import HandlerContext
from workers.outcomes import Outcome
from workers.registry import Registry
from workers.testing import handler_kit

pytestmark = pytest.mark.database


class KitSecret(Event, tag="KIT_SECRET"):
    sensitive = frozenset({"mobile"})
    business_ids = ("account_no",)

    account_no: str
    mobile: str


SECRETS = Registry()


@SECRETS.handles(KitSecret)
async def note(event: KitSecret, ctx: HandlerContext) -> None:
    ctx.log.info("noted", mobile=event.mobile, reached=f"called {event.mobile}", account=event.account_no)


async def test_the_kits_logs_show_what_production_would_redact_redacted_and_business_ids_in_clear():
    async with handler_kit("KIT_SECRET", DATABASE_URL, registry=SECRETS) as kit:
        run = await kit.run(KitSecret(account_no="6200123456789012", mobile="13800138000"))
    assert run.outcome == Outcome.HANDLED
    (line,) = run.logs
    assert line["mobile"] == "[redacted]" and "13800138000" not in line["reached"]
    assert line["account_no"] == "6200123456789012"  # the kind's business id, bound as the worker binds it


USER_HANDLER = """
from schemas.events import Event
from workers import HandlerContext, handles


class Ping(Event, tag="KIT_PLUGIN_PING"):
    name: str


@handles(Ping)
async def ping(event: Ping, ctx: HandlerContext) -> None:
    await ctx.tx.execute("CREATE TEMP TABLE IF NOT EXISTS pings (name text)")
    await ctx.tx.execute("INSERT INTO pings VALUES ($1)", event.name)
"""
# What a user's project with only `hypercard-gateway[kit]` has: no pytest-asyncio (nor pytest-aiohttp, built on it).
WITHOUT_ASYNC_PLUGINS = ["-p", "no:asyncio", "-p", "no:aiohttp"]
USER_TEST = """
from ping_handler import Ping

from workers.outcomes import Outcome


async def test_a_ping_is_handled(handler_kit):
    async with handler_kit("KIT_PLUGIN_PING", modules=["ping_handler"]) as kit:
        run = await kit.run(Ping(name="p"))
        assert run.outcome == Outcome.HANDLED
        assert await kit.tx.fetchval("SELECT name FROM pings") == "p"
"""


def test_the_fixture_works_in_a_project_with_no_pytest_configuration_nor_pytest_asyncio(tmp_path):
    (tmp_path / "ping_handler.py").write_text(USER_HANDLER)
    (tmp_path / "test_ping.py").write_text(USER_TEST)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", *WITHOUT_ASYNC_PLUGINS, "test_ping.py"], cwd=tmp_path,
        env={**os.environ, "HYPERCARD_TEST_DATABASE": DATABASE_URL}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
