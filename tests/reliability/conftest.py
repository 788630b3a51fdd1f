from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.send_cli import generate_keys, load_private_key
from tests.support.broker import AMQP_URL
from tests.support.database import DATABASE_URL, reset_database
from tests.support.harness import PlatformPlayer, Report, account, make_events
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import Process, gateway_process, worker_process
from tests.support.services import postgres_start, rabbitmq_start

SAMPLE_SECRETS = ("example@gmail.com", "18301523750", "888666")
# Long enough to ride out a broker or database outage of a few seconds.
WORKER_ENV = {
    "HC_HANDLERS": "tests.support.effect_tap",
    "HC_RETRY_DELAYS": "0.5,1,2,4,8,8",
    "HC_SHUTDOWN_GRACE": "5",
    "HC_PREFETCH": "16",
}


@dataclass
class System:
    """Gateways and workers as processes, and the accounting harness that plays the platform against them."""

    tmp_path: Path
    amqp_url: str = AMQP_URL
    gateways: list[Process] = field(default_factory=list)
    gateway_ports: list[int] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        private, _ = generate_keys(self.tmp_path)
        self.key = load_private_key(private)

    async def start_gateway(self, **env: str) -> Process:
        port = free_port()
        settings = {"HC_AMQP_URL": self.amqp_url, "HC_PUBLISH_TIMEOUT": "2", "HC_DRAIN_SECONDS": "1", **env}
        process = gateway_process(self.tmp_path, port, settings, name=f"gateway-{len(self.gateways)}")
        self.gateways.append(process)
        self.gateway_ports.append(port)
        await asyncio.to_thread(wait_until_ready, port, 30)
        return process

    def start_worker(self, **env: str) -> Process:
        settings = {**WORKER_ENV, "HC_AMQP_URL": self.amqp_url, **env}
        process = worker_process(self.tmp_path, "--all", env=settings, name=f"worker-{len(self.workers)}")
        self.workers.append(process)
        return process

    async def wait_consuming(self, process: Process, timeout: float = 30) -> None:
        for _ in range(int(timeout * 10)):
            if process.events(event="consuming"):
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the worker did not start consuming")

    def urls(self, ports: list[int] | None = None) -> list[str]:
        return [f"http://127.0.0.1:{port}/hc_sync/common" for port in ports or self.gateway_ports]

    async def play(self, count: int, rate: float, fault=None, fault_after: float = 1.0, urls=None):
        events = make_events(count, run=uuid.uuid4().hex[:10])
        player = PlatformPlayer(urls or self.urls(), self.key, rate)

        async def fault_later():
            await asyncio.sleep(fault_after)
            await fault()

        tasks = [player.play(events)] + ([fault_later()] if fault else [])
        await asyncio.gather(*tasks)
        return events, player

    async def account(self, events, player, settle: float = 90) -> Report:
        killed = {worker.popen.pid for worker in self.workers if worker.popen.returncode == -signal.SIGKILL}
        report = await account(events, DATABASE_URL, player.resent, settle, killed)
        print(f"\n[harness] {report.line()}")
        return report

    def stop(self) -> None:
        for process in [*self.gateways, *self.workers]:
            process.stop()

    def assert_no_secret_logged(self) -> None:
        """The harness's events carry the samples' e-mail, mobile number and one-time code: none may be logged."""
        for process in [*self.gateways, *self.workers]:
            output = process.output
            for secret in SAMPLE_SECRETS:
                assert secret not in output, f"{secret!r} reached {process.log_path.name}"


@pytest.fixture
async def system(tmp_path, amqp) -> AsyncIterator[System]:
    await reset_database()
    system = System(tmp_path)
    yield system
    system.stop()
    system.assert_no_secret_logged()
    # Whatever a fault test did, the machine's services are up again for the next test.
    await asyncio.to_thread(rabbitmq_start)
    await asyncio.to_thread(postgres_start)
    os.environ.pop("HC_TEST_FAULT", None)
