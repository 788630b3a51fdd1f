"""`make test` and `make bench` stop in one line when the broker is short of file handles, instead of hanging; the
suite deletes its queues when it ends."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from infra import headroom
from tests.support.private_node import PrivateNode

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parents[2]
FRESH_MACHINE_OPEN_FILES = 1024  # Debian's default soft limit, which the broker runs with on a new machine


@pytest.fixture(scope="module")
def fresh_broker() -> Iterator[PrivateNode]:
    """A broker of this test's own with a fresh machine's open-files limit."""
    node = PrivateNode("hcheadroom").start(open_files=FRESH_MACHINE_OPEN_FILES)
    yield node
    node.stop()


def check(node: PrivateNode, run: str = "tests") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.headroom", "--for", run],
        env={**os.environ, "RABBITMQ_NODENAME": node.node}, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def fill(node: PrivateNode, vhost: str, queues: int) -> None:
    node.ctl("add_vhost", vhost)
    node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    connection = await aio_pika.connect(f"{node.amqp_url}{vhost}")
    channel = await connection.channel()
    for n in range(queues):
        await channel.declare_queue(f"scratch.{n}", durable=True, arguments={"x-queue-type": "quorum"})
    await connection.close()


async def test_a_broker_filled_close_to_its_limit_stops_the_run_in_one_line(fresh_broker: PrivateNode) -> None:
    before = headroom.measure_on(fresh_broker.node)
    assert before.handle_limit is not None and before.handle_limit < FRESH_MACHINE_OPEN_FILES
    empty = check(fresh_broker)
    assert empty.returncode == 0, empty.stderr

    # 250 quorum queues, about what a `make run` and two benches leave: about 750 of the 927 handles
    await fill(fresh_broker, "scratch", 250)
    after = headroom.measure_on(fresh_broker.node)
    assert after.handles_used is not None and after.handle_limit - after.handles_used < headroom.NEEDED["tests"]

    stopped = check(fresh_broker)
    assert stopped.returncode == 2
    lines = stopped.stderr.splitlines()
    assert len(lines) == 1, stopped.stderr
    assert "free file handles" in lines[0] and "this run needs 600" in lines[0], lines[0]
    assert ".ci/broker-open-files" in lines[0], "the line names the fix"
    assert "Traceback" not in stopped.stdout + stopped.stderr

    # The same queues left in the run's own vhost (an interrupted run's) are room it takes back when it starts.
    own = subprocess.run(  # noqa: ASYNC221 - the check under test, run as `make test` runs it
        [sys.executable, "-m", "infra.headroom", "--for", "tests"],
        env={**os.environ, "RABBITMQ_NODENAME": fresh_broker.node, "HYPERCARD_TEST_VHOST": "scratch"},
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert own.returncode == 0, own.stderr

    fresh_broker.ctl("delete_vhost", "scratch")
    assert check(fresh_broker).returncode == 0, "room again once the scratch queues are gone"


def test_a_broker_that_cannot_be_asked_is_one_line_too() -> None:
    absent = subprocess.run(
        [sys.executable, "-m", "infra.headroom"], env={**os.environ, "RABBITMQ_NODENAME": "absent@localhost"},
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert absent.returncode == 2
    assert absent.stderr.count("\n") == 1 and "is it running?" in absent.stderr


def test_the_suite_deletes_its_queues_when_it_ends() -> None:
    """A run of a few tests in a vhost of its own: the vhost and its queues are gone afterwards, whatever the
    outcome."""
    vhost = f"hypercard_test_leftover_{secrets.token_hex(4)}"
    env = {**os.environ, "HYPERCARD_TEST_VHOST": vhost}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/gateway/test_views.py::test_the_same_event_twice_keeps_its_event_id_but_not_its_message_id"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:]
    vhosts = subprocess.run(["rabbitmqctl", "-q", "list_vhosts", "name"], capture_output=True, text=True, check=True)
    assert vhost not in vhosts.stdout.split()


def test_the_tests_that_need_no_service_run_where_no_broker_answers() -> None:
    """README, Tests: `pytest -m "not broker and not database"` runs on any machine; the suite's clean-up must not
    ask a broker that is not there."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not broker and not database",
         "tests/test_kubernetes.py::test_the_kustomization_applies_every_manifest"],
        env={**os.environ, "RABBITMQ_NODENAME": "absent@localhost"},
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout


def dead_letters_kept(node: PrivateNode) -> int | None:
    """The messages in the kept dead-letter queue once the broker's figure settles (a quorum queue reports its
    count a few seconds after a publish), or None with the queue gone."""
    count = None
    for _ in range(30):
        listed = node.ctl("list_queues", "-p", "/", "name", "messages").splitlines()[1:]
        rows = dict(line.split("\t") for line in listed)
        count = int(rows["hypercard.open_card.dead"]) if "hypercard.open_card.dead" in rows else None
        if count != 0:
            return count
        time.sleep(1)
    return count


async def keep_a_dead_letter(node: PrivateNode) -> None:
    """What a `make run` keeps in the default vhost: a dead-letter queue holding one message."""
    connection = await aio_pika.connect(node.amqp_url)
    channel = await connection.channel()
    kept = await channel.declare_queue("hypercard.open_card.dead", durable=True, arguments={"x-queue-type": "quorum"})
    await channel.default_exchange.publish(aio_pika.Message(b"an operator's dead letter"), routing_key=kept.name)
    await connection.close()


def test_a_suite_pointed_at_the_default_vhost_never_deletes_it(fresh_broker: PrivateNode) -> None:
    """HYPERCARD_TEST_VHOST=/ must not make the suite's clean-up delete the broker's default vhost, where a `make
    run` keeps its queues and dead letters."""
    asyncio.run(keep_a_dead_letter(fresh_broker))
    assert dead_letters_kept(fresh_broker) == 1, "the count a quorum queue reports lags its publish: wait for it"
    env = {**os.environ, "HYPERCARD_TEST_VHOST": "/", "HYPERCARD_TEST_AMQP_PORT": str(fresh_broker.port),
           "RABBITMQ_NODENAME": fresh_broker.node}  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/gateway/test_views.py::test_the_same_event_twice_keeps_its_event_id_but_not_its_message_id"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "/" in fresh_broker.ctl("list_vhosts", "name").split(), "the broker's default vhost was deleted"
    assert dead_letters_kept(fresh_broker) == 1, "the operator's dead letter is gone"
    fresh_broker.ctl("delete_queue", "-p", "/", "hypercard.open_card.dead")


def test_make_test_and_make_bench_check_the_broker_first() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target, run in (("test", "tests"), ("bench", "bench")):
        recipe = makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
        check_line = recipe.index(f"-m infra.headroom --for {run}")
        assert check_line < recipe.index("$(BIN)/pytest" if target == "test" else "$(BIN)/python -m bench"), recipe
