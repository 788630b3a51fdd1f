"""Randomized campaign: rounds of random worker settings and handler failures, each through one fault, every event
counted by the accounting harness (tests/support/harness.py).

    .venv/bin/python -m tests.reliability.campaign --rounds 20 --seed 7
    .venv/bin/python -m tests.reliability.campaign --rounds 6 --faults link,worker_kill,gateway_term

Each round draws, from its own seed, HC_BATCH_SIZE (1, 8 or 32), HC_PREFETCH (1-64), the share of events whose
first attempt fails (0-30 %, tests/support/flaky_handlers.py), 200-400 events at 40-80 events/s and when the fault
strikes; the faults take turns. It plays the platform through two gateways and one worker, counts, and prints one
line. Round n of seed S has seed S+n-1: `--seed <a line's seed> --rounds 1 --faults <its fault>` replays it.
Exits non-zero if any round lost an event, had a double effect, or did not finish (events never accepted,
timeout, error). broker_restart and postgres_down stop the machine's RabbitMQ or PostgreSQL (started again in any
case): they disturb whoever else uses them."""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg

from infra import declare
from schemas import topology
from schemas.events import KNOWN_KINDS
from tests.support.broker import AMQP_URL, TEST_VHOST, ensure_test_vhost
from tests.support.database import DATABASE_URL, reset_database
from tests.support.deployment import FAULTS, RESTORE, Deployment, fault_action
from tests.support.flaky_handlers import fails_first_attempt
from tests.support.harness import Event, PlatformPlayer, Report, account, dead_letters, effects, make_events
from tests.support.tcp_proxy import TcpProxy

RETRY_DELAYS = (0.2, 0.4, 0.8)  # short, so a failed first attempt is retried well within the settle time
BROKER_LOG = Path("/var/log/rabbitmq/rabbit@localhost.log")  # the machine's broker (Debian package)
HEADER = (
    f"{'round':>5} {'seed':>10} {'batch':>5} {'prefetch':>8} {'fail%':>5} {'fault':<14} {'sent':>5} "
    f"{'accepted':>8} {'resent':>6} {'handled':>7} {'lost':>4} {'double':>6} {'retried':>7} {'seconds':>7}  note"
)


@dataclass(frozen=True)
class Round:
    number: int
    seed: int
    batch_size: int
    prefetch: int
    fail_percent: int
    fault: str
    events: int
    rate: float
    fault_after: float

    @classmethod
    def draw(cls, number: int, seed: int, faults: list[str]) -> Round:
        rng = random.Random(seed)
        events, rate = rng.randint(200, 400), rng.uniform(40, 80)
        return cls(
            number=number,
            seed=seed,
            batch_size=rng.choice((1, 8, 32)),
            prefetch=rng.randint(1, 64),
            fail_percent=rng.randint(0, 30),
            fault=faults[seed % len(faults)],  # the faults take turns; one fault given replays the round
            events=events,
            rate=rate,
            fault_after=rng.uniform(1.0, max(1.5, 0.6 * events / rate)),
        )

    @property
    def worker_env(self) -> dict[str, str]:
        return {
            "HC_HANDLERS": "tests.support.flaky_handlers",
            "HYPERCARD_TEST_FAIL_RATE": str(self.fail_percent / 100),
            "HC_BATCH_SIZE": str(self.batch_size),
            "HC_PREFETCH": str(self.prefetch),
            "HC_RETRY_DELAYS": ",".join(map(str, RETRY_DELAYS)),
            "HC_SHUTDOWN_GRACE": "5",
        }


async def empty_queues() -> None:
    """The topology declared, every queue of the tests' vhost a round uses purged."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await declare.declare_core(channel)
        names = [topology.UNROUTED_QUEUE, topology.INVALID_QUEUE, topology.UNVERIFIED_QUEUE]
        for kind in sorted(KNOWN_KINDS):
            await declare.declare_kind(channel, kind, retry_delays=RETRY_DELAYS)
            names += [topology.kind_queue(kind), topology.dead_queue(kind)]
            names += [topology.retry_queue(kind, delay) for delay in RETRY_DELAYS]
        for name in names:
            await (await channel.get_queue(name, ensure=False)).purge()
    finally:
        await connection.close()


async def waiting_messages() -> int:
    """Messages in the kinds' queues and retry queues, those a retry queue holds in its at-least-once dead-letter
    state included (RabbitMQ's `messages` counts them, a passive declare's count does not): 0 once the workers have
    nothing left to do."""
    names = {topology.kind_queue(kind) for kind in KNOWN_KINDS}
    names |= {topology.retry_queue(kind, delay) for kind in KNOWN_KINDS for delay in RETRY_DELAYS}
    command = ["rabbitmqctl", "-q", "list_queues", "-p", TEST_VHOST, "--no-table-headers", "name", "messages"]
    listing = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    total = 0
    for line in listing.stdout.splitlines():
        name, _, count = line.partition("\t")
        if name in names and count.strip().isdigit():
            total += int(count)
    return total


async def retried_effects() -> int:
    """Effects written by a retry (attempt 2 or later): the first attempts the handlers failed, then handled."""
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        return await connection.fetchval("SELECT count(*) FROM test_effects WHERE attempt > 1")
    finally:
        await connection.close()


def broker_log_size() -> int:
    return BROKER_LOG.stat().st_size if BROKER_LOG.exists() else 0


def channel_errors(since: int) -> int:
    """Channels the broker closed with an error (406 PRECONDITION_FAILED for an unknown delivery tag, ...) in the
    tests' vhost, from its log after offset `since`: a worker's ack bookkeeping gone wrong shows here first."""
    if not BROKER_LOG.exists():
        return 0
    with BROKER_LOG.open("rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return sum(1 for row in text.splitlines() if "Channel error" in row and f"vhost: '{TEST_VHOST}'" in row)


def findings(events: list[Event], seen: Counter) -> str:
    """The events answered code 1 and never handled, or handled twice: where to start reading the logs."""
    lost = [f"lost {e.kind} {e.event_id}\n" for e in events if e.accepted and e.event_id not in seen]
    doubled = [
        f"doubled {e.kind} {e.event_id}\n"
        for e in events
        if e.accepted and e.kind != "CONSUME" and seen.get(e.event_id, 0) > 1
    ]
    return "".join(lost + doubled)


async def play_round(spec: Round, folder: Path, notes: list[str]) -> tuple[Report, int]:
    await reset_database()
    await empty_queues()
    log_offset = await asyncio.to_thread(broker_log_size)
    proxy = await TcpProxy().start() if spec.fault == "link" else None
    deployment = Deployment(folder, proxy.url if proxy else AMQP_URL, spec.worker_env)
    try:
        await deployment.start()
        events = make_events(spec.events, run=f"campaign-{spec.seed}")
        expected_failures = sum(fails_first_attempt(e.event_id, spec.fail_percent / 100) for e in events)
        player = PlatformPlayer(deployment.urls, deployment.key, spec.rate)
        fault = fault_action(spec.fault, deployment, proxy, notes)

        async def fault_later() -> None:
            await asyncio.sleep(spec.fault_after)
            await fault()

        await asyncio.gather(player.play(events), fault_later())
        await account(events, DATABASE_URL, player.resent, settle=45)
        # Retries and redeliveries still under way: up to 150 s, because a retry copy that was dead-lettering when
        # the broker stopped waits in RabbitMQ's at-least-once dead-letter state until the broker sends it again,
        # after its confirm timeout (2 minutes by default).
        for _ in range(150):
            if not await waiting_messages():
                break
            await asyncio.sleep(1)
        report = await account(events, DATABASE_URL, player.resent, settle=0)  # what came late is counted too
        if report.lost or report.double_effects:
            text = findings(events, await effects(DATABASE_URL))
            await asyncio.to_thread((folder / "findings.txt").write_text, text)
        if dead := await dead_letters():
            notes.append(f"{dead} dead letters")
        if report.never_accepted:
            notes.append(f"{report.never_accepted} never accepted")
        notes.append(f"{expected_failures} first attempts failed by design")
        retried = await retried_effects()
    finally:
        deployment.stop()
        if proxy is not None:
            await proxy.close()
    # Nothing is left once every event is handled: a message here was held unacked until the worker stopped.
    if errors := await asyncio.to_thread(channel_errors, log_offset):
        notes.append(f"{errors} channels closed by the broker")
    if left := await waiting_messages():
        notes.append(f"{left} messages queued after the workers stopped")
    return report, retried


def line(spec: Round, report: Report | None, retried: int, seconds: float, notes: list[str]) -> str:
    counts = (
        f"{report.sent:>5} {report.accepted:>8} {report.resent:>6} {report.handled:>7} {report.lost:>4} "
        f"{report.double_effects:>6} {retried:>7}"
        if report
        else f"{'-':>5} {'-':>8} {'-':>6} {'-':>7} {'-':>4} {'-':>6} {'-':>7}"
    )
    return (
        f"{spec.number:>5} {spec.seed:>10} {spec.batch_size:>5} {spec.prefetch:>8} {spec.fail_percent:>5} "
        f"{spec.fault:<14} {counts} {seconds:>7.1f}  {'; '.join(notes)}"
    )


async def campaign(rounds: int, seed: int, faults: list[str], round_timeout: float) -> int:
    """Plays the rounds; returns how many failed."""
    ensure_test_vhost()
    print(f"campaign: {rounds} rounds, seed {seed}, faults {','.join(faults)}", flush=True)
    print(HEADER, flush=True)
    failed = 0
    for number in range(1, rounds + 1):
        spec = Round.draw(number, seed + number - 1, faults)
        folder = Path(tempfile.mkdtemp(prefix=f"hypercard-campaign-{spec.seed}-"))
        notes: list[str] = []
        report, retried = None, 0
        started = time.monotonic()
        try:
            report, retried = await asyncio.wait_for(play_round(spec, folder, notes), round_timeout)
        except TimeoutError:
            notes.insert(0, f"TIMEOUT after {round_timeout:g} s")
        except Exception as error:  # a round that breaks is reported and the campaign goes on
            notes.insert(0, f"ERROR {type(error).__name__}: {error}")
        finally:
            if spec.fault in RESTORE:  # whatever happened, the service is up again for the next round
                await asyncio.to_thread(RESTORE[spec.fault])
        ok = report is not None and report.lost == 0 and report.double_effects == 0 and report.never_accepted == 0
        if ok:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            failed += 1
            notes.append(f"FAILED, logs in {folder}")
        print(line(spec, report, retried, time.monotonic() - started, notes), flush=True)
    print(f"campaign: {rounds - failed} of {rounds} rounds with every event handled once, {failed} failed", flush=True)
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.campaign", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="the first round's seed (default: from the clock)")
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated, taking turns (default: {','.join(FAULTS)})"
    )
    parser.add_argument("--round-timeout", type=float, default=300, help="seconds before a round counts as failed")
    args = parser.parse_args()
    faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    if unknown := sorted(set(faults) - set(FAULTS)):
        parser.error(f"unknown fault {', '.join(unknown)}: choose among {', '.join(FAULTS)}")
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    sys.exit(1 if asyncio.run(campaign(args.rounds, seed, faults, args.round_timeout)) else 0)


if __name__ == "__main__":
    main()
