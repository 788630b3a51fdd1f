"""A RabbitMQ node of a test's own on this machine, beside the shared broker: for what must never be done to the
shared one (a resource alarm blocks every publisher on it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.network import free_port


class PrivateNode:
    def __init__(self, name: str = "hcprivate") -> None:
        # One per test run on the machine: a second run's node of the same name would not start, and its await_startup
        # would answer for the first run's node, on another port.
        self.node = f"{name}{os.getpid()}@localhost"
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix=f"{name}-"))

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        command = ["rabbitmqctl", "-q", "-n", self.node, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True).stdout.strip()

    def start(self, timeout: float = 120, open_files: int | None = None) -> PrivateNode:
        """Start the node; `open_files` caps its open-files limit (soft and hard) as a fresh machine's 1024 does."""
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.default = {self.port}\nloopback_users = none\n")
        (self.base / "enabled_plugins").write_text("[].\n")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.base)], check=True)
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
        }
        limit = ["prlimit", f"--nofile={open_files}:{open_files}"] if open_files else []
        subprocess.run([*limit, "rabbitmq-server", "-detached"], env=env, check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + timeout
        while subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "await_startup"], capture_output=True,
                             timeout=timeout).returncode != 0:  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.node} did not start")
            time.sleep(1)
        return self

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "shutdown"], capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)
