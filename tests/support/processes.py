"""Worker and gateway processes started the way a user starts them, with their output in a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.broker import AMQP_URL
from tests.support.database import DATABASE_URL
from tests.support.identifiers import TEST_ID_SECRET

REPO = Path(__file__).resolve().parents[2]


def log_events(output: str, **match: object) -> list[dict]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if all(line.get(k) == v for k, v in match.items())]


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            args, cwd=REPO, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def events(self, **match: object) -> list[dict]:
        """The process's JSON log lines whose fields have the given values."""
        return log_events(self.output, **match)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        code = self.popen.wait(timeout)
        self._log.close()
        return code

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def worker_process(tmp_path: Path, *args: str, env: dict[str, str] | None = None, name: str = "worker") -> Process:
    return Process(
        [sys.executable, "-m", "workers", *args],
        {
            "HC_DATABASE_URL": DATABASE_URL,
            "HC_AMQP_URL": AMQP_URL,
            "HC_METRICS_PORT": "0",
            "HC_HEALTH_PORT": "0",  # a fixed port would collide between workers of one test, and test runs
            "HC_RETRY_DELAYS": "0.2,0.4,0.8",
            "HC_ID_SECRET": TEST_ID_SECRET,
            **(env or {}),
        },
        tmp_path / f"{name}.log",
    )


def gateway_process(tmp_path: Path, port: int, env: dict[str, str] | None = None, name: str = "gateway") -> Process:
    """`hypercard-gateway` on `port`, checking signatures against tmp_path/platform-public.pem."""
    return Process(
        [str(Path(sys.executable).parent / "hypercard-gateway")],
        {
            "HC_PORT": str(port),
            "HC_PLATFORM_PUBLIC_KEY": str(tmp_path / "platform-public.pem"),
            "HC_AMQP_URL": AMQP_URL,
            "HC_GATEWAY_METRICS_PORT": "0",
            "HC_ID_SECRET": TEST_ID_SECRET,
            **(env or {}),
        },
        tmp_path / f"{name}.log",
    )
