"""`hypercard-status`: queue depth, consumers and dead letters per kind at a glance.

Exits 1 when a dead, invalid, unrouted or unverified queue holds messages (usable as a cron alert), 2 when the broker is
unreachable. Reads passive queue declares: no management plugin needed."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

import aio_pika
import aiormq

from infra import broker
from infra.settings import BrokerSettings, SettingsError, load_settings
from schemas import topology
from schemas.events import KNOWN_KINDS


@dataclass(frozen=True)
class QueueStatus:
    name: str
    messages: int | None  # None: the queue does not exist
    consumers: int | None


async def queue_status(connection: aio_pika.abc.AbstractConnection, name: str) -> QueueStatus:
    # A passive declare of a missing queue closes its channel: one channel per look-up.
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return QueueStatus(name, None, None)
    result = queue.declaration_result
    await channel.close()
    return QueueStatus(name, result.message_count, result.consumer_count)


async def collect(
    urls: list[str], kinds: list[str]
) -> tuple[list[tuple[str, QueueStatus, QueueStatus]], list[QueueStatus]]:
    connection = await broker.connect(urls)
    try:
        per_kind = [
            (
                kind,
                await queue_status(connection, topology.kind_queue(kind)),
                await queue_status(connection, topology.dead_queue(kind)),
            )
            for kind in kinds
        ]
        quarantine = [
            await queue_status(connection, topology.INVALID_QUEUE),
            await queue_status(connection, topology.UNROUTED_QUEUE),
            await queue_status(connection, topology.UNVERIFIED_QUEUE),
        ]
    finally:
        await connection.close()
    return per_kind, quarantine


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def render(per_kind: list[tuple[str, QueueStatus, QueueStatus]], quarantine: list[QueueStatus]) -> tuple[str, bool]:
    """The table, and whether anything needs an operator's attention."""
    lines = [f"{'kind':<22} {'ready':>7} {'consumers':>9} {'dead':>6}"]
    alert = False
    for kind, queue, dead in per_kind:
        flag = "  <- dead letters" if dead.messages else ""
        alert |= bool(dead.messages)
        lines.append(f"{kind:<22} {_n(queue.messages):>7} {_n(queue.consumers):>9} {_n(dead.messages):>6}{flag}")
    lines.append("")
    for queue in quarantine:
        alert |= bool(queue.messages)
        flag = "  <- needs a look (hypercard-replay)" if queue.messages else ""
        lines.append(f"{queue.name:<22} {_n(queue.messages):>7}{flag}")
    return "\n".join(lines), alert


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hypercard-status", description=__doc__)
    parser.add_argument("--kind", action="append", default=[], help="also show this (user) kind")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(BrokerSettings)
    except SettingsError as error:
        parser.exit(2, f"hypercard-status: {error}\n")
    kinds = sorted(KNOWN_KINDS | {kind.upper() for kind in args.kind})
    try:
        per_kind, quarantine = asyncio.run(collect(settings.amqp_urls, kinds))
    except (OSError, aiormq.exceptions.AMQPError) as error:
        parser.exit(2, f"hypercard-status: broker unreachable: {type(error).__name__}: {error}\n")
    table, alert = render(per_kind, quarantine)
    print(table)
    sys.exit(1 if alert else 0)
