"""Rotating the platform key as the README says, on a running `hypercard-gateway` under steady load: add the new
key to the file, SIGHUP, remove the old one, SIGHUP. No restart, and no push signed by a key in the file refused."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.send_cli import signed_headers
from gateway.signature import fingerprint
from schemas.samples import sample_body
from tests.support.keys import new_key, write_public_keys
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import Process, gateway_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker
BODY = sample_body("recharge")
CONCURRENCY = 8


def replace_key_file(path: Path, *keys: rsa.RSAPrivateKey) -> None:
    """Write the new file beside the old one and rename it over it, as an operator's deploy tool does: a process
    that reads the file reads the old one or the new one, never half of one."""
    write_public_keys(path.with_suffix(".new"), *keys)
    os.replace(path.with_suffix(".new"), path)


class SteadyLoad:
    """CONCURRENCY clients pushing signed events without pause; each push is signed by one of the keys of
    `signing`, which the test changes as it goes, and its key and reply are recorded."""

    def __init__(self, port: int, keys: dict[str, rsa.RSAPrivateKey]) -> None:
        self.url = f"http://127.0.0.1:{port}/hc_sync/common"
        self.keys = keys
        self.signing: list[str] = []
        self.replies: list[tuple[str, str, int]] = []  # (phase, key name, HTTP status)
        self.phase = ""
        self.in_flight: Counter[str] = Counter()  # pushes sent and not yet answered, by key name
        self._stop = asyncio.Event()

    async def _client(self, session: aiohttp.ClientSession, n: int) -> None:
        sent = n
        while not self._stop.is_set():
            if not self.signing:
                await asyncio.sleep(0.01)
                continue
            phase, name = self.phase, self.signing[sent % len(self.signing)]
            sent += 1
            headers = {**signed_headers(self.keys[name], BODY, "merchant-1"), "Content-Type": "application/json"}
            self.in_flight[name] += 1
            async with session.post(self.url, data=BODY, headers=headers) as reply:
                answer = await reply.json()
            self.in_flight[name] -= 1
            assert (reply.status == 200) == (answer["code"] == 1)
            self.replies.append((phase, name, reply.status))

    async def run_until(self, phase: str, signing: list[str], count: int) -> None:
        """Push with `signing` until `count` replies of this phase are in."""
        self.phase, self.signing = phase, signing
        await eventually(lambda: self._replied(phase, count), timeout=60)

    async def _replied(self, phase: str, count: int) -> bool:
        return sum(p == phase for p, _, _ in self.replies) >= count

    async def stop_signing_with(self, name: str) -> None:
        """From now on the other keys sign, and every push `name` signed is answered."""
        self.signing = [key for key in self.signing if key != name]

        async def answered() -> bool:
            return self.in_flight[name] == 0

        await eventually(answered)

    def statuses(self, phase: str) -> Counter[tuple[str, int]]:
        return Counter((name, status) for p, name, status in self.replies if p == phase)

    async def __aenter__(self) -> SteadyLoad:
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._client(self._session, n)) for n in range(CONCURRENCY)]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()


def reloaded(gateway: Process, fingerprints: list[str]) -> int:
    """How many gateway processes logged a reload that left exactly these keys in use (SIGHUP, or the file watch
    if it saw the change first)."""
    return len({line["pid"] for line in gateway.events(event="platform keys reloaded", fingerprints=fingerprints)})


def key_verifications(metrics_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        exposition = reply.read().decode()
    pattern = r'^hypercard_gateway_signature_key_verifications_total\{fingerprint="(.*)"\} (.*)$'
    return {name: float(count) for name, count in re.findall(pattern, exposition, re.M)}


@pytest.mark.parametrize("processes", [1, 2])
async def test_the_key_rotates_under_load_and_no_genuine_push_is_refused(tmp_path, amqp, processes):
    keys = {"old": new_key(), "new": new_key()}
    old, new = (fingerprint(keys[name].public_key()) for name in ("old", "new"))
    key_file = tmp_path / "platform-public.pem"
    replace_key_file(key_file, keys["old"])
    port, metrics_port = free_port(), free_port()
    gateway = gateway_process(
        tmp_path, port, {"HC_PROCESSES": str(processes), "HC_GATEWAY_METRICS_PORT": str(metrics_port)}
    )
    try:
        await asyncio.to_thread(wait_until_ready, port)
        loaded = gateway.events(event="platform keys loaded")
        assert len({line["pid"] for line in loaded}) >= processes
        assert all(line["fingerprints"] == [old] for line in loaded)

        async def every_process_reloaded(fingerprints: list[str]) -> bool:
            return reloaded(gateway, fingerprints) == processes

        async with SteadyLoad(port, keys) as load:
            await load.run_until("before", ["old"], 100)

            # 1. The new key added beside the old one, SIGHUP: the old key's pushes go on while every process reloads.
            replace_key_file(key_file, keys["old"], keys["new"])
            load.phase = "adding"
            gateway.signal(signal.SIGHUP)
            await eventually(lambda: every_process_reloaded([old, new]))

            await load.run_until("both", ["old", "new"], 200)

            # 2. The old key removed, SIGHUP: from the moment it is no longer in the file only the new key signs.
            await load.stop_signing_with("old")
            replace_key_file(key_file, keys["new"])
            load.phase = "removing"
            gateway.signal(signal.SIGHUP)
            await eventually(lambda: every_process_reloaded([new]))

            counts_after_removal = await asyncio.to_thread(key_verifications, metrics_port)
            await load.run_until("after", ["old", "new"], 200)

        for phase in ("before", "adding", "both", "removing"):
            refused = {key: n for (key, status), n in load.statuses(phase).items() if status != 200}
            assert not refused, f"genuine pushes refused while {phase}: {refused}"
        after = load.statuses("after")
        assert set(after) == {("old", 401), ("new", 200)}, after
        assert load.statuses("both")[("new", 200)] > 0

        # The old key's count stopped growing at the removal, the new one's went on; together they count every push.
        final = await asyncio.to_thread(key_verifications, metrics_port)
        assert final[old] == counts_after_removal[old] > 0
        assert final[new] >= counts_after_removal[new] + after[("new", 200)]
        assert final[old] + final[new] == sum(status == 200 for _, _, status in load.replies)
        assert gateway.popen.poll() is None, "the gateway restarted or died"
    finally:
        gateway.stop()
    assert gateway.popen.returncode == 0


async def test_a_key_file_that_does_not_load_on_sighup_keeps_the_keys_in_use(tmp_path, amqp):
    key = new_key()
    key_file = tmp_path / "platform-public.pem"
    replace_key_file(key_file, key)
    port = free_port()
    gateway = gateway_process(tmp_path, port)
    try:
        await asyncio.to_thread(wait_until_ready, port)
        key_file.write_text("-----BEGIN PUBLIC KEY-----\nhalf a key, as an editor saved it\n")
        gateway.signal(signal.SIGHUP)

        async def refused_reload() -> list[dict]:
            return gateway.events(event="platform keys NOT reloaded: the keys in use are kept; fix the file and "
                                  "reload again", level="error")  # fmt: skip

        (error,) = await eventually(refused_reload)
        assert error["fingerprints"] == [fingerprint(key.public_key())] and error["cause"] == "SIGHUP"
        headers = {**signed_headers(key, BODY, "merchant-1"), "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/hc_sync/common", data=BODY, headers=headers) as reply:
                assert reply.status == 200 and (await reply.json())["code"] == 1
        assert gateway.popen.poll() is None
    finally:
        gateway.stop()
