"""The shipping path of a user's kind (examples/low_balance): its wheel built, installed with the project's into a
fresh venv, and found there by entry point, with no PYTHONPATH and no pytest configuration: the gateway validates
and accepts LOW_BALANCE, a worker handles it into the package's own table, and the package's kit test passes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from gateway.send_cli import generate_keys, load_private_key, signed_headers
from infra import declare
from tests.support.broker import AMQP_URL, forget_kind
from tests.support.database import DATABASE_URL
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import REPO, Process
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
EXAMPLE = REPO / "examples" / "low_balance"
KIND = "LOW_BALANCE"


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with the project's wheel (and its `kit` extra) and the example's, from wheels built here."""
    root = tmp_path_factory.mktemp("shipping")
    wheels = root / "wheels"
    # Built from copies: setuptools leaves build/ and *.egg-info beside the sources it builds.
    project = root / "project"
    for name in ("schemas", "infra", "gateway", "workers"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project)
    example = shutil.copytree(EXAMPLE, root / "example")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, project, example, cwd=root)
    run(sys.executable, "-m", "venv", root / "venv", cwd=root)
    pip = root / "venv" / "bin" / "pip"
    run(pip, "install", "-q", "--find-links", wheels, "hypercard-gateway[kit]", "hypercard-low-balance", cwd=root)
    return root / "venv"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would put this checkout on the path."""
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PYTHONPATH": "", **extra}


# The fixture loads the installed packages' handlers: no `modules` for a package installed.
INSTALLED_HANDLER_TEST = """
from low_balance.kinds import LowBalance
from workers.outcomes import Outcome


async def test_an_installed_handler_needs_no_modules(handler_kit):
    async with handler_kit("LOW_BALANCE") as kit:
        run = await kit.run(LowBalance(account_no="6200123456789012", balance=1, reported_at=1_800_000_000))
        assert run.outcome == Outcome.HANDLED
"""


def test_the_kit_test_passes_in_a_project_with_no_pytest_configuration(venv, tmp_path):
    shutil.copy(EXAMPLE / "test_low_balance.py", tmp_path)  # the package's source stays behind: only the wheel's
    (tmp_path / "test_installed.py").write_text(INSTALLED_HANDLER_TEST)
    pytest = [venv / "bin" / "python", "-m", "pytest", "-q", "-W", "error"]
    result = run(*pytest, "test_low_balance.py", "test_installed.py", cwd=tmp_path,
                 env=clean_env(HYPERCARD_TEST_DATABASE=DATABASE_URL))  # fmt: skip
    assert "3 passed" in result.stdout


@pytest.fixture
async def low_balance_queues(amqp):
    await forget_kind(amqp, KIND)
    await declare.declare_kind(amqp, KIND)  # what `hypercard-broker-setup` declares for an installed kind
    yield
    await forget_kind(amqp, KIND)


def push(port: int, key, payload: dict) -> int:
    body = json.dumps(payload).encode()
    headers = {**signed_headers(key, body, "merchant-1"), "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/hc_sync/common", body, headers)
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())["code"]


async def test_the_gateway_and_a_worker_find_the_kind_by_entry_point(venv, tmp_path, low_balance_queues):
    connection = await asyncpg.connect(DATABASE_URL)
    await connection.execute("DROP TABLE IF EXISTS low_balances")
    generate_keys(tmp_path)
    port = free_port()
    common = {"HC_AMQP_URL": AMQP_URL, "HC_ID_SECRET": TEST_ID_SECRET}
    gateway = Process([str(venv / "bin" / "hypercard-gateway")], clean_env(
        **common, HC_PORT=str(port), HC_GATEWAY_METRICS_PORT="0",
        HC_PLATFORM_PUBLIC_KEY=str(tmp_path / "platform-public.pem")), tmp_path / "gateway.log")  # fmt: skip
    worker = Process([str(venv / "bin" / "hypercard-worker"), KIND], clean_env(
        **common, HC_DATABASE_URL=DATABASE_URL, HC_METRICS_PORT="0"), tmp_path / "worker.log")  # fmt: skip
    try:
        await asyncio.to_thread(wait_until_ready, port)
        key = load_private_key(tmp_path / "platform-private.pem")
        report = {"notify_type": KIND, "account_no": "6200123456789012", "balance": 300, "reported_at": 1_800_000_000}
        assert await asyncio.to_thread(push, port, key, report) == 1
        (line,) = await eventually(lambda: _events(gateway, event="request", kind=KIND), timeout=10)
        assert line["outcome"] == "accepted" and line["account_no"] == "6200123456789012"
        (handled,) = await eventually(lambda: _events(worker, event="message", outcome="handled"), timeout=30)
        assert handled["kind"] == KIND and handled["account_no"] == "6200123456789012"
        assert await connection.fetchval("SELECT balance FROM low_balances") == 300
    finally:
        gateway.stop()
        worker.stop()
        await connection.execute("DROP TABLE IF EXISTS low_balances")
        await connection.close()


async def _events(process: Process, **match: object) -> list[dict]:
    return process.events(**match)
