"""A user's module that fails to import (a syntax error, an ImportError inside it, a handler refused at
registration) ends the worker and the gateway at start in one line that names the module and the error: exit 2, no
traceback. Real processes, started as an operator starts them."""

from __future__ import annotations

import asyncio

import pytest

from gateway.send_cli import generate_keys
from tests.support.network import free_port
from tests.support.processes import Process, gateway_process, worker_process

BROKEN = {
    "syntax": ("def on_event(:\n", "SyntaxError"),
    "import": ("import acme_client_that_is_not_installed\n", "No module named 'acme_client_that_is_not_installed'"),
    "raises": ("raise RuntimeError('the settings file of acme is missing')\n", "the settings file of acme is missing"),
}


async def one_line(process: Process) -> str:
    """The one line the process ended with, besides its JSON log lines (a gateway logs its keys first)."""
    code = await asyncio.to_thread(process.wait)
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
