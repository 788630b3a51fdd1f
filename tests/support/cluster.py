"""A 3-node RabbitMQ cluster on this machine (node names hc1..hc3@localhost, AMQP ports 5681..5683), next to the
machine's own broker, for the node-loss fault test."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

NODES = [("hc1@localhost", 5681), ("hc2@localhost", 5682), ("hc3@localhost", 5683)]


def _ctl(node: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", "-n", node, *args], capture_output=True, timeout=timeout, check=check)


class LocalCluster:
    def __init__(self, base: Path) -> None:
        self.base = base

    @property
    def amqp_url(self) -> str:
        return ",".join(f"amqp://guest:guest@127.0.0.1:{port}/" for _, port in NODES)

    def _start_node(self, node: str, port: int) -> None:
        folder = self.base / node.split("@")[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "rabbitmq.conf").write_text(f"listeners.tcp.default = {port}\nloopback_users = none\n")
        (self.base / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.base, "rabbitmq", "rabbitmq")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.base)], check=True)
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(port + 20000),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
        }
        subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, capture_output=True, timeout=60)

    @staticmethod
    def await_node(node: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while _ctl(node, "await_startup", check=False, timeout=timeout).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node} did not start")
            time.sleep(1)

    def start(self) -> None:
        self.stop()
        self.base.mkdir(parents=True, exist_ok=True)
        for node, port in NODES:
            self._start_node(node, port)
        self.await_node(NODES[0][0])
        for node, _ in NODES[1:]:
            self.await_node(node)
            _ctl(node, "stop_app")
            _ctl(node, "join_cluster", NODES[0][0])
            _ctl(node, "start_app")

    def stop_node(self, node: str) -> None:
        _ctl(node, "shutdown", check=False)

    def stop(self) -> None:
        for node, _ in NODES:
            _ctl(node, "shutdown", check=False, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)
