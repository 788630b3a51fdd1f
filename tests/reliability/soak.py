"""Soak: gateway and workers under a steady rate for minutes, memory and queue depth sampled, every event counted.

    .venv/bin/python -m tests.reliability.soak --minutes 10 --rate 200

Prints a sample line every 30 s and a summary: RSS of gateway and workers (start, end, max), queue depth, and the
accounting harness's line (lost and double effects must be 0)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.system import AMQP_URL, peak_rss_mb, process_tree, purge, queue_depth
from gateway.send_cli import generate_keys, load_private_key
from tests.support.database import DATABASE_URL, reset_database
from tests.support.harness import PlatformPlayer, account, make_events
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import gateway_process, worker_process


def rss_mb(pid: int) -> float:
    total = 0.0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        total = max(total, int(status.split("VmRSS:")[1].split()[0]) / 1024)
    return total


async def soak(minutes: float, rate: float, workers: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hypercard-soak-"))
    private, _ = generate_keys(folder)
    await reset_database()
    await purge()
    port = free_port()
    gateway = gateway_process(folder, port, {"HC_AMQP_URL": AMQP_URL, "HC_LOG_LEVEL": "warning"})
    env = {"HC_HANDLERS": "tests.support.effect_tap", "HC_DATABASE_URL": DATABASE_URL, "HC_LOG_LEVEL": "warning"}
    worker_processes = [worker_process(folder, "--all", env=env, name=f"worker-{n}") for n in range(workers)]
    samples: list[tuple[float, float, float, int]] = []
    try:
        await asyncio.to_thread(wait_until_ready, port, 30)
        await asyncio.sleep(3)
        events = make_events(int(minutes * 60 * rate), run=f"soak-{uuid.uuid4().hex[:8]}")
        player = PlatformPlayer([f"http://127.0.0.1:{port}/hc_sync/common"], load_private_key(private), rate)
        started = time.monotonic()

        async def sample() -> None:
            while True:
                worker_rss = max(rss_mb(w.popen.pid) for w in worker_processes)
                samples.append((time.monotonic() - started, rss_mb(gateway.popen.pid), worker_rss, await queue_depth()))
                if len(samples) % 6 == 1:
                    t, g, w, q = samples[-1]
                    print(f"  t={t:5.0f}s gateway {g:5.1f} MB  worker {w:5.1f} MB  queued {q}", file=sys.stderr)
                await asyncio.sleep(5)

        sampler = asyncio.create_task(sample())
        await player.play(events)
        sampler.cancel()
        report = await account(events, DATABASE_URL, player.resent, settle=120)
        peaks = (peak_rss_mb(gateway.popen.pid), max(peak_rss_mb(w.popen.pid) for w in worker_processes))
    finally:
        gateway.stop()
        for worker in worker_processes:
            worker.stop()
    first, last = samples[1], samples[-1]  # the first sample is taken before any load
    print(f"soak: {minutes:g} min at {rate:g} events/s, {workers} worker processes")
    print(f"gateway RSS: {first[1]:.1f} MB after 5 s, {last[1]:.1f} MB at the end, peak {peaks[0]:.1f} MB")
    print(f"worker RSS:  {first[2]:.1f} MB after 5 s, {last[2]:.1f} MB at the end, peak {peaks[1]:.1f} MB")
    print(f"queue depth: max {max(s[3] for s in samples)}, at the end {last[3]}")
    print(f"accounting:  {report.line()}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(soak(args.minutes, args.rate, args.workers))


if __name__ == "__main__":
    main()
