"""Randomized campaign: rounds of random worker settings and handler failures, each through one fault, every event
and every effect outside the database counted by the accounting harness (tests/support/harness.py).

    .venv/bin/python -m tests.reliability.campaign --rounds 20 --seed 7
    .venv/bin/python -m tests.reliability.campaign --rounds 6 --faults link,worker_kill,gateway_term

Each round draws, from its own seed, HC_BATCH_SIZE (1, 8 or 32), HC_PREFETCH (1-64), the share of events whose
first attempt fails (0-30 %, tests/support/flaky_handlers.py), how half of those fail (a misbehaving handler: one
that commits or rolls back the worker's transaction, raises a BaseException or a CancelledError of its own, or hangs
past HC_HANDLER_TIMEOUT; the other half raise a RuntimeError), 200-400 events at 40-80 events/s and when the fault
strikes; the faults take turns. Every handling also hands the worker a call outside the database
(tests/support/effect_tap.py), counted per event. It plays the platform through two gateways and one worker, counts,
and prints one line. Round n of seed S has seed S+n-1: `--seed <a line's seed> --rounds 1 --faults <its fault>`
replays it. Exits non-zero if any round lost an event, had a double effect, lost or doubled a call outside the
database, had a channel closed by the broker, or did not finish (events never accepted, timeout, error).
broker_restart and postgres_down stop the machine's RabbitMQ or PostgreSQL (started again in any case): they disturb
whoever else uses them."""

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
from tests.support.broker_log import BrokerLog
from tests.support.database import DATABASE_URL, reset_database
from tests.support.deployment import FAULTS, RESTORE, Deployment, fault_action
from tests.support.flaky_handlers import MISBEHAVIOURS, fails_first_attempt, misbehaves
from tests.support.harness import (
    Event,
    PlatformPlayer,
    Report,
    account,
    calls_allowed,
    counted_calls,
    dead_letters,
    effects,
    external_calls,
    make_events,
)
from tests.support.tcp_proxy import TcpProxy

RETRY_DELAYS = (0.2, 0.4, 0.8)  # short, so a failed first attempt is retried well within the settle time
HANDLER_TIMEOUT = 1.0  # what a hanging handler runs into; the others take milliseconds
HEADER = (
    f"{'round':>5} {'seed':>10} {'batch':>5} {'prefetch':>8} {'fail%':>5} {'misbehave':<14} {'fault':<14} "
    f"{'sent':>5} {'accepted':>8} {'resent':>6} {'handled':>7} {'lost':>4} {'double':>6} {'ext-lost':>8} "
    f"{'ext-double':>10} {'retried':>7} {'seconds':>7}  note"
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
    misbehave: str

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
            misbehave=rng.choice(MISBEHAVIOURS),  # drawn last: the other draws of a seed stay what they were
        )

    @property
    def worker_env(self) -> dict[str, str]:
        return {
            "HC_HANDLERS": "tests.support.flaky_handlers",
            "HYPERCARD_TEST_FAIL_RATE": str(self.fail_percent / 100),
            "HYPERCARD_TEST_MISBEHAVE": self.misbehave,
            "HC_HANDLER_TIMEOUT": str(HANDLER_TIMEOUT),
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


def findings(events: list[Event], seen: Counter, calls: dict[str, list[tuple[str, int]]], killed: set[int]) -> str:
    """The events answered code 1 and never handled, or handled twice, or whose call outside the database was lost
    or made twice: where to start reading the logs."""
    accepted = [e for e in events if e.accepted]
    lost = [f"lost {e.kind} {e.event_id}\n" for e in accepted if e.event_id not in seen]
    doubled = [f"doubled {e.kind} {e.event_id}\n" for e in accepted if e.kind != "CONSUME" and seen[e.event_id] > 1]
    wrong_calls = []
    for e in accepted:
        made = calls.get(e.event_id, [])
        low, high = calls_allowed(e, seen)
        if not low <= counted_calls(made, killed) <= high:
            wrong_calls.append(f"calls {made} (killed {sorted(killed)}) for {seen[e.event_id]} handlings {e.kind} "
                               f"{e.event_id}\n")  # fmt: skip
    return "".join(lost + doubled + wrong_calls)


async def play_round(spec: Round, folder: Path, notes: list[str]) -> tuple[Report, int, int]:
    """The round's report, the effects written by a retry, and the channels the broker closed in the tests' vhost
    (406 PRECONDITION_FAILED for an unknown delivery tag, ...: a worker's ack bookkeeping gone wrong shows there)."""
    await reset_database()
    await empty_queues()
    broker_log = await asyncio.to_thread(BrokerLog)
    proxy = await TcpProxy().start() if spec.fault == "link" else None
    deployment = Deployment(folder, proxy.url if proxy else AMQP_URL, spec.worker_env)
    try:
        await deployment.start()
        events = make_events(spec.events, run=f"campaign-{spec.seed}")
        rate = spec.fail_percent / 100
        expected_failures = sum(fails_first_attempt(e.event_id, rate) for e in events)
        misbehaving = sum(misbehaves(e.event_id, rate, spec.misbehave) for e in events)
        player = PlatformPlayer(deployment.urls, deployment.key, spec.rate)
        fault = fault_action(spec.fault, deployment, proxy, notes)

        async def fault_later() -> None:
            await asyncio.sleep(spec.fault_after)
            await fault()

        await asyncio.gather(player.play(events), fault_later())
        await account(events, DATABASE_URL, player.resent, settle=45, killed=deployment.killed)
        # Retries and redeliveries still under way: up to 150 s, because a retry copy that was dead-lettering when
        # the broker stopped waits in RabbitMQ's at-least-once dead-letter state until the broker sends it again,
        # after its confirm timeout (2 minutes by default).
        for _ in range(150):
            if not await waiting_messages():
                break
            await asyncio.sleep(1)
        # What came late is counted too.
        report = await account(events, DATABASE_URL, player.resent, settle=0, killed=deployment.killed)
        if report.lost or report.double_effects or report.external_lost or report.double_external:
            calls = await external_calls(DATABASE_URL)
            text = findings(events, await effects(DATABASE_URL), calls, deployment.killed)
            await asyncio.to_thread((folder / "findings.txt").write_text, text)
        if dead := await dead_letters():
            notes.append(f"{dead} dead letters")
        if report.never_accepted:
            notes.append(f"{report.never_accepted} never accepted")
        notes.append(f"{expected_failures} first attempts failed by design, {misbehaving} of them {spec.misbehave}")
        if report.external_repeats_after_kill:
            notes.append(f"{report.external_repeats_after_kill} calls made again with their key after the SIGKILL")
        retried = await retried_effects()
    finally:
        deployment.stop()
        if proxy is not None:
            await proxy.close()
    if errors := len(await asyncio.to_thread(broker_log.channel_errors)):
        notes.append(f"{errors} channels closed by the broker")
    # Nothing is left once every event is handled: a message here was held unacked until the worker stopped.
    if left := await waiting_messages():
        notes.append(f"{left} messages queued after the workers stopped")
    return report, retried, errors


def line(spec: Round, report: Report | None, retried: int, seconds: float, notes: list[str]) -> str:
    counts = (
        f"{report.sent:>5} {report.accepted:>8} {report.resent:>6} {report.handled:>7} {report.lost:>4} "
        f"{report.double_effects:>6} {report.external_lost:>8} {report.double_external:>10} {retried:>7}"
        if report
        else f"{'-':>5} {'-':>8} {'-':>6} {'-':>7} {'-':>4} {'-':>6} {'-':>8} {'-':>10} {'-':>7}"
    )
    return (
        f"{spec.number:>5} {spec.seed:>10} {spec.batch_size:>5} {spec.prefetch:>8} {spec.fail_percent:>5} "
        f"{spec.misbehave:<14} {spec.fault:<14} {counts} {seconds:>7.1f}  {'; '.join(notes)}"
    )


async def campaign(rounds: int, seed: int, faults: list[str], round_timeout: float) -> int:
    """Plays the rounds; returns how many failed."""
    ensure_test_vhost()
    print(f"campaign: {rounds} rounds, seed {seed}, faults {','.join(faults)}", flush=True)
    print(HEADER, flush=True)
    failed = 0
    totals: Counter = Counter()
    for number in range(1, rounds + 1):
        spec = Round.draw(number, seed + number - 1, faults)
        folder = Path(tempfile.mkdtemp(prefix=f"hypercard-campaign-{spec.seed}-"))
        notes: list[str] = []
        report, retried, channel_errors = None, 0, 0
        started = time.monotonic()
        try:
            report, retried, channel_errors = await asyncio.wait_for(play_round(spec, folder, notes), round_timeout)
        except TimeoutError:
            notes.insert(0, f"TIMEOUT after {round_timeout:g} s")
        except Exception as error:  # a round that breaks is reported and the campaign goes on
            notes.insert(0, f"ERROR {type(error).__name__}: {error}")
        finally:
            if spec.fault in RESTORE:  # whatever happened, the service is up again for the next round
                await asyncio.to_thread(RESTORE[spec.fault])
        if report is not None:
            totals.update(lost=report.lost, double=report.double_effects, external_lost=report.external_lost,
                          double_external=report.double_external)  # fmt: skip
        ok = (
            report is not None
            and report.lost == report.double_effects == report.never_accepted == 0
            and report.external_lost == report.double_external == channel_errors == 0
        )
        if ok:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            failed += 1
            notes.append(f"FAILED, logs in {folder}")
        print(line(spec, report, retried, time.monotonic() - started, notes), flush=True)
    print(
        f"campaign: {rounds - failed} of {rounds} rounds with every event handled once, {failed} failed; in all "
        f"{totals['lost']} lost, {totals['double']} double, {totals['external_lost']} external effects lost, "
        f"{totals['double_external']} double external effects",
        flush=True,
    )
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
