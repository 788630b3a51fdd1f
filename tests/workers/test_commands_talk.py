"""The commands as an operator runs them (issue 28, finding 5): a long replay streams a line per message and stops
between messages on Ctrl-C with the counts; every expected failure is one line naming its cause and the setting to
change, exit 2; every command answers --version."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import version

import aio_pika
import pytest

from schemas import topology
from tests.support.broker import AMQP_URL, TEST_VHOST, amqp_url, ensure_management_api
from tests.support.database import DATABASE_URL
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.keys import new_key, write_public_keys
from tests.support.network import SilentServer, free_port
from workers import database

BIN = os.path.dirname(sys.executable)
COMMANDS = [
    "hypercard-gateway", "hypercard-worker", "hypercard-send", "hypercard-replay", "hypercard-inspect",
    "hypercard-find", "hypercard-status", "hypercard-run", "hypercard-broker-setup",
]  # fmt: skip
CLOSED = f"amqp://guest:guest@127.0.0.1:{free_port()}/"


def tool(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.path.join(BIN, args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HC_AMQP_URL": AMQP_URL, "HC_DATABASE_URL": DATABASE_URL, **(env or {})},
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_version(command):
    result = tool(command, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{command} {version('hypercard-gateway')}"


def interrupted_replay() -> tuple[int, str, str]:
    """hypercard-replay RECHARGE, sent SIGINT once it has printed 100 ids: its exit code, stdout and stderr."""
    replay = subprocess.Popen(
        [os.path.join(BIN, "hypercard-replay"), "RECHARGE"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HC_AMQP_URL": AMQP_URL},
    )  # fmt: skip
    streamed = b""
    deadline = time.monotonic() + 60
    while streamed.count(b"\n") < 100 and time.monotonic() < deadline:  # lines arrive as messages move
        ready, _, _ = select.select([replay.stdout], [], [], 0.5)
        if ready:
            streamed += os.read(replay.stdout.fileno(), 65536)
        if replay.poll() is not None:
            break
    assert replay.poll() is None, "the replay printed its first 100 ids only when it had finished"
    replay.send_signal(signal.SIGINT)
    rest, errors = replay.communicate(timeout=60)
    printed, said = (streamed + rest).decode(), errors.decode()
    return replay.returncode, printed, said


@pytest.mark.broker
async def test_a_replay_of_2000_interrupted_by_sigint_moved_plus_remaining_is_2000_no_traceback(amqp):
    dead, live = topology.dead_queue("RECHARGE"), topology.kind_queue("RECHARGE")
    for n in range(2000):
        message = aio_pika.Message(
            b'{"notify_type":"RECHARGE"}', headers={"notify_type": "RECHARGE", "event_id": f"r{n:04d}"}
        )
        await amqp.default_exchange.publish(message, routing_key=dead)
    returncode, printed, said = await asyncio.to_thread(interrupted_replay)
    assert returncode == 130, said
    assert "Traceback" not in said and "KeyboardInterrupt" not in said, said
    found = re.search(r"interrupted: moved (\d+) message\(s\) from \S+; (\d+) remain", said)
    assert found, said
    moved, remaining = int(found.group(1)), int(found.group(2))
    live_count = (await amqp.declare_queue(live, passive=True)).declaration_result.message_count
    dead_count = (await amqp.declare_queue(dead, passive=True)).declaration_result.message_count
    assert moved + remaining == 2000 and 100 <= moved < 2000
    assert (live_count, dead_count) == (moved, remaining), "nothing lost, nothing moved twice"
    assert len(printed.split()) == moved
    assert "\r" not in said, "no progress line when stderr is no terminal"
    await (await amqp.get_queue(live)).purge()


def replay_on_a_terminal() -> tuple[int, bytes]:
    """hypercard-replay RECHARGE in a pseudo-terminal: its exit code and all it wrote there."""
    pid, fd = pty.fork()
    if pid == 0:
        env = {**os.environ, "HC_AMQP_URL": AMQP_URL, "TERM": "dumb"}
        os.execve(os.path.join(BIN, "hypercard-replay"), ["hypercard-replay", "RECHARGE"], env)
    output = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output


@pytest.mark.broker
async def test_a_replay_on_a_terminal_shows_a_progress_line_with_its_counts(amqp):
    for n in range(30):
        message = aio_pika.Message(b"{}", headers={"notify_type": "RECHARGE", "event_id": f"t{n:02d}"})
        await amqp.default_exchange.publish(message, routing_key=topology.dead_queue("RECHARGE"))
    code, output = await asyncio.to_thread(replay_on_a_terminal)
    assert code == 0, output[-500:]
    assert b"\r\x1b[K30 moved, 0 left" in output and b"\r\x1b[K1 moved, 0 left" in output
    assert b"replayed 30 message(s)" in output
    await (await amqp.get_queue(topology.kind_queue("RECHARGE"))).purge()


def one_line(result: subprocess.CompletedProcess, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.broker
@pytest.mark.parametrize("command", ["hypercard-replay", "hypercard-inspect", "hypercard-find"])
def test_a_wrong_password_is_one_line_naming_hc_amqp_url(amqp, command):
    wrong = amqp_url().replace("guest:guest", "guest:wrong")
    args = {"hypercard-inspect": ["dead", "RECHARGE"], "hypercard-replay": ["RECHARGE"]}.get(command, ["some-id"])
    one_line(tool(command, *args, env={"HC_AMQP_URL": wrong}), "password", "HC_AMQP_URL")


@pytest.mark.parametrize("command", ["hypercard-replay", "hypercard-inspect", "hypercard-find", "hypercard-status"])
def test_the_broker_down_is_one_line_naming_hc_amqp_url(command):
    args = {"hypercard-inspect": ["dead", "RECHARGE"], "hypercard-replay": ["RECHARGE"], "hypercard-find": ["x"]}
    one_line(tool(command, *args.get(command, []), env={"HC_AMQP_URL": CLOSED}), "HC_AMQP_URL", "not answer")


@pytest.mark.broker
@pytest.mark.parametrize("command", ["hypercard-replay", "hypercard-inspect"])
def test_an_unknown_source_queue_is_one_line(amqp, command):
    args = ["--from", "hypercard.no_such_queue"] if command == "hypercard-replay" else ["hypercard.no_such_queue"]
    one_line(tool(command, *args), "no queue hypercard.no_such_queue")


@pytest.mark.broker
def test_the_database_down_is_one_line_naming_hc_database_url(amqp):
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    one_line(tool("hypercard-find", "some-id", env={"HC_DATABASE_URL": closed}), "HC_DATABASE_URL", "not answer")


def test_no_management_api_is_one_line_naming_hc_management_url():
    closed = f"http://127.0.0.1:{free_port()}/"
    result = tool("hypercard-broker-setup", env={"HC_MANAGEMENT_URL": closed})
    one_line(result, "HC_MANAGEMENT_URL")
    assert "ConnectionKey" not in result.stderr


@pytest.fixture
def taken_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_the_gateway_on_a_port_in_use_is_one_line_naming_hc_port(tmp_path, taken_port):
    key_file = write_public_keys(tmp_path / "platform-public.pem", new_key())
    env = {"HC_PLATFORM_PUBLIC_KEY": str(key_file), "HC_ID_SECRET": TEST_ID_SECRET, "HC_HOST": "127.0.0.1"}
    result = tool("hypercard-gateway", env={**env, "HC_PORT": str(taken_port), "HC_GATEWAY_METRICS_PORT": "0"})
    one_line(result, f"port {taken_port}", "in use", "HC_PORT")
    metrics = tool(
        "hypercard-gateway", env={**env, "HC_PORT": str(free_port()), "HC_GATEWAY_METRICS_PORT": str(taken_port)}
    )  # noqa: E501
    one_line(metrics, f"port {taken_port}", "in use", "HC_GATEWAY_METRICS_PORT")


@pytest.mark.broker
@pytest.mark.parametrize("setting", ["HC_METRICS_PORT", "HC_HEALTH_PORT"])
async def test_the_worker_on_a_port_in_use_is_one_line_naming_the_setting(amqp, taken_port, setting):
    env = {"HC_ID_SECRET": TEST_ID_SECRET, "HC_METRICS_PORT": "0", "HC_HEALTH_PORT": "0", setting: str(taken_port)}
    one_line(tool("hypercard-worker", "RECHARGE", env=env), f"port {taken_port}", "in use", setting)


def test_the_worker_with_the_database_down_is_one_line_naming_hc_database_url():
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    env = {"HC_ID_SECRET": TEST_ID_SECRET, "HC_METRICS_PORT": "0", "HC_HEALTH_PORT": "0", "HC_DATABASE_URL": closed}
    one_line(tool("hypercard-worker", "RECHARGE", env=env), "HC_DATABASE_URL", "unreachable")


def as_from_a_shell() -> None:
    """In the child, before exec: SIGINT unblocked and at its default, as a shell starts a foreground command. The
    full suite leaves the test process with SIGINT blocked or ignored by the time these tests run (the file alone
    passes; the cause is not found yet), and a child inherits both."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
async def migrated(db) -> None:
    """A fresh, migrated database: hypercard-find reads its inbox before it goes to the broker."""
    pool = await database.create_pool(DATABASE_URL, 1)
    await database.migrate(pool)
    await pool.close()


INTERRUPTIBLE = {
    "hypercard-replay": ["RECHARGE"], "hypercard-inspect": ["dead", "RECHARGE"], "hypercard-find": ["some-id"],
    "hypercard-status": [], "hypercard-broker-setup": [], "hypercard-worker": ["RECHARGE"],
}  # fmt: skip


@pytest.mark.broker
@pytest.mark.parametrize("command", sorted(INTERRUPTIBLE))
def test_ctrl_c_while_connecting_to_a_silent_broker_exits_130_in_one_line(migrated, command):
    """The broker address accepts TCP and never answers the handshake: Ctrl-C ends the wait at once, not when the
    10 s connection timeout runs out, and says so in one line."""
    with SilentServer() as silent:
        env = {
            **os.environ, "HC_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{silent.port}/{TEST_VHOST}",
            "HC_MANAGEMENT_URL": f"http://127.0.0.1:{silent.port}/", "HC_DATABASE_URL": DATABASE_URL,
            "HC_ID_SECRET": TEST_ID_SECRET, "HC_METRICS_PORT": "0", "HC_HEALTH_PORT": "0",
        }  # fmt: skip
        process = subprocess.Popen(
            [os.path.join(BIN, command), *INTERRUPTIBLE[command]], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while silent.accepted == 0 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert silent.accepted and process.poll() is None, "it never reached the broker's address"
        time.sleep(0.5)  # inside the handshake's wait
        interrupted_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            _, said = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            _, said = process.communicate()
            pytest.fail(f"still waiting 5 s after Ctrl-C: {said!r}")
    took = time.monotonic() - interrupted_at
    lines = said.strip().splitlines()
    assert (process.returncode, len(lines)) == (130, 1), (process.returncode, said)
    assert "Traceback" not in said and "interrupted" in lines[0], said
    assert took < 3, f"{took:.1f} s after Ctrl-C"


NO_SUCH_VHOST = "hypercard_no_such_vhost"


@pytest.mark.broker
@pytest.mark.parametrize("command", ["hypercard-replay", "hypercard-inspect", "hypercard-find", "hypercard-status"])
def test_an_unknown_vhost_is_one_line_naming_it_and_hc_amqp_url(migrated, command):
    args = {"hypercard-inspect": ["dead", "RECHARGE"], "hypercard-replay": ["RECHARGE"], "hypercard-find": ["x"]}
    env = {"HC_AMQP_URL": amqp_url(vhost=NO_SUCH_VHOST), "HC_MANAGEMENT_URL": f"http://127.0.0.1:{free_port()}"}
    result = tool(command, *args.get(command, []), env=env)
    one_line(result, NO_SUCH_VHOST, "HC_AMQP_URL", "vhost")
    assert "unreachable" not in result.stderr


@pytest.mark.broker
def test_broker_setup_with_a_wrong_management_password_is_one_line_naming_the_credentials(amqp):
    ensure_management_api()
    wrong = amqp_url().replace("guest:guest", "guest:wrong")
    result = tool("hypercard-broker-setup", env={"HC_AMQP_URL": wrong})
    one_line(result, "password", "HC_AMQP_URL", "HC_MANAGEMENT_URL")
    assert "no management API answers" not in result.stderr


@pytest.mark.broker
@pytest.mark.parametrize("command", ["hypercard-broker-setup", "hypercard-status"])
@pytest.mark.parametrize(
    "malformed", ["127.0.0.1:15672", "http://127.0.0.1:99999/", "garbage", "http://[::1", "ftp://127.0.0.1:15672/"]
)
def test_a_malformed_hc_management_url_is_one_line_naming_it(amqp, command, malformed):
    one_line(tool(command, env={"HC_MANAGEMENT_URL": malformed}), "HC_MANAGEMENT_URL", "http")
