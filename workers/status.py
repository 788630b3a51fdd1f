"""`hypercard-status`: every kind's queue (user kinds too), its consumers, rates in and out, and its dead letters;
then the queues that wait for an operator (invalid, unrouted, unverified).

    hypercard-status                  # one table
    hypercard-status --watch 2        # refreshed in place every 2 s (Ctrl-C to leave)
    hypercard-status --json           # for scripts

Exits 1 when a dead, invalid, unrouted or unverified queue holds messages (usable as a cron alert), 2 when the
broker is unreachable. The kinds bound to hypercard.events and the rates come from RabbitMQ's management API
(HC_MANAGEMENT_URL, by default port 15672 of the first broker node, https on 15671 for amqps, with its credentials;
`make dashboards` switches the plugin on). Without it, every kind in the registry of kinds (built-in, HC_HANDLERS and
HC_KINDS modules, the `hypercard.kinds` and `hypercard.handlers` entry points, and `--kind` ones) is read by passive
declares, without rates."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import asdict, dataclass, field
from urllib.parse import quote

import aio_pika
import aiohttp
import aiormq
import structlog
from yarl import URL

from infra import broker
from infra.commands import EXIT_INTERRUPTED, add_version, quiet_library_logs, why
from infra.kinds import load_kinds
from infra.management import management_base, management_url_setting
from infra.settings import BrokerSettings, SettingsError, load_settings
from schemas import topology
from schemas.kinds import KINDS
from workers.registry import load_handler_modules
from workers.settings import WorkerSettings

REVIEW_QUEUES = (topology.INVALID_QUEUE, topology.UNROUTED_QUEUE, topology.UNVERIFIED_QUEUE)
NOT_KINDS = {topology.INVALID_QUEUE, topology.UNVERIFIED_QUEUE}


@dataclass
class QueueFigures:
    queue: str
    messages: int | None  # None: the queue does not exist
    consumers: int | None = None
    in_per_s: float | None = None  # None: no rates (no management API)
    out_per_s: float | None = None


@dataclass
class KindStatus:
    kind: str
    queue: QueueFigures
    dead: QueueFigures


@dataclass
class Status:
    source: str  # "management" or "amqp"
    kinds: list[KindStatus] = field(default_factory=list)
    review: list[QueueFigures] = field(default_factory=list)

    @property
    def needs_attention(self) -> bool:
        return any(k.dead.messages for k in self.kinds) or any(q.messages for q in self.review)


def management_api(amqp_url: str) -> tuple[URL, dict[str, str], str]:
    """The management API's base URL, the headers that authenticate (the broker URL's credentials) and the vhost for
    a broker URL (HC_MANAGEMENT_URL overrides the base)."""
    url = URL(amqp_url)
    vhost = url.path[1:] or "/"
    base = management_base(amqp_url, os.environ.get("HC_MANAGEMENT_URL"))
    credentials = aiohttp.encode_basic_auth(url.user or "guest", url.password or "guest")
    return base, {"Authorization": credentials}, vhost


async def queue_names(amqp_url: str) -> list[str]:
    """Every queue of the broker URL's vhost, by the management API (raises when it cannot be read)."""
    base, headers, vhost = management_api(amqp_url)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, raise_for_status=True) as session:
        async with session.get(f"{base}/api/queues/{quote(vhost, safe='')}", params={"columns": "name"}) as reply:
            return [str(entry["name"]) for entry in await reply.json()]


async def from_management(amqp_url: str) -> Status:
    base, headers, vhost = management_api(amqp_url)
    encoded = quote(vhost, safe="")
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, raise_for_status=True) as session:
        async with session.get(f"{base}/api/exchanges/{encoded}/{topology.EVENTS_EXCHANGE}/bindings/source") as reply:
            bindings = await reply.json()
        columns = "name,messages,consumers,message_stats.publish_details.rate,message_stats.ack_details.rate"
        async with session.get(f"{base}/api/queues/{encoded}", params={"columns": columns}) as reply:
            queues = {entry["name"]: entry for entry in await reply.json()}

    def figures(name: str) -> QueueFigures:
        entry = queues.get(name)
        if entry is None:
            return QueueFigures(name, None)
        stats = entry.get("message_stats") or {}
        rates = [float((stats.get(key) or {}).get("rate") or 0.0) for key in ("publish_details", "ack_details")]
        return QueueFigures(name, entry.get("messages", 0), entry.get("consumers", 0), *rates)

    bound = sorted({b["destination"] for b in bindings if b.get("destination_type") == "queue"} - NOT_KINDS)
    kinds = [
        KindStatus(name.removeprefix("hypercard.").upper(), figures(name), figures(f"{name}.dead")) for name in bound
    ]
    return Status("management", kinds, [figures(name) for name in REVIEW_QUEUES])


async def from_amqp(connection: aio_pika.abc.AbstractConnection, kinds: list[str]) -> Status:
    """Passive declares: no management plugin needed, but no rates and only the kinds named here."""
    per_kind = [
        KindStatus(
            kind,
            await passive(connection, topology.kind_queue(kind)),
            await passive(connection, topology.dead_queue(kind)),
        )
        for kind in kinds
    ]
    return Status("amqp", per_kind, [await passive(connection, name) for name in REVIEW_QUEUES])


async def passive(connection: aio_pika.abc.AbstractConnection, name: str) -> QueueFigures:
    # A passive declare of a missing queue closes its channel: one channel per look-up.
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return QueueFigures(name, None)
    result = queue.declaration_result
    await channel.close()
    return QueueFigures(name, result.message_count, result.consumer_count)


async def collect(settings: BrokerSettings, extra_kinds: list[str]) -> Status:
    """From the management API of the node that answers on AMQP (an unreachable broker raises), else by AMQP."""
    connection = await broker.connect(settings.amqp_urls)
    try:
        try:
            return await from_management(str(broker.connection_url(connection)))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError):
            return await from_amqp(connection, sorted(KINDS.kinds() | set(extra_kinds)))
    finally:
        await connection.close()


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(status: Status) -> str:
    """The table an operator reads."""
    lines = [f"{'kind':<22} {'ready':>7} {'consumers':>9} {'in/s':>7} {'out/s':>7} {'dead':>6}"]
    for k in status.kinds:
        flag = "  <- dead letters" if k.dead.messages else ""
        flag += "  <- no consumer" if k.queue.consumers == 0 else ""
        lines.append(
            f"{k.kind:<22} {_n(k.queue.messages):>7} {_n(k.queue.consumers):>9} {_rate(k.queue.in_per_s):>7} "
            f"{_rate(k.queue.out_per_s):>7} {_n(k.dead.messages):>6}{flag}"
        )
    lines.append("")
    for queue in status.review:
        flag = "  <- needs a look (hypercard-replay)" if queue.messages else ""
        lines.append(f"{queue.queue:<22} {_n(queue.messages):>7} {'':>9} {_rate(queue.in_per_s):>7}{flag}")
    if status.source == "amqp":
        lines.append("\n(no management API: the kinds installed or named, no rates; `make dashboards` switches it on)")
    return "\n".join(lines)


async def watch(settings: BrokerSettings, extra_kinds: list[str], every: float) -> Status | None:
    """The table redrawn in place every `every` seconds until Ctrl-C; the last status drawn (None: interrupted before
    the broker answered). Ctrl-C sets an event the loop looks at, not only a cancellation: a library's wait may
    swallow one (asyncio.wait_for on Python 3.11), which kept the table drawing for ever."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    last: Status | None = None
    try:
        while not stop.is_set():
            collecting = asyncio.ensure_future(collect(settings, extra_kinds))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({collecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not collecting.done():
                collecting.cancel()
                break
            last = collecting.result()
            sys.stdout.write("\x1b[H\x1b[2J" + render(last) + f"\n\nevery {every:g} s; Ctrl-C to leave\n")
            sys.stdout.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return last


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hypercard-status", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", action="append", default=[], help="also show this kind without the management API")
    parser.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    parser.add_argument("--watch", type=float, metavar="SECONDS", help="refresh in place every SECONDS")
    add_version(parser)
    args = parser.parse_args(argv)
    # Handler modules log as they load: kept off stdout, which is the table's or the JSON document's.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    quiet_library_logs()
    try:
        settings = load_settings(WorkerSettings)
        load_handler_modules(settings.handlers)  # the installed kinds, and those of HC_HANDLERS and HC_KINDS
        load_kinds([os.environ.get("HC_KINDS", "")], use_entry_points=False)
        management_url_setting(os.environ.get("HC_MANAGEMENT_URL"))
    except (SettingsError, ImportError) as error:
        parser.exit(2, f"hypercard-status: {error}\n")
    extra = [kind.upper() for kind in args.kind]
    try:
        if args.watch:
            watched = asyncio.run(watch(settings, extra, args.watch))
            if watched is None:
                parser.exit(EXIT_INTERRUPTED, "hypercard-status: interrupted before the broker answered\n")
            status = watched
        else:
            status = asyncio.run(collect(settings, extra))
    except KeyboardInterrupt:
        parser.exit(EXIT_INTERRUPTED, "hypercard-status: interrupted before the broker answered\n")
    except (OSError, aiormq.exceptions.AMQPError) as error:
        parser.exit(2, f"hypercard-status: {why(error)}\n")
    if args.json:
        print(json.dumps({**asdict(status), "needs_attention": status.needs_attention}))
    elif not args.watch:
        print(render(status))
    sys.exit(1 if status.needs_attention else 0)
