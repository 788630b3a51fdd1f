"""`make run` as a person uses it: in a terminal, Ctrl-C drains the gateway and the workers and exits cleanly."""

from __future__ import annotations

import os
import pty
import select
import time
from pathlib import Path

import pytest

from gateway.send_cli import generate_keys
from tests.support.broker import AMQP_URL
from tests.support.database import DATABASE_URL
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import REPO

pytestmark = [pytest.mark.broker, pytest.mark.database]
CRASH_TEXT = ("Traceback", "Segmentation fault", "Terminated", "Error 1", "Killed")


def read_until_exit(fd: int, timeout: float) -> bytes:
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the terminal's other end is gone: every process of it exited
                break
            if not data:
                break
            output += data
    return output


@pytest.mark.parametrize("command", [["make", "--no-print-directory", "run"], [".venv/bin/hypercard-run"]])
def test_ctrl_c_in_a_terminal_drains_gateway_and_workers_and_exits_cleanly(tmp_path: Path, amqp, command):
    generate_keys(tmp_path)
    port = free_port()
    # `make run` gives its processes the development secret (.dev/id-secret); hypercard-run passes on the caller's.
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("HC_ID_SECRET")}
    secret = {} if command[0] == "make" else {"HC_ID_SECRET": TEST_ID_SECRET}
    env = {
        **inherited,
        **secret,
        "HC_PORT": str(port), "HC_AMQP_URL": AMQP_URL, "HC_DATABASE_URL": DATABASE_URL,
        "HC_PLATFORM_PUBLIC_KEY": str(tmp_path / "platform-public.pem"), "HC_DRAIN_SECONDS": "0.5",
        "HC_METRICS_PORT": "0", "HC_GATEWAY_METRICS_PORT": "0", "HC_HEALTH_PORT": "0", "TERM": "dumb",
    }  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal session running the command, as a person's shell would
        os.chdir(REPO)
        os.execvpe(command[0], command, env)
    try:
        wait_until_ready(port, timeout=120)
        output = read_until_exit(fd, 3)  # the worker has started consuming by now
        os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT to every process in its foreground group
        output += read_until_exit(fd, 60)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) in (0, 130, -2), text  # 0, or interrupted as make reports it
    assert "gateway stopped" in text and "worker stopped" in text, text
    for crash in CRASH_TEXT:
        assert crash not in text, text
