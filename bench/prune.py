"""Inbox pruning under load: the workers' handling latency at a steady rate, without and then with a pruning round
deleting 1,000,000 expired inbox keys.

    .venv/bin/python -m bench.prune                  # about a minute
    .venv/bin/python -m bench.prune --rows 200000 --rate 300 --seconds 20
    HC_AMQP_URL=amqp://guest:guest@127.0.0.1:PORT/VHOST .venv/bin/python -m bench.prune   # another broker

A real `hypercard-worker RECHARGE` (its own process, its own pruning kept out of the way by a long interval)
handles distinct RECHARGE events published at a fixed rate straight to `hypercard.recharge` in the benchmark's vhost.
The expired keys are loaded with one generate_series statement. Phase 1: the load, the keys in place. Phase 2: the
same load for as long as this process runs `workers.retention.InboxPruner` over them (the code every worker runs,
the same advisory lock). Latency is per event, from its publish to the start of the transaction that handled it
(the inbox row's handled_at: same machine, same clock), and the worker's own delivery-to-ack latency from its
canonical log line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import asyncpg

from bench import system
from bench.system import bench_vhost, running
from schemas import topology
from workers import database
from workers.metrics import WorkerMetrics
from workers.retention import InboxPruner

# HC_AMQP_URL: another broker (its vhost made beforehand); by default the machine's, in the benchmark's vhost.
AMQP_URL = os.environ.get("HC_AMQP_URL", system.AMQP_URL)
DATABASE_URL = os.environ.get("HC_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/hypercard_bench_prune")
BIN = Path(sys.executable).parent
KIND = "RECHARGE"
METRICS_PORT = 19190
RETENTION_DAYS = 30


async def fresh_database() -> None:
    """The benchmark's own database, emptied and migrated."""
    server, _, name = DATABASE_URL.rpartition("/")
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        for row in await connection.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE 'hypercard_%'"):
            await connection.execute(f'DROP TABLE "{row["tablename"]}" CASCADE')
    finally:
        await connection.close()
    pool = await database.create_pool(DATABASE_URL, 1)
    await database.migrate(pool)
    await pool.close()


async def load_expired_keys(rows: int) -> float:
    """`rows` inbox keys handled 31 to 61 days ago, in one statement; the seconds it took."""
    started = time.perf_counter()
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        await connection.execute(
            """INSERT INTO hypercard_inbox (kind, idempotency_key, event_id, handled_at)
               SELECT 'RECHARGE', md5(n::text), 'expired-' || n,
                      now() - interval '31 days' - (n % 2592000) * interval '1 second'
               FROM generate_series(1, $1) AS n""",
            rows,
        )
        await connection.execute("ANALYZE hypercard_inbox")
    finally:
        await connection.close()
    return time.perf_counter() - started


async def publish_at(rate: float, seconds: float, tag: str, stop: asyncio.Event | None = None) -> dict[str, float]:
    """Distinct RECHARGE events at `rate` per second for `seconds` (or until `stop` once `seconds` passed); the
    publish time of each event id."""
    connection = await aio_pika.connect(AMQP_URL)
    sent: dict[str, float] = {}
    try:
        channel = await connection.channel(publisher_confirms=True)
        started = time.time()
        n = 0
        while time.time() - started < seconds or (stop is not None and not stop.is_set()):
            due = started + n / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            event_id = f"{tag}-{n}"
            body = {"notify_type": KIND, "card_id": "0000345432340000", "mc_trade_no": event_id, "result": "1"}
            headers = {"notify_type": KIND, "event_id": event_id,
                       "received_at": datetime.now(UTC).isoformat(timespec="milliseconds")}  # fmt: skip
            sent[event_id] = time.time()
            await channel.default_exchange.publish(
                aio_pika.Message(json.dumps(body).encode(), headers=headers, content_type="application/json",
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=topology.kind_queue(KIND),
            )  # fmt: skip
            n += 1
    finally:
        await connection.close()
    return sent


async def handled_latencies(sent: dict[str, float], timeout: float = 60) -> list[float]:
    """Milliseconds from each publish to the start of the transaction that handled it, once all are handled."""
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await connection.fetch(
                "SELECT event_id, extract(epoch FROM handled_at) AS at FROM hypercard_inbox WHERE event_id = ANY($1)",
                list(sent),
            )
            if len(rows) == len(sent) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        await connection.close()
    if len(rows) < len(sent):
        raise SystemExit(f"only {len(rows)} of {len(sent)} events handled: the run is not valid")
    return sorted((float(row["at"]) - sent[row["event_id"]]) * 1000 for row in rows)


def percentile(values: list[float], share: float) -> float:
    return values[min(len(values) - 1, int(len(values) * share))] if values else float("nan")


def worker_latencies(log: Path, tag: str) -> list[float]:
    lines = (json.loads(text) for text in log.read_text().splitlines() if text.startswith("{"))
    return sorted(
        line["latency_ms"] for line in lines
        if line.get("event") == "message" and str(line.get("event_id", "")).startswith(f"{tag}-")
    )  # fmt: skip


async def with_pruning(rate: float) -> tuple[dict[str, float], dict[str, float]]:
    """The load while a pruning round runs, from its start to its end."""
    stop = asyncio.Event()
    pruner = InboxPruner(DATABASE_URL, WorkerMetrics(), retention_days=RETENTION_DAYS)

    async def prune() -> dict[str, float]:
        started = time.perf_counter()
        done = await pruner.prune_once()
        stop.set()
        if done is None:
            raise SystemExit("another pruner holds the lock: the run is not valid")
        return {"rows": done.rows, "batches": done.batches, "seconds": time.perf_counter() - started}

    sent, pruned = await asyncio.gather(publish_at(rate, 0, "pruning", stop), prune())
    return sent, pruned


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prune", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="expired inbox keys to prune")
    parser.add_argument("--rate", type=float, default=300, help="events per second")
    parser.add_argument("--seconds", type=float, default=30, help="length of the phase without pruning")
    args = parser.parse_args()
    asyncio.run(fresh_database())
    log = Path(tempfile.mkdtemp(prefix="bench-prune-")) / "worker.log"
    env = {
        "HC_DATABASE_URL": DATABASE_URL, "HC_AMQP_URL": AMQP_URL, "HC_METRICS_PORT": str(METRICS_PORT),
        "HC_INBOX_RETENTION_DAYS": str(RETENTION_DAYS), "HC_INBOX_PRUNE_INTERVAL": "86400",
    }  # fmt: skip
    # The benchmark's vhost, made and deleted around the run; another broker's vhost is the caller's to make.
    vhost = bench_vhost(declare_topology=False) if AMQP_URL == system.AMQP_URL else contextlib.nullcontext()
    with vhost, running([str(BIN / "hypercard-worker"), KIND], env, METRICS_PORT, "/metrics", output=log):
        asyncio.run(wait_consuming())  # and its start-up pruning round has found the inbox empty
        loaded = asyncio.run(load_expired_keys(args.rows))
        baseline = asyncio.run(publish_at(args.rate, args.seconds, "baseline"))
        base = asyncio.run(handled_latencies(baseline))
        sent, pruned = asyncio.run(with_pruning(args.rate))
        during = asyncio.run(handled_latencies(sent))
    print(f"inbox: {args.rows:,} expired keys loaded in {loaded:.1f} s; load {args.rate:.0f} events/s")
    rows = [("without pruning", baseline, base, "baseline"), ("while pruning", sent, during, "pruning")]
    for label, events, latencies, tag in rows:
        own = worker_latencies(log, tag)
        print(
            f"{label:16} {len(events):6,} events  publish->handled p50 {percentile(latencies, 0.5):6.1f} ms"
            f"  p99 {percentile(latencies, 0.99):6.1f} ms  max {latencies[-1]:7.1f} ms"
            f"  | worker delivery->ack p99 {percentile(own, 0.99):6.1f} ms"
        )
    print(
        f"pruning round: {pruned['rows']:,.0f} keys in {pruned['batches']:,.0f} batches, {pruned['seconds']:.1f} s"
        f" ({pruned['rows'] / pruned['seconds']:,.0f} keys/s)"
    )


async def wait_consuming(timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    connection = await aio_pika.connect(AMQP_URL)
    try:
        while True:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(topology.kind_queue(KIND), passive=True)
                if queue.declaration_result.consumer_count:
                    await (await channel.declare_queue(topology.kind_queue(KIND), passive=True)).purge()
                    return
            except aio_pika.exceptions.ChannelClosed:
                pass  # not declared yet
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not start consuming")
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


if __name__ == "__main__":
    main()
