"""hypercard-replay and hypercard-status against the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time

import aio_pika
import pytest

from infra import declare
from schemas import topology
from tests.support.broker import AMQP_URL, ensure_management_api, forget_kind, take
from tests.support.network import free_port
from workers.replay import ReplayFilter, replay

pytestmark = pytest.mark.broker
BIN = os.path.dirname(sys.executable)


async def put(channel, queue: str, kind: str, event_id: str, **headers) -> None:
    message = aio_pika.Message(
        b'{"notify_type":"%s","n":"%s"}' % (kind.encode(), event_id.encode()),
        headers={"notify_type": kind, "event_id": event_id, **headers},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await channel.default_exchange.publish(message, routing_key=queue)


@pytest.fixture
async def confirm_channel(amqp):
    connection = await aio_pika.connect(AMQP_URL)
    yield await connection.channel(publisher_confirms=True, on_return_raises=True)
    await connection.close()


async def test_replay_moves_the_matching_dead_letters_back_and_leaves_the_rest(amqp, confirm_channel):
    dead = topology.dead_queue("RECHARGE")
    for n in range(3):
        await put(amqp, dead, "RECHARGE", f"e{n}", attempts=6, error_type="RuntimeError", attempt=6)
    moved = (await replay(confirm_channel, dead, ReplayFilter(event_id="e1"))).moved
    assert moved == ["e1"]
    (back,) = await take(amqp, topology.kind_queue("RECHARGE"))
    assert back.headers["event_id"] == "e1" and back.headers["replayed_from"] == dead
    assert "attempt" not in back.headers and "error_type" not in back.headers
    left = await take(amqp, dead)
    assert sorted(m.headers["event_id"] for m in left) == ["e0", "e2"]


async def test_replay_from_invalid_and_unrouted_by_kind_and_count(amqp, confirm_channel):
    for n in range(3):
        await put(amqp, topology.INVALID_QUEUE, "OPERATION", f"i{n}")
    await put(amqp, topology.INVALID_QUEUE, "CONSUME", "other")
    result = await replay(confirm_channel, topology.INVALID_QUEUE, ReplayFilter(kind="OPERATION", count=2))
    assert len(result.moved) == 2
    assert len(await take(amqp, topology.kind_queue("OPERATION"))) == 2
    assert sorted(m.headers["event_id"] for m in await take(amqp, topology.INVALID_QUEUE)) == ["i2", "other"]


async def test_replay_reports_a_message_it_cannot_route_leaves_it_and_goes_on(amqp, confirm_channel):
    dead = topology.dead_queue("RECHARGE")
    await put(amqp, dead, "RECHARGE", "before")
    await put(amqp, dead, "R" * 300, "too-long")  # a routing key over AMQP's 255 bytes
    message = aio_pika.Message(b"{}", headers={"event_id": "no-kind"}, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await amqp.default_exchange.publish(message, routing_key=dead)
    await put(amqp, dead, "RECHARGE", "after")
    result = await replay(confirm_channel, dead, ReplayFilter())
    assert result.moved == ["before", "after"]
    assert [event_id for event_id, _ in result.left] == ["too-long", "no-kind"]
    replayed = await take(amqp, topology.kind_queue("RECHARGE"))
    assert sorted(m.headers["event_id"] for m in replayed) == ["after", "before"]
    assert sorted(m.headers["event_id"] for m in await take(amqp, dead)) == ["no-kind", "too-long"]


async def test_replay_from_unverified_after_review(amqp, confirm_channel):
    await put(amqp, topology.UNVERIFIED_QUEUE, "OPT_CODE", "reviewed", signature_outcome="invalid")
    await put(amqp, topology.UNVERIFIED_QUEUE, "CONSUME", "not-yet", signature_outcome="invalid")
    done = run_tool("hypercard-replay", "--from", "unverified", "--kind", "OPT_CODE")
    assert done.returncode == 0 and "replayed 1 message" in done.stderr
    assert [m.headers["event_id"] for m in await take(amqp, topology.kind_queue("OPT_CODE"))] == ["reviewed"]
    assert [m.headers["event_id"] for m in await take(amqp, topology.UNVERIFIED_QUEUE)] == ["not-yet"]


async def test_a_crash_between_publish_and_ack_duplicates_but_never_loses(amqp, confirm_channel, monkeypatch):
    dead = topology.dead_queue("CONSUME")
    await put(amqp, dead, "CONSUME", "crash")

    async def crash(self, *args, **kwargs):
        raise ConnectionError("replay process died")

    monkeypatch.setattr(aio_pika.IncomingMessage, "ack", crash)
    with pytest.raises(ConnectionError):
        await replay(confirm_channel, dead, ReplayFilter())
    await confirm_channel.close()  # the dying process's channel goes away: the original returns to its queue
    monkeypatch.undo()
    assert [m.headers["event_id"] for m in await take(amqp, topology.kind_queue("CONSUME"))] == ["crash"]
    assert [m.headers["event_id"] for m in await take(amqp, dead)] == ["crash"]


def run_tool(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.path.join(BIN, args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HC_AMQP_URL": AMQP_URL, **(env or {})},
    )


async def test_replay_command_line(amqp):
    await put(amqp, topology.dead_queue("OPT_CODE"), "OPT_CODE", "cli-1")
    dry = run_tool("hypercard-replay", "OPT_CODE", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.split() == ["cli-1"]
    done = run_tool("hypercard-replay", "OPT_CODE")
    assert done.returncode == 0 and "replayed 1 message" in done.stderr
    assert len(await take(amqp, topology.kind_queue("OPT_CODE"))) == 1


async def test_status_is_0_when_clean_1_with_dead_letters_2_without_broker(amqp):
    await forget_kind(amqp, "TEST_TRACKED")
    # The queues were just purged; the management API may still show an earlier test's messages for a few seconds.
    nothing_flagged = lambda out: "dead letters" not in out and "needs a look" not in out  # noqa: E731
    clean = await asyncio.to_thread(wait_for_status, nothing_flagged)
    assert clean.returncode == 0, clean.stdout
    for name in ("OPEN_CARD", "hypercard.invalid", "hypercard.unverified"):
        assert name in clean.stdout
    await put(amqp, topology.dead_queue("BUY_COIN"), "BUY_COIN", "d")

    def buy_coin(output: str) -> str:
        return next(line for line in output.splitlines() if line.startswith("BUY_COIN "))

    alert = await asyncio.to_thread(wait_for_status, lambda out: buy_coin(out).split()[5] == "1")
    assert alert.returncode == 1 and "dead letters" in buy_coin(alert.stdout)
    down = run_tool("hypercard-status", env={"HC_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/"})
    assert down.returncode == 2 and "unreachable" in down.stderr


def low_balance(output: str) -> dict:
    return next(kind for kind in json.loads(output)["kinds"] if kind["kind"] == "LOW_BALANCE")


def wait_for_status(done, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The management API's figures lag the broker by a few seconds: ask until they show what was done."""
    deadline = time.monotonic() + timeout
    while True:
        result = run_tool("hypercard-status", *args)
        if done(result.stdout) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


async def test_status_lists_every_kind_bound_to_the_events_exchange_with_rates_as_json(amqp):
    await asyncio.to_thread(ensure_management_api)
    await declare.declare_kind(amqp, "LOW_BALANCE")  # what a user's worker declares for its kind
    try:
        await put(amqp, topology.kind_queue("LOW_BALANCE"), "LOW_BALANCE", "x")
        shows_it = lambda out: low_balance(out)["queue"]["messages"] == 1  # noqa: E731
        result = await asyncio.to_thread(wait_for_status, shows_it, "--json")
        status = json.loads(result.stdout)
        assert status["source"] == "management"
        (low,) = [kind for kind in status["kinds"] if kind["kind"] == "LOW_BALANCE"]
        assert low["queue"]["messages"] == 1 and low["dead"]["messages"] == 0
        assert isinstance(low["queue"]["in_per_s"], float) and isinstance(low["queue"]["out_per_s"], float)
        assert {q["queue"] for q in status["review"]} == {
            topology.INVALID_QUEUE, topology.UNROUTED_QUEUE, topology.UNVERIFIED_QUEUE
        }
        # Without the management API: the known kinds and the ones named, no rates, the same exit codes.
        no_api = {"HC_MANAGEMENT_URL": f"http://127.0.0.1:{free_port()}"}
        plain = run_tool("hypercard-status", "--kind", "LOW_BALANCE", env=no_api)
        (line,) = [line for line in plain.stdout.splitlines() if line.startswith("LOW_BALANCE")]
        assert line.split()[1:4] == ["1", "0", "-"] and "no management API" in plain.stdout
    finally:
        await forget_kind(amqp, "LOW_BALANCE")


def watch_until_ctrl_c(frames: int, pause: float = 0.0) -> tuple[bytes, int | None]:
    """`hypercard-status --watch 0.5` on a terminal: Ctrl-C `pause` s after it drew `frames` frames. Its output until
    it exits, read all along (a full terminal would stall it), and its exit code: None if it is still running 10 s
    after the Ctrl-C (then killed)."""
    pid, fd = pty.fork()
    if pid == 0:
        env = {**os.environ, "HC_AMQP_URL": AMQP_URL}
        os.execve(os.path.join(BIN, "hypercard-status"), ["hypercard-status", "--watch", "0.5"], env)
    output = b""

    def read_for(seconds: float, until=lambda: False) -> None:
        nonlocal output
        deadline = time.monotonic() + seconds
        while not until() and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    output += os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    return

    read_for(20, until=lambda: output.count(b"\x1b[2J") >= frames)
    read_for(pause)
    os.write(fd, b"\x03")
    code = None
    deadline = time.monotonic() + 10
    while code is None and time.monotonic() < deadline:
        read_for(0.1)
        done, status = os.waitpid(pid, os.WNOHANG)
        code = os.waitstatus_to_exitcode(status) if done else None
    if code is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    os.close(fd)
    return output, code


def test_status_watch_refreshes_in_place_until_ctrl_c(amqp):
    output, code = watch_until_ctrl_c(frames=2)
    assert output.count(b"\x1b[2J") >= 2 and b"OPEN_CARD" in output  # cleared and redrawn, not scrolled
    assert code in (0, 1), f"exit {code} (None: still running 10 s after Ctrl-C)"
    assert b"Traceback" not in output


@pytest.mark.parametrize("pause", [0.0, 0.1, 0.2, 0.3, 0.4])
def test_status_watch_leaves_on_ctrl_c_whatever_it_is_doing(amqp, pause):
    """Ctrl-C lands while it collects or while it waits for the next frame: a cancellation a library's wait swallows
    (asyncio.wait_for on Python 3.11) must not keep it drawing for ever. A CI run hung on this for 30 minutes."""
    output, code = watch_until_ctrl_c(frames=1, pause=pause)
    assert code in (0, 1), f"exit {code} (None: still running 10 s after Ctrl-C)"
    assert b"Traceback" not in output
