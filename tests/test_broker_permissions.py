"""One broker user per role (`infra.permissions`), set up by `hypercard-broker-setup` in the tests' vhost (users of
this run's own, deleted at the end; no vhost is created: on the shared RabbitMQ 3.10 a vhost being added or deleted
was seen to hold every new connection for minutes): each role does its job through the real gateway, worker and
operator tools, and the broker refuses it the others'."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aio_pika
import aiormq
import pytest
import yaml

from infra import declare
from infra.broker_setup import set_up
from infra.permissions import GATEWAY, OPERATOR, ROLES, worker_role
from infra.settings import load_settings
from schemas import topology
from schemas.events import KNOWN_KINDS
from tests.support.broker import AMQP_URL, TEST_VHOST, ensure_management_api, take
from tests.support.database import DATABASE_URL, reset_database
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.policies import effective_policies, wait_for_policy
from tests.support.tracked_kind import TEST_DELAYS  # importing it registers TEST_TRACKED, as --handlers does
from tests.support.waiting import eventually
from workers.app import create_worker
from workers.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
RUN = secrets.token_hex(4)
ADMIN_URL = AMQP_URL
# One worker user per group of kinds, as in docker-compose.yml (issue 26: one user for every group could read the
# one-time codes of hypercard.opt_code from any worker).
WORKER_GROUPS = {
    "worker-cards": ["OPEN_CARD", "CANCEL_CARD", "CARD_CONFIG_CHANGE", "CONSUME"],
    "worker-auth": ["AUTH_3DS", "OPT_CODE"],
    "worker-tracked": ["TEST_TRACKED"],
}
USERS = [ROLES["gateway"], ROLES["operator"], *(worker_role(name, kinds) for name, kinds in WORKER_GROUPS.items())]
ROLE_URLS = {role.name: f"amqp://hypercard_perm_{RUN}_{role.name}:{secrets.token_urlsafe(12)}@127.0.0.1:5672/"
             f"{TEST_VHOST}" for role in USERS}  # fmt: skip
KINDS = sorted(KNOWN_KINDS | {"TEST_TRACKED"})
WORKER = worker_role("worker-all", KINDS)
PATH = "/hc_sync/common"
OPEN_CARD, DEAD = topology.kind_queue("OPEN_CARD"), topology.dead_queue("OPEN_CARD")


def test_the_patterns_name_the_topology_and_nothing_more():
    holding = [topology.INVALID_QUEUE, topology.UNVERIFIED_QUEUE, topology.UNROUTED_QUEUE]
    for kind in KINDS:
        assert re.match(WORKER.read, topology.kind_queue(kind))
        assert re.match(WORKER.configure, topology.retry_queue(kind, 0.2))
        assert not re.match(WORKER.configure, topology.kind_queue(kind))
        assert re.match(OPERATOR.read, topology.dead_queue(kind))
        assert not re.match(OPERATOR.read, topology.kind_queue(kind))
        assert not re.match(WORKER.read, topology.dead_queue(kind))
    for name in [*holding, topology.EVENTS_EXCHANGE]:
        assert not re.match(WORKER.read, name)
    assert all(re.match(OPERATOR.read, name) for name in holding)
    assert re.match(GATEWAY.write, topology.EVENTS_EXCHANGE)
    assert re.match(OPERATOR.write, topology.TO_QUEUE_EXCHANGE)
    assert not any(re.match(role.write, "amq.default") for role in (GATEWAY, OPERATOR))
    assert not re.match(OPERATOR.write, topology.EVENTS_EXCHANGE)
    assert not any(re.match(pattern, topology.TO_QUEUE_EXCHANGE) for pattern in (WORKER.read, WORKER.write))
    cards = worker_role("worker-cards", WORKER_GROUPS["worker-cards"])
    assert re.match(cards.read, topology.kind_queue("OPEN_CARD"))
    assert not re.match(cards.read, topology.kind_queue("OPT_CODE"))
    assert not re.match(cards.read, topology.retry_queue("RECHARGE", 1))
    assert not re.match(cards.configure, topology.retry_queue("RECHARGE", 1))


def test_the_readme_shows_the_patterns_that_are_applied():
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        # Markdown escapes a pipe inside a cell as \|.
        cells = [cell.strip().strip("`").replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 5 and cells[0].strip("*") in {*ROLES, "worker-{group}"}:
            rows[cells[0].strip("*")] = cells[1:]
    for role in [*ROLES.values(), worker_role("worker-{group}", ["{KINDS}"])]:
        tags = ", ".join(role.tags) or "none"
        assert rows.get(role.name) == [role.configure, role.write, role.read, tags], role.name


COMPOSE_GROUPS = ("cards", "payments", "auth")
COMPOSE_PASSWORDS = {f"RABBITMQ_{role.upper()}_PASSWORD": f"{role}-secret" for role in ROLES} | {
    f"RABBITMQ_WORKER_{group.upper()}_PASSWORD": f"worker{group}-secret" for group in COMPOSE_GROUPS
}
# The other secrets compose refuses to start without (tests/test_deploy.py checks each one).
OTHER_SECRETS = {"RABBITMQ_PASSWORD": "admin0secret", "POSTGRES_PASSWORD": "pg0secret", "HC_API_KEY": "merchant-1",
                 "HC_ID_SECRET": "0123456789abcdef" * 4, "GRAFANA_ADMIN_PASSWORD": "grafana0secret",
                 "POSTGRES_WORKER_PASSWORD": "pgworker0secret"}  # fmt: skip


def compose_config(environ: dict[str, str]) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")} | OTHER_SECRETS | environ
    return subprocess.run(["docker-compose", "config"], cwd=REPO, env=env, capture_output=True, text=True)


def test_compose_gives_each_role_its_own_broker_user_with_a_password_from_the_environment():
    missing = compose_config({})
    assert missing.returncode != 0 and "RABBITMQ_" in missing.stderr + missing.stdout
    result = compose_config(COMPOSE_PASSWORDS)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    setup = services["broker-setup"]["environment"]
    assert setup["HYPERCARD_GATEWAY_AMQP_URL"] == services["gateway"]["environment"]["HC_AMQP_URL"]
    assert "gateway-secret" in setup["HYPERCARD_GATEWAY_AMQP_URL"]
    workers = {name: s for name, s in services.items() if s.get("command", [""])[0] == "hypercard-worker"}
    assert sorted(workers) == sorted(f"worker-{group}" for group in COMPOSE_GROUPS)
    for name, service in workers.items():
        variable = f"HYPERCARD_{name.upper().replace('-', '_')}"
        assert service["environment"]["HC_AMQP_URL"] == setup[f"{variable}_AMQP_URL"], name
        assert f"{name.removeprefix('worker-')}-secret" in setup[f"{variable}_AMQP_URL"], name
        assert setup[f"{variable}_KINDS"].split(",") == service["command"][1:], f"{name}: its user reads its kinds"
        assert service["depends_on"]["broker-setup"]["condition"] == "service_completed_successfully"
    assert len({service["environment"]["HC_AMQP_URL"] for service in workers.values()}) == len(COMPOSE_GROUPS)
    assert "operator-secret" in setup["HYPERCARD_OPERATOR_AMQP_URL"]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def broker_users(test_vhost) -> Iterator[dict[str, str]]:
    """The three users and the topology, as `hypercard-broker-setup` makes them; the users gone at the end."""
    ensure_management_api()
    try:
        users = [(role, ROLE_URLS[role.name]) for role in USERS]
        asyncio.run(set_up(ADMIN_URL, users, kinds=KINDS, delivery_limit=topology.DEFAULT_DELIVERY_LIMIT))
        yield ROLE_URLS
    finally:
        for url in ROLE_URLS.values():
            _rabbitmqctl("delete_user", url.split("//")[1].split(":")[0])


@pytest.fixture
async def admin(broker_users, amqp) -> aio_pika.abc.AbstractChannel:
    """The tests' channel as guest, every queue of the known kinds and of TEST_TRACKED empty."""
    tracked = [topology.kind_queue("TEST_TRACKED"), topology.dead_queue("TEST_TRACKED")]
    for name in tracked + [topology.retry_queue("TEST_TRACKED", delay) for delay in TEST_DELAYS]:
        await amqp.queue_delete(name)
    await declare.declare_kind(amqp, "TEST_TRACKED", topology.DEFAULT_DELIVERY_LIMIT, TEST_DELAYS)
    return amqp


@pytest.mark.broker
def test_the_set_up_makes_the_holding_queues_delivery_limit_explicit(broker_users):
    """RabbitMQ 4.0-4.2 drop a dead letter returned 20 times unless a limit is set: the set-up sets it by policy."""
    holding = [topology.INVALID_QUEUE, topology.UNVERIFIED_QUEUE, topology.dead_queue("OPEN_CARD")]
    wait_for_policy(holding, topology.HOLDING_POLICY)
    assert effective_policies().get(topology.kind_queue("OPEN_CARD")) != topology.HOLDING_POLICY


@pytest.mark.broker
async def test_the_gateway_user_answers_code_1_for_a_signed_push(broker_users, make_gateway, sign, sample, admin):
    gateway = await make_gateway(amqp_url=broker_users["gateway"])
    body = sample("open_card")
    response = await gateway.post(PATH, data=body, headers=sign(body))
    assert (await response.json())["code"] == 1
    (message,) = await take(admin, topology.kind_queue("OPEN_CARD"))
    assert message.body == body


@pytest.mark.broker
@pytest.mark.database
async def test_the_worker_user_handles_retries_and_dead_letters(broker_users, make_gateway, sign, admin):
    await reset_database()
    settings = load_settings(
        WorkerSettings,
        {},
        amqp_url=broker_users["worker-tracked"],
        database_url=DATABASE_URL,
        retry_delays=TEST_DELAYS,
        id_secret=TEST_ID_SECRET,
    )
    worker = create_worker(settings, ["TEST_TRACKED"])
    await worker.start()
    gateway = await make_gateway(amqp_url=broker_users["gateway"])
    try:
        assert worker.consuming
        retried = {"token": "retried", "fail_until": 2, "outcome": "retry"}
        for fields in (retried, {"token": "given-up", "outcome": "give_up"}):
            body = json.dumps({"notify_type": "TEST_TRACKED", **fields}).encode()
            assert (await (await gateway.post(PATH, data=body, headers=sign(body))).json())["code"] == 1
        rows = await eventually(lambda: worker.pool.fetch("SELECT attempt FROM test_effects WHERE token = 'retried'"))
        assert [row["attempt"] for row in rows] == [2]
        (dead,) = await take(admin, topology.dead_queue("TEST_TRACKED"))
        assert json.loads(dead.body)["token"] == "given-up"
    finally:
        await worker.stop()


def operator_tool(*args: str) -> subprocess.CompletedProcess:
    """A console script as an operator runs it, with the operator user's URL."""
    env = {**os.environ, "HC_AMQP_URL": ROLE_URLS["operator"]}
    command = [str(Path(sys.executable).parent / args[0]), *args[1:]]  # the venv's script, activated or not
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.broker
async def test_the_operator_user_replays_and_reads_the_status(broker_users, admin):
    message = aio_pika.Message(
        b'{"notify_type":"OPEN_CARD"}', headers={"notify_type": "OPEN_CARD", "event_id": "e-1"}, delivery_mode=2
    )
    await admin.default_exchange.publish(message, routing_key=DEAD)
    # The management API's figures lag the queue by a few seconds: ask until it reports the dead letter.
    for _ in range(30):
        status = await asyncio.to_thread(operator_tool, "hypercard-status", "--json")
        if status.returncode == 1 and _dead_letters(status.stdout, "OPEN_CARD") == 1:
            break
        await asyncio.sleep(1)
    assert status.returncode == 1, status.stderr  # 1: a dead letter waits
    found = json.loads(status.stdout)
    assert found["source"] == "management", "the operator user reads the management API"
    assert {k["kind"]: k["dead"]["messages"] for k in found["kinds"]}["OPEN_CARD"] == 1
    kept = aio_pika.Message(b'{"notify_type":"OPEN_CARD"}', headers={"notify_type": "OPEN_CARD", "event_id": "e-2"})
    await admin.default_exchange.publish(kept, routing_key=DEAD)
    replay = await asyncio.to_thread(operator_tool, "hypercard-replay", "OPEN_CARD", "--event-id", "e-1")
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.split() == ["e-1"]
    (replayed,) = await take(admin, OPEN_CARD)
    assert replayed.headers["replayed_from"] == DEAD
    (left,) = await take(admin, DEAD)  # kept in place by the operator user: its copy at the tail, then the ack
    assert left.headers["event_id"] == "e-2"


def _dead_letters(status_json: str, kind: str) -> int | None:
    return {k["kind"]: k["dead"]["messages"] for k in json.loads(status_json)["kinds"]}.get(kind)


Operation = Callable[[aio_pika.abc.AbstractChannel], Awaitable[object]]


def get(queue: str) -> Operation:
    return lambda channel: _get(channel, queue)


def consume(queue: str) -> Operation:
    async def start(channel: aio_pika.abc.AbstractChannel) -> None:
        async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await asyncio.sleep(0)

        await (await channel.get_queue(queue, ensure=False)).consume(ignore)

    return start


def purge(queue: str) -> Operation:
    return lambda channel: _purge(channel, queue)


async def _get(channel: aio_pika.abc.AbstractChannel, queue: str) -> object:
    return await (await channel.get_queue(queue, ensure=False)).get(no_ack=False, fail=False)


async def _purge(channel: aio_pika.abc.AbstractChannel, queue: str) -> object:
    return await (await channel.get_queue(queue, ensure=False)).purge()


def delete(queue: str) -> Operation:
    return lambda channel: channel.queue_delete(queue)


def declare_queue(queue: str) -> Operation:
    return lambda channel: channel.declare_queue(queue, durable=True)


def publish(exchange: str, routing_key: str) -> Operation:
    async def send(channel: aio_pika.abc.AbstractChannel) -> None:
        target = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(b"{}"), routing_key=routing_key)

    return send


def delete_exchange(name: str) -> Operation:
    return lambda channel: channel.exchange_delete(name)


REFUSED = [
    # The gateway publishes to hypercard.events and does nothing else.
    ("gateway", "get from a kind's queue", get(OPEN_CARD)),
    ("gateway", "consume a kind's queue", consume(OPEN_CARD)),
    ("gateway", "purge a kind's queue", purge(OPEN_CARD)),
    ("gateway", "delete a kind's queue", delete(OPEN_CARD)),
    ("gateway", "get a dead letter", get(DEAD)),
    ("gateway", "get an unverified event", get(topology.UNVERIFIED_QUEUE)),
    ("gateway", "get an unrouted event", get(topology.UNROUTED_QUEUE)),
    ("gateway", "publish straight into a queue", publish("", OPEN_CARD)),
    ("gateway", "declare a queue", declare_queue("hypercard.mine")),
    ("gateway", "delete the events exchange", delete_exchange(topology.EVENTS_EXCHANGE)),
    # The workers consume their own group's queues and republish to its retry and dead queues.
    (
        "worker-cards",
        "publish to hypercard.events (replay is the operator's)",
        publish(topology.EVENTS_EXCHANGE, OPEN_CARD),
    ),
    ("worker-cards", "delete its own kind's queue", delete(OPEN_CARD)),
    ("worker-cards", "delete a dead queue", delete(DEAD)),
    ("worker-cards", "get a dead letter", get(DEAD)),
    ("worker-cards", "get an invalid event", get(topology.INVALID_QUEUE)),
    ("worker-cards", "get an unverified event", get(topology.UNVERIFIED_QUEUE)),
    ("worker-cards", "declare a kind's queue", declare_queue(topology.kind_queue("NEW_KIND"))),
    ("worker-cards", "delete the events exchange", delete_exchange(topology.EVENTS_EXCHANGE)),
    # ... and nothing of another group's (issue 26: one-time codes, a purge, a retry queue deleted).
    ("worker-cards", "get another group's one-time code", get(topology.kind_queue("OPT_CODE"))),
    ("worker-cards", "consume another group's queue", consume(topology.kind_queue("OPT_CODE"))),
    ("worker-auth", "purge another group's queue", purge(topology.kind_queue("CARD_CONFIG_CHANGE"))),
    ("worker-cards", "delete another group's retry queue", delete(topology.retry_queue("RECHARGE", 1))),
    ("worker-cards", "declare another group's retry queue", declare_queue(topology.retry_queue("OPT_CODE", 1))),
    # The operator tools read the dead and holding queues and republish.
    ("operator", "get from a kind's queue", get(OPEN_CARD)),
    ("operator", "consume a kind's queue", consume(OPEN_CARD)),
    ("operator", "purge a kind's queue", purge(OPEN_CARD)),
    ("operator", "delete a dead queue", delete(DEAD)),
    ("operator", "declare a queue", declare_queue("hypercard.mine")),
    ("operator", "delete the events exchange", delete_exchange(topology.EVENTS_EXCHANGE)),
]


# Issue 26: the operator user publishes only through the replay exchange, hypercard.to-queue; through amq.default it
# could put anything into a kind's live queue, and through hypercard.events anything a kind's queue is bound to.
OPERATOR_PUBLISHES_ONLY_THROUGH_THE_REPLAY_EXCHANGE = [
    ("operator", "publish straight into a kind's queue", publish("", OPEN_CARD)),
    ("operator", "publish straight into a dead queue", publish("", DEAD)),
    ("operator", "publish to hypercard.events", publish(topology.EVENTS_EXCHANGE, topology.routing_key("OPEN_CARD"))),
]


@pytest.mark.broker
@pytest.mark.parametrize(
    ("role", "what", "operation"),
    OPERATOR_PUBLISHES_ONLY_THROUGH_THE_REPLAY_EXCHANGE,
    ids=[f"{r}: {w}" for r, w, _ in OPERATOR_PUBLISHES_ONLY_THROUGH_THE_REPLAY_EXCHANGE],
)
async def test_the_operator_publishes_only_through_the_replay_exchange(broker_users, role, what, operation):
    connection = await aio_pika.connect(broker_users[role])
    try:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="ACCESS_REFUSED"):
            await operation(channel)
    finally:
        await connection.close()


def test_the_readme_lists_what_each_role_is_refused_as_the_broker_is_asked_below():
    """The README's "can / refused" table of Broker users: its refused cells are the operations tried below."""
    expected: dict[str, list[str]] = {}
    for role, what, _ in REFUSED + OPERATOR_PUBLISHES_ONLY_THROUGH_THE_REPLAY_EXCHANGE:
        expected.setdefault("worker-{group}" if role.startswith("worker-") else role, []).append(what)
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0] in expected:
            rows[cells[0]] = cells[2].split("; ")
    assert rows == expected


@pytest.mark.broker
@pytest.mark.parametrize(("role", "what", "operation"), REFUSED, ids=[f"{r}: {w}" for r, w, _ in REFUSED])
async def test_a_role_cannot_do_the_others_jobs(broker_users, role, what, operation):
    connection = await aio_pika.connect(broker_users[role])
    try:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="ACCESS_REFUSED"):
            await operation(channel)
    finally:
        await connection.close()
