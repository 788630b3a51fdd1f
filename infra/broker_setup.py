"""`hypercard-broker-setup`: once per deployment, as the broker's administrator, create the vhost, one user per role
(and per group of workers) with the permissions of `infra.permissions`, the holding queues' delivery-limit policy,
and the whole topology, so that the gateway, the workers and the operator tools run as users that may do their own
job only.

    HC_AMQP_URL=amqp://admin:…@rabbitmq:5672/ \\
    HYPERCARD_GATEWAY_AMQP_URL=amqp://hypercard-gateway:…@rabbitmq:5672/ \\
    HYPERCARD_OPERATOR_AMQP_URL=amqp://hypercard-operator:…@rabbitmq:5672/ \\
    HYPERCARD_WORKER_CARDS_AMQP_URL=amqp://hypercard-worker-cards:…@rabbitmq:5672/ \\
    HYPERCARD_WORKER_CARDS_KINDS=OPEN_CARD,CANCEL_CARD,CARD_CONFIG_CHANGE,CONSUME \\
    hypercard-broker-setup [--kind CARD_STATUS_CHANGE]

Each HYPERCARD_WORKER_<GROUP>_AMQP_URL, with its _KINDS, is the user of one group of workers: it reads those kinds'
queues and no other's.

Each role's user and password are the ones in the URL its processes are given: nothing to keep in step, and no
password in the repository. Users and permissions are set again on every run (a changed password takes effect), the
topology is declared idempotently (with HC_DELIVERY_LIMIT). Users go through the management API (HC_MANAGEMENT_URL,
by default port 15672 of the broker's host, https on 15671 for an amqps URL, with the administrator's credentials)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import sys
from collections.abc import Mapping
from urllib.parse import quote

import aiohttp
import aiormq
from yarl import URL

from infra import broker, declare
from infra.commands import EXIT_INTERRUPTED, add_version, quiet_library_logs, why
from infra.kinds import load_kinds
from infra.management import management_base, management_url_setting
from infra.permissions import ROLES, Role, worker_role
from infra.settings import BrokerSettings, SettingsError, load_settings
from schemas import topology
from schemas.events import KIND_NAME
from schemas.kinds import KINDS

WORKER_GROUP = re.compile(r"HYPERCARD_WORKER_([A-Z0-9_]+)_AMQP_URL")


def role_url_variable(role: str) -> str:
    """Where the set-up reads a role's broker URL (not an HC_* setting: no process of the project reads it)."""
    return f"HYPERCARD_{role.upper().replace('-', '_')}_AMQP_URL"


def roles_from(environ: Mapping[str, str]) -> list[tuple[Role, str]]:
    """The gateway's and the operator's users, and one per worker group (its URL and _KINDS), as the environment
    names them."""
    users = [
        (role, environ[role_url_variable(name)]) for name, role in ROLES.items() if environ.get(role_url_variable(name))
    ]
    for variable, url in sorted(environ.items()):
        group = WORKER_GROUP.fullmatch(variable)
        if group is None or not url:
            continue
        kinds_variable = variable.removesuffix("_AMQP_URL") + "_KINDS"
        kinds = [kind.strip() for kind in environ.get(kinds_variable, "").split(",") if kind.strip()]
        if not kinds or not all(KIND_NAME.match(kind) for kind in kinds):
            raise SetupError(f"{kinds_variable}: the kinds this worker group consumes, such as OPEN_CARD,CANCEL_CARD")
        users.append((worker_role(f"worker-{group.group(1).lower().replace('_', '-')}", kinds), url))
    return users


class SetupError(Exception):
    """The set-up cannot go on; the message says what to change."""


def vhost_of(url: URL) -> str:
    return url.path[1:] or "/"


async def set_up(
    admin_url: str,
    role_urls: list[tuple[Role, str]],
    *,
    kinds: list[str],
    delivery_limit: int,
    management_url: str | None = None,
) -> list[str]:
    """Users, permissions and the topology in the admin URL's vhost. Returns what was done, one line each."""
    admin = URL(admin_url)
    vhost = vhost_of(admin)
    users: list[tuple[Role, URL]] = []
    for role, url in role_urls:
        role_url, variable = URL(url), role_url_variable(role.name)
        if vhost_of(role_url) != vhost:
            raise SetupError(f"{variable} names vhost {vhost_of(role_url)!r}, HC_AMQP_URL {vhost!r}")
        if not role_url.user or not role_url.password or role_url.user == admin.user:
            raise SetupError(f"{variable} needs a user of its own and a password")
        users.append((role, role_url))
    base = management_base(admin_url, management_url)
    done: list[str] = []
    credentials = base64.b64encode(f"{admin.user or 'guest'}:{admin.password or 'guest'}".encode()).decode()
    encoded = quote(vhost, safe="")
    headers = {"Authorization": f"Basic {credentials}"}
    async with aiohttp.ClientSession(base_url=base, headers=headers, raise_for_status=True) as api:
        async with api.get(f"/api/vhosts/{encoded}", raise_for_status=False) as found:
            missing = found.status == 404
            if not missing:
                found.raise_for_status()  # wrong credentials, or a user that is not an administrator
        if missing:  # an existing vhost, and the administrator's rights in it, are left as they are
            await api.put(f"/api/vhosts/{encoded}", json={})
            await api.put(
                f"/api/permissions/{encoded}/{quote(admin.user or 'guest', safe='')}",
                json={"configure": ".*", "write": ".*", "read": ".*"},
            )
            done.append(f"vhost {vhost} created")
        for role, user_url in users:
            user = quote(user_url.user or "", safe="")
            await api.put(f"/api/users/{user}", json={"password": user_url.password, "tags": ",".join(role.tags)})
            await api.put(
                f"/api/permissions/{encoded}/{user}",
                json={"configure": role.configure, "write": role.write, "read": role.read},
            )
            done.append(f"user {user_url.user}: the {role.name}'s permissions in vhost {vhost}")
        # The holding queues' delivery limit, explicit: RabbitMQ 4.0 to 4.2 would otherwise drop a dead letter
        # after 20 returns (README, "Holding queues never drop a message"). A policy, not a queue argument, so it
        # also applies to queues declared before it.
        await api.put(
            f"/api/policies/{encoded}/{topology.HOLDING_POLICY}",
            json={"pattern": topology.HOLDING_PATTERN, "apply-to": "queues", "priority": 10,
                  "definition": {"delivery-limit": topology.HOLDING_DELIVERY_LIMIT}},
        )  # fmt: skip
        limit = topology.HOLDING_DELIVERY_LIMIT
        done.append(f"policy {topology.HOLDING_POLICY}: delivery limit {limit} on the holding queues")
    connection = await broker.connect([admin_url])
    try:
        await declare.declare_topology(connection, kinds, delivery_limit)
    finally:
        await connection.close()
    done.append(f"topology declared in vhost {vhost}: {len(kinds)} kinds")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hypercard-broker-setup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", action="append", default=[], help="also declare this kind's queues (a user kind)")
    add_version(parser)
    args = parser.parse_args(argv)
    quiet_library_logs()
    try:
        settings = load_settings(BrokerSettings)
        management_url_setting(os.environ.get("HC_MANAGEMENT_URL"))
    except SettingsError as error:
        parser.exit(2, f"hypercard-broker-setup: {error}\n")
    for kind in args.kind:
        if not KIND_NAME.match(kind):
            parser.exit(2, f"hypercard-broker-setup: {kind!r} is not an event kind such as OPEN_CARD\n")
    try:  # the installed kinds (hypercard.kinds entry points, HC_KINDS) are declared with the built-in ones
        load_kinds([os.environ.get("HC_KINDS", "")])
    except ImportError as error:
        parser.exit(2, f"hypercard-broker-setup: {error}\n")
    kinds = sorted(KINDS.kinds() | {kind.upper() for kind in args.kind})
    try:
        role_urls = roles_from(os.environ)
        done = asyncio.run(
            set_up(
                settings.amqp_urls[0],
                role_urls,
                kinds=kinds,
                delivery_limit=settings.delivery_limit,
                management_url=os.environ.get("HC_MANAGEMENT_URL"),
            )
        )
    except KeyboardInterrupt:
        parser.exit(EXIT_INTERRUPTED, "hypercard-broker-setup: interrupted; what it did stands, and running it again "
                                      "does the rest (it is idempotent)\n")  # fmt: skip
    except (SetupError, declare.TopologyMismatch) as error:
        parser.exit(2, f"hypercard-broker-setup: {error}\n")
    except (OSError, aiohttp.ClientError, aiormq.exceptions.AMQPError) as error:
        parser.exit(2, f"hypercard-broker-setup: {why(error)}\n")
    for line in done:
        print(line)
    named = {role.name for role, _ in role_urls}
    missing = [role_url_variable(name) for name in ROLES if name not in named]
    if not any(name.startswith("worker-") for name in named):
        missing.append("HYPERCARD_WORKER_<GROUP>_AMQP_URL and _KINDS")
    if missing:
        print(f"no user set up for: {', '.join(missing)}", file=sys.stderr)
