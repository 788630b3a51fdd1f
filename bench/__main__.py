"""The benchmark: the gateway next to its floor and its peer, measured in one run on this machine. Prints a table.

    .venv/bin/python -m bench                 # everything (under 5 minutes; `make bench` installs wrk and the peer)
    .venv/bin/python -m bench --seconds 5 --e2e-seconds 20

Compared in the same run: the essential work alone (bench/essential.py: the floor), the gateway, and what a user
would write instead (bench/fastapi_peer.py, FastAPI + pydantic + aio-pika, no signature). The machines are shared
and noisy: read the ratios, measured side by side, rather than the absolute figures.

Load comes from a separate process: wrk, with pre-signed requests (the nine samples for throughput, distinct
events for the latency and end-to-end phases, paced by random gaps to a fixed offered rate)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.signed import sample_requests, unique_requests, write_wrk_script
from bench.system import (
    AMQP_URL,
    bench_vhost,
    cpu_seconds,
    handled_total,
    peak_rss_mb,
    pids_named,
    process_tree,
    purge,
    queue_depth,
    running,
    wait_ready_post,
)
from gateway.send_cli import generate_keys, load_private_key

DATABASE_URL = os.environ.get("HC_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
BIN = Path(sys.executable).parent
PORT = 18080
# HC_ID_SECRET of the gateways and workers of one run (a fresh one: nothing they derive outlives the run).
ID_SECRET = secrets.token_hex(32)


def wrk(script: Path, port: int, seconds: float, connections: int = 64) -> dict[str, float]:
    """Requests/s and latency percentiles (ms) of a wrk run; a refused request invalidates the run."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"wrk saw {non_2xx.group(1)} refused requests: the run is not valid\n{out}")
    latency = re.search(r"latency-ms p50 ([\d.]+) p99 ([\d.]+) p99.9 ([\d.]+)", out)
    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),
        "p50": float(latency.group(1)), "p99": float(latency.group(2)), "p99.9": float(latency.group(3)),
    }  # fmt: skip


def gateway_env(keys: Path, **extra: str) -> dict[str, str]:
    return {
        "HC_PORT": str(PORT),
        "HC_PLATFORM_PUBLIC_KEY": str(keys / "platform-public.pem"),
        "HC_AMQP_URL": AMQP_URL,
        "HC_DRAIN_SECONDS": "0",
        "HC_GATEWAY_METRICS_PORT": "0",
        "HC_ID_SECRET": ID_SECRET,
        **extra,
    }


@dataclass
class Throughput:
    rate: float  # requests/s
    cpu_us: float  # the server's CPU (its whole process tree) per request
    rss: float  # peak RSS, MB


def throughput(args: list[str], env: dict[str, str], script: Path, seconds: float, connections: int = 64,
               ready_path: str | None = "/readyz") -> Throughput:
    """One server under wrk: its rate and the CPU it spent per request (from /proc, over the run)."""
    with running(args, env, ready_port=PORT, ready_path=ready_path) as server:
        pids = process_tree(server.pid)
        before = cpu_seconds(pids)
        result = wrk(script, PORT, seconds, connections=connections)
        spent = cpu_seconds(pids) - before
        rss = peak_rss_mb(server.pid)
    asyncio.run(purge())
    return Throughput(result["rate"], spent / max(result["requests"], 1) * 1e6, rss)  # fmt: skip


def gateway_throughput(keys: Path, script: Path, seconds: float, processes: int) -> Throughput:
    env = gateway_env(keys, HC_PROCESSES=str(processes))
    return throughput([str(BIN / "hypercard-gateway")], env, script, seconds, connections=64 * processes)


def essential_throughput(keys: Path, script: Path, seconds: float) -> Throughput:
    args = [sys.executable, "-m", "bench.essential", str(PORT), str(keys / "platform-public.pem"), AMQP_URL]
    return throughput(args, {}, script, seconds, ready_path=None)


def peer_throughput(script: Path, seconds: float) -> Throughput | None:
    if importlib.util.find_spec("fastapi") is None:
        print("  FastAPI peer not installed (pip install -e '.[bench]'): skipped", file=sys.stderr)
        return None
    args = [sys.executable, "-m", "bench.fastapi_peer", str(PORT), AMQP_URL]
    return throughput(args, {}, script, seconds, ready_path=None)


def paced_script(keys: Path, rate: float, seconds: float, connections: int, tag: str) -> Path:
    key = load_private_key(keys / "platform-private.pem")
    count = int(rate * seconds * 1.2)
    print(f"  signing {count} distinct events...", file=sys.stderr)
    requests = unique_requests(key, count, tag=f"{tag}{time.time_ns()}-")
    return write_wrk_script(keys / f"{tag}.lua", requests, mean_gap_ms=connections / rate * 1000)


def latency_at(keys: Path, rate: float, seconds: float) -> dict[str, float]:
    """Request latency at a fixed offered rate, and the gateway's own share: each request's latency minus the
    broker's confirm wait, from the gateway's canonical log lines."""
    connections = 50
    script = paced_script(keys, rate, seconds, connections, "latency")
    log = keys / "latency-gateway.log"
    with running([str(BIN / "hypercard-gateway")], gateway_env(keys), ready_port=PORT, output=log):
        result = wrk(script, PORT, seconds, connections)
    asyncio.run(purge())
    own = sorted(
        line["latency_ms"] - line["confirm_ms"]
        for line in map(json.loads, filter(lambda text: text.startswith("{"), log.read_text().splitlines()))
        if line.get("event") == "request" and "confirm_ms" in line
    )
    result["own_p99"] = own[int(len(own) * 0.99)] if own else float("nan")
    result["own_p50"] = own[len(own) // 2] if own else float("nan")
    return result


def end_to_end(
    keys: Path, rate: float, seconds: float, workers: int, processes: int, tag: str, **worker_settings: str
) -> dict[str, object]:
    """The whole path at a fixed offered rate: accepted, handled, queue depth, CPU per handled event by process."""
    connections = 100
    script = paced_script(keys, rate, seconds, connections, tag)
    metrics_ports = [19100 + n for n in range(workers)]
    worker_env = {
        "HC_DATABASE_URL": DATABASE_URL, "HC_AMQP_URL": AMQP_URL, "HC_PREFETCH": "64", "HC_ID_SECRET": ID_SECRET,
        **worker_settings,
    }  # fmt: skip
    gateway = running([str(BIN / "hypercard-gateway")], gateway_env(keys, HC_PROCESSES=str(processes)), ready_port=PORT)
    worker_runs = [
        running(
            [str(BIN / "hypercard-worker"), "--all"],
            {**worker_env, "HC_METRICS_PORT": str(port), "HC_HEALTH_PORT": str(port + 100)}, port, "/metrics",
        )  # fmt: skip
        for port in metrics_ports
    ]
    with gateway as gateway_process:
        worker_processes = [run.__enter__() for run in worker_runs]
        try:
            before = asyncio.run(handled_total(metrics_ports))

            async def sample_depth(stop: asyncio.Event, depths: list[int]) -> None:
                while not stop.is_set():
                    depths.append(await queue_depth())
                    await asyncio.sleep(2)

            async def load_and_sample():
                depths: list[int] = []
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample_depth(stop, depths))
                started = time.perf_counter()
                result = await asyncio.to_thread(wrk, script, PORT, seconds, connections)
                elapsed = time.perf_counter() - started
                stop.set()
                await sampler
                handled_during = await handled_total(metrics_ports) - before
                # What is still queued when the load stops, and how long the workers take to finish it.
                drain_started = time.perf_counter()
                while await queue_depth() and time.perf_counter() - drain_started < 120:  # noqa: ASYNC110 - polls the broker
                    await asyncio.sleep(0.5)
                return result, elapsed, depths, handled_during, time.perf_counter() - drain_started

            def groups() -> dict[str, list[int]]:
                return {
                    "gateway": process_tree(gateway_process.pid),
                    "workers": [pid for p in worker_processes for pid in process_tree(p.pid)],
                    "rabbitmq": pids_named("beam.smp"),
                    "postgresql": pids_named("postgres"),  # its backends: one per worker connection
                }

            cpu_before = {pid: cpu_seconds([pid]) for pids in groups().values() for pid in pids}
            result, elapsed, depths, handled_during, drain = asyncio.run(load_and_sample())
            # Processes started during the run (new database backends) count from zero.
            cpu = {
                name: sum(cpu_seconds([pid]) - cpu_before.get(pid, 0.0) for pid in pids)
                for name, pids in groups().items()
            }
            rss_workers = max(peak_rss_mb(p.pid) for p in worker_processes)
            rss_gateway = peak_rss_mb(gateway_process.pid)
        finally:
            for run in reversed(worker_runs):
                run.__exit__(None, None, None)
    return {
        "accepted": result["requests"], "accepted_rate": result["rate"], "handled": handled_during,
        "seconds": elapsed, "rate": handled_during / elapsed, "depths": depths, "drain": drain,
        "rss_gateway": rss_gateway, "rss_worker": rss_workers, "p99": result["p99"], "cpu": cpu,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="length of each throughput phase")
    parser.add_argument("--rate", type=float, default=500, help="fixed rate of the latency phase")
    parser.add_argument("--e2e-rate", type=float, default=1500)
    parser.add_argument("--e2e-seconds", type=float, default=40, help="length of each end-to-end phase")
    parser.add_argument("--workers", type=int, default=2, help="worker processes in the end-to-end phase")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hypercard-bench-"))
    generate_keys(folder)
    script = write_wrk_script(
        folder / "samples.lua", sample_requests(load_private_key(folder / "platform-private.pem"))
    )
    with bench_vhost():
        run(args, folder, script)


def run(args: argparse.Namespace, folder: Path, script: Path) -> None:
    asyncio.run(purge())

    print("1/6 HTTP ceiling (bare aiohttp)", file=sys.stderr)
    with running([sys.executable, "-m", "bench.bare_app", str(PORT + 1)]):
        wait_ready_post(PORT + 1)
        http_ceiling = wrk(script, PORT + 1, args.seconds)["rate"]
    print("2/6 broker ceiling (confirmed publishes, no HTTP)", file=sys.stderr)
    broker_ceiling = float(
        subprocess.run(
            [sys.executable, "-m", "bench.broker_ceiling", str(args.seconds)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[0]
    )
    asyncio.run(purge())
    print("3/6 essential work, gateway (1 and 2 processes), FastAPI peer", file=sys.stderr)
    essential = essential_throughput(folder, script, args.seconds)
    one = gateway_throughput(folder, script, args.seconds, 1)
    two = gateway_throughput(folder, script, args.seconds, 2)
    peer = peer_throughput(script, args.seconds)
    print(f"4/6 latency at {args.rate:g} requests/s", file=sys.stderr)
    latency = latency_at(folder, args.rate, args.seconds)
    print(f"5/6 end to end at {args.e2e_rate:g} events/s for {args.e2e_seconds:g} s, workers batched, then each"
          " delivery in its own transaction (HC_BATCH_SIZE=1, as before batching)", file=sys.stderr)  # fmt: skip
    e2e = end_to_end(folder, args.e2e_rate, args.e2e_seconds, args.workers, 1, "e2e-batched")
    e2e_single = end_to_end(folder, args.e2e_rate, args.e2e_seconds, args.workers, 1, "e2e-single", HC_BATCH_SIZE="1")

    print_table(args, http_ceiling, broker_ceiling, essential, one, two, peer, latency, e2e, e2e_single)


def verdict(met: bool, target: str) -> str:
    return "met" if met else f"NOT met (target {target})"


def cpu_per_event(e2e: dict) -> dict[str, float]:
    """CPU microseconds per handled event, by process group."""
    return {name: seconds / max(e2e["handled"], 1) * 1e6 for name, seconds in e2e["cpu"].items()}


def e2e_rows(label: str, e2e: dict, offered: float) -> list[tuple[str, str, str, str]]:
    cpu = cpu_per_event(e2e)
    depths = e2e["depths"]
    return [
        (
            f"end to end, {label}",
            f"{e2e['rate']:,.0f} events/s",
            f"offered {offered:g}/s, accepted {e2e['accepted_rate']:,.0f}/s, handled {e2e['handled']:,.0f}",
            f"queue depth max {max(depths, default=0)}, {depths[:2]}..{depths[-2:]}",
        ),
        (
            "  CPU per handled event",
            "  ".join(f"{name} {us:,.0f} us" for name, us in cpu.items()),
            f"sum {sum(cpu.values()):,.0f} us",
            "",
        ),
    ]


def print_table(args, http_ceiling, broker_ceiling, essential, one, two, peer, latency, e2e, e2e_single) -> None:
    best = max(one.rate, two.rate)
    rss_gateway = max(one.rss, two.rss, e2e["rss_gateway"])
    worker_cpu = cpu_per_event(e2e)["workers"] / cpu_per_event(e2e_single)["workers"]
    throughput_gain = e2e["rate"] / max(e2e_single["rate"], 1)

    def ratios(rate: float) -> str:
        return f"{rate / broker_ceiling:.2f} of broker, {rate / http_ceiling:.2f} of HTTP"

    cpu_ratio = one.cpu_us / essential.cpu_us
    peer_rows = []
    if peer is not None:
        peer_rows = [
            ("FastAPI + pydantic + aio-pika peer", f"{peer.rate:,.0f} req/s", f"{peer.cpu_us:,.0f} us CPU/request", ""),
            ("gateway / peer throughput", f"{best / peer.rate:.2f}", "", verdict(best >= 1.6 * peer.rate, ">= 1.6")),
        ]
    rows = [
        ("HTTP ceiling (bare aiohttp)", f"{http_ceiling:,.0f} req/s", "", ""),
        ("broker ceiling (confirmed publishes)", f"{broker_ceiling:,.0f} msg/s", "", ""),
        ("essential work alone", f"{essential.rate:,.0f} req/s", f"{essential.cpu_us:,.0f} us CPU/request", ""),
        ("gateway, 1 process", f"{one.rate:,.0f} req/s", f"{one.cpu_us:,.0f} us CPU/request", ratios(one.rate)),
        ("gateway, 2 processes", f"{two.rate:,.0f} req/s", f"{two.cpu_us:,.0f} us CPU/request", ratios(two.rate)),
        ("gateway / essential CPU per request", f"{cpu_ratio:.2f}", "", verdict(cpu_ratio <= 1.2, "<= 1.2")),
        *peer_rows,
        (
            "gateway / broker ceiling",
            f"{best / broker_ceiling:.2f}",
            "",
            verdict(best >= 0.5 * broker_ceiling, ">= 0.50"),
        ),
        (
            f"latency at {args.rate:g} req/s",
            f"p50 {latency['p50']:.1f} ms  p99 {latency['p99']:.1f} ms  p99.9 {latency['p99.9']:.1f} ms",
            f"achieved {latency['rate']:,.0f}/s",
            "",
        ),
        (
            f"gateway's own latency at {args.rate:g} req/s",
            f"p50 {latency['own_p50']:.2f} ms  p99 {latency['own_p99']:.2f} ms",
            "request latency minus the broker's confirm wait",
            verdict(latency["own_p99"] <= 3, "p99 <= 3 ms"),
        ),
        *e2e_rows("workers batched (HTTP -> workers -> PostgreSQL)", e2e, args.e2e_rate),
        *e2e_rows("one delivery per transaction (HC_BATCH_SIZE=1)", e2e_single, args.e2e_rate),
        (
            "batched / one per transaction",
            f"events/s {throughput_gain:.2f}x",
            f"worker CPU per event {worker_cpu:.2f}x",
            f"events/s {verdict(throughput_gain >= 2, '>= 2x')}; worker CPU {verdict(worker_cpu <= 0.5, '<= 0.5x')}",
        ),
        (
            "peak RSS",
            f"gateway {rss_gateway:.0f} MB",
            f"worker {e2e['rss_worker']:.0f} MB",
            verdict(rss_gateway <= 150, "150 MB"),
        ),
    ]
    width = [max(len(row[i]) for row in rows) for i in range(4)]
    print("6/6 results", file=sys.stderr)
    for row in rows:
        print("  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip())


if __name__ == "__main__":
    main()
