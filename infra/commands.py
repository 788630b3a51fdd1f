"""What every command shares: `--version`, Ctrl-C that stops between two steps, and one line for each expected
failure, naming its cause and the setting to change (exit 2)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from importlib.metadata import PackageNotFoundError, version

import aio_pika
import aiohttp
import aiormq
import asyncpg

from infra.broker import VhostRefused

EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT


def add_version(parser: argparse.ArgumentParser) -> None:
    try:
        number = version("hypercard-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        number = "unknown"
    parser.add_argument("--version", action="version", version=f"%(prog)s {number}")


def quiet_library_logs() -> None:
    """The broker and HTTP libraries' own log lines kept off a tool's stderr: the tool says what failed, once."""
    for name in ("aio_pika", "aiormq", "aiohttp", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class Interruption:
    """Set by SIGINT (Ctrl-C) while a pass runs: the pass checks it between two messages and stops there."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        """Call from the running loop once connected: SIGINT sets the flag instead of raising KeyboardInterrupt
        mid-step. Until then asyncio.run's own handler ends a wait (a broker that never answers the handshake) at
        once, and the command says so in one line."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.request)

    def request(self) -> None:
        self.requested = True


def why(error: BaseException) -> str | None:
    """An expected failure in one line naming the setting to change; None for an unexpected one."""
    if isinstance(error, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError):
        return "the broker refused the user name or password: check HC_AMQP_URL"
    if isinstance(error, VhostRefused):
        return (
            f"the broker has no vhost {error.vhost!r}, or this user may not use it: check the vhost at the end of "
            "HC_AMQP_URL (hypercard-broker-setup creates it)"
        )
    if isinstance(error, aiormq.exceptions.ChannelAccessRefused):
        return "this broker user may not read that queue: use the operator user's HC_AMQP_URL"
    if isinstance(error, aiohttp.ClientResponseError) and error.status in (401, 403):
        return (
            f"the management API refused the user name or password, or the user is no administrator (HTTP "
            f"{error.status}): check the credentials in HC_AMQP_URL, which the API at HC_MANAGEMENT_URL is given"
        )
    if isinstance(error, aiohttp.ClientResponseError):
        return f"the management API answered HTTP {error.status}: check HC_MANAGEMENT_URL"
    if isinstance(error, aiohttp.ClientError):
        return (
            "no management API answers there: set HC_MANAGEMENT_URL, or switch the broker's management plugin on "
            f"({type(error).__name__})"
        )
    if isinstance(error, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return "the database refused the user name or password: check HC_DATABASE_URL"
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return "no such database: check HC_DATABASE_URL"
    if isinstance(error, aio_pika.exceptions.AMQPError | OSError | TimeoutError):
        name = type(error).__name__
        return f"the broker is unreachable, it does not answer: check HC_AMQP_URL and that RabbitMQ runs ({name})"
    return None


def database_down(error: BaseException) -> str:
    name = type(error).__name__
    return f"the database is unreachable, it does not answer: check HC_DATABASE_URL and that PostgreSQL runs ({name})"


def port_in_use(port: int, host: str, setting: str) -> str:
    return f"port {port} on {host} is in use by another process: stop it or set {setting} to a free port"
