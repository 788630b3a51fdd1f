"""A user's module that fails to import (a syntax error, an ImportError inside it, a handler refused at
registration), or that declares a kind another package or the project already declares, ends the worker and the
gateway at start in one line that names the module (both, for a kind declared twice) and the error: exit 2, no
traceback. Real processes, started as an operator starts them."""

from __future__ import annotations

import asyncio

import pytest

from gateway.send_cli import generate_keys
from tests.support.network import free_port
from tests.support.processes import Process, gateway_process, worker_process

KIND_MODULE = """
from schemas.events import Event


class {name}(Event, tag="{kind}"):
    account_no: str
"""
RECHARGE_HANDLER = """
from acme_recharge import Recharge
from workers import handles


@handles(Recharge, replace=True)
async def on_recharge(event, ctx):
    pass
"""

BROKEN = {
    "syntax": ("def on_event(:\n", "SyntaxError"),
    "import": ("import acme_client_that_is_not_installed\n", "No module named 'acme_client_that_is_not_installed'"),
    "raises": ("raise RuntimeError('the settings file of acme is missing')\n", "the settings file of acme is missing"),
}


async def one_line(process: Process) -> str:
    """The one line the process ended with, besides its JSON log lines (a gateway logs its keys first)."""
    try:
        code = await asyncio.to_thread(process.wait, 20)
    finally:
        process.stop()
    lines = [line for line in process.output.strip().splitlines() if not line.startswith("{")]
    assert (code, len(lines)) == (2, 1), process.output
    assert "Traceback" not in process.output
    return lines[0]


@pytest.mark.parametrize("broken", sorted(BROKEN))
async def test_a_handler_module_that_fails_to_import_ends_the_worker_in_one_line(tmp_path, broken):
    source, error = BROKEN[broken]
    (tmp_path / f"acme_{broken}.py").write_text(source)
    worker = worker_process(tmp_path, "--all", env={"HC_HANDLERS": f"acme_{broken}", "PYTHONPATH": str(tmp_path)})
    line = await one_line(worker)
    assert f"acme_{broken}" in line and error in line, line


@pytest.mark.parametrize("broken", sorted(BROKEN))
async def test_a_kinds_module_that_fails_to_import_ends_the_gateway_in_one_line(tmp_path, broken):
    source, error = BROKEN[broken]
    (tmp_path / f"acme_{broken}.py").write_text(source)
    generate_keys(tmp_path)
    gateway = gateway_process(tmp_path, free_port(), {"HC_KINDS": f"acme_{broken}", "PYTHONPATH": str(tmp_path)})
    line = await one_line(gateway)
    assert f"acme_{broken}" in line and error in line, line


def installed(tmp_path, package: str, kind: str) -> None:
    """A package installed in tmp_path (on PYTHONPATH) whose module `package` declares `kind` through the
    hypercard.kinds entry point."""
    (tmp_path / f"{package}.py").write_text(KIND_MODULE.format(name=package.title().replace("_", ""), kind=kind))
    dist = tmp_path / f"{package}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[hypercard.kinds]\n{package} = {package}\n")


def start(process: str, tmp_path, env: dict[str, str]) -> Process:
    if process == "worker":
        return worker_process(tmp_path, "--all", env=env)
    generate_keys(tmp_path)
    return gateway_process(tmp_path, free_port(), env)


@pytest.mark.parametrize("process", ["worker", "gateway"])
async def test_two_packages_that_declare_the_same_kind_are_refused_naming_both(tmp_path, process):
    installed(tmp_path, "acme_cards", "LOW_BALANCE")
    installed(tmp_path, "zenith_cards", "LOW_BALANCE")
    line = await one_line(start(process, tmp_path, {"PYTHONPATH": str(tmp_path)}))
    assert "LOW_BALANCE" in line and "acme_cards" in line and "zenith_cards" in line, line


@pytest.mark.parametrize("process", ["worker", "gateway"])
async def test_a_users_kind_named_like_a_built_in_kind_is_refused_naming_both(tmp_path, process):
    """The gateway reads the Struct from HC_KINDS, the worker from the handler module (HC_HANDLERS) that replaces
    the built-in handler with one for it."""
    (tmp_path / "acme_recharge.py").write_text(KIND_MODULE.format(name="Recharge", kind="RECHARGE"))
    (tmp_path / "acme_recharge_handlers.py").write_text(RECHARGE_HANDLER)
    env = {"PYTHONPATH": str(tmp_path), "HC_KINDS": "acme_recharge", "HC_HANDLERS": "acme_recharge_handlers"}
    line = await one_line(start(process, tmp_path, env))
    assert "RECHARGE" in line and "acme_recharge" in line and "built-in" in line, line
