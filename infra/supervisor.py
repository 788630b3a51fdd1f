"""`hypercard-run`: the whole system in one command (what `make run` starts): the gateway and a worker for every
kind, as child processes. Ctrl-C or SIGTERM drains both (each gets SIGTERM once and finishes what it holds) and
exits 0; if either stops on its own, the other is stopped too and the exit status says so."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra.commands import add_version

BIN = Path(sys.executable).parent
STOP_GRACE = 60.0  # seconds each child gets to drain before it is killed
# On one host the worker's health port must not be the gateway's metrics port (both 9101 by default).
WORKER_HEALTH_PORT = "9102"


def children_commands() -> dict[str, list[str]]:
    return {"worker": [str(BIN / "hypercard-worker"), "--all"], "gateway": [str(BIN / "hypercard-gateway")]}


def supervise(commands: dict[str, list[str]]) -> int:
    stop = {"requested": False}

    def request_stop(_signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    children = {name: subprocess.Popen(command) for name, command in commands.items()}
    ended: str | None = None
    while not stop["requested"] and ended is None:
        ended = next((name for name, child in children.items() if child.poll() is not None), None)
        time.sleep(0.1)
    if ended is not None:
        code = children[ended].returncode
        print(f"hypercard-run: the {ended} stopped (exit {code}); stopping the rest", file=sys.stderr)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)  # a child already draining (Ctrl-C reached it too) ignores a repeat
    deadline = time.monotonic() + STOP_GRACE
    for name, child in children.items():
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"hypercard-run: the {name} did not drain in {STOP_GRACE:g} s; killing it", file=sys.stderr)
            child.kill()
            child.wait()
    codes = [child.returncode for child in children.values()]
    if ended is not None:
        return children[ended].returncode or 1
    return 0 if all(code == 0 for code in codes) else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hypercard-run", description=__doc__)
    add_version(parser)
    parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    os.environ.setdefault("HC_HEALTH_PORT", WORKER_HEALTH_PORT)
    sys.exit(supervise(children_commands()))
