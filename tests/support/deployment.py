"""Two gateways and a worker process, as a round of the randomized campaign (tests/reliability/campaign.py) runs
them, and the fault suite's faults (tests/reliability/test_faults.py) to strike them with."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.send_cli import generate_keys, load_private_key
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import Process, gateway_process, worker_process
from tests.support.services import outage, postgres_start, postgres_stop, rabbitmq_start, rabbitmq_stop
from tests.support.tcp_proxy import TcpProxy

FAULTS = ("broker_restart", "link", "worker_kill", "gateway_term", "postgres_down")
# The faults that stop a machine service, and how it is started again (a no-op when it is up).
RESTORE = {"broker_restart": rabbitmq_start, "postgres_down": postgres_start}


class Deployment:
    """Two gateways behind the player's round robin and one worker process, as processes logging into `folder`."""

    def __init__(self, folder: Path, amqp_url: str, worker_env: dict[str, str]) -> None:
        self.folder = folder
        self.amqp_url = amqp_url
        self.worker_env = worker_env
        self.key = load_private_key(generate_keys(folder)[0])
        self.gateways: list[Process] = []
        self.ports: list[int] = []
        self.workers: list[Process] = []

    async def start(self) -> None:
        for n in range(2):
            port = free_port()
            settings = {"HC_AMQP_URL": self.amqp_url, "HC_PUBLISH_TIMEOUT": "2", "HC_DRAIN_SECONDS": "1"}
            self.gateways.append(gateway_process(self.folder, port, settings, name=f"gateway-{n}"))
            self.ports.append(port)
        await self.start_worker()
        for port in self.ports:
            await asyncio.to_thread(wait_until_ready, port, 30)

    async def start_worker(self) -> Process:
        worker = worker_process(
            self.folder, "--all", env={**self.worker_env, "HC_AMQP_URL": self.amqp_url},
            name=f"worker-{len(self.workers)}",
        )  # fmt: skip
        self.workers.append(worker)
        deadline = time.monotonic() + 30
        while not worker.events(event="consuming"):
            if time.monotonic() > deadline or worker.popen.poll() is not None:
                raise RuntimeError(f"the worker did not start consuming: {worker.log_path}")
            await asyncio.sleep(0.1)
        return worker

    @property
    def killed(self) -> set[int]:
        """The worker processes a SIGKILL ended (whose calls outside the database may be made again)."""
        return {worker.popen.pid for worker in self.workers if worker.popen.returncode == -signal.SIGKILL}

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}/hc_sync/common" for port in self.ports]

    def stop(self) -> None:
        for process in [*self.gateways, *self.workers]:
            process.stop()


def fault_action(
    name: str, deployment: Deployment, proxy: TcpProxy | None, notes: list[str]
) -> Callable[[], Awaitable]:
    """The fault suite's faults (tests/reliability/test_faults.py), each restoring what it broke."""

    async def broker_restart() -> None:
        await outage(rabbitmq_stop, rabbitmq_start, 2)

    async def link() -> None:
        assert proxy is not None
        proxy.hold_replies()  # half-open: publishes go out, confirms never come back
        await asyncio.sleep(3)
        proxy.reset_all()  # then the link is reset
        proxy.release_replies()

    async def worker_kill() -> None:
        worker = deployment.workers[-1]
        worker.signal(signal.SIGKILL)
        await asyncio.to_thread(worker.wait)
        await asyncio.sleep(1)
        await deployment.start_worker()

    async def gateway_term() -> None:
        first = deployment.gateways[0]
        first.signal(signal.SIGTERM)
        if (code := await asyncio.to_thread(first.wait)) != 0:
            notes.append(f"gateway exited {code}")

    async def postgres_down() -> None:
        await outage(postgres_stop, postgres_start, 5)

    return {f.__name__: f for f in (broker_restart, link, worker_kill, gateway_term, postgres_down)}[name]
