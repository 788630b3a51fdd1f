"""`hypercard-worker OPEN_CARD RECHARGE ...` or `hypercard-worker --all`: consume and handle those kinds."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import sys
from collections.abc import Callable

import asyncpg
import structlog
import uvloop

from infra.commands import EXIT_INTERRUPTED, add_version, database_down, port_in_use
from infra.logs import configure_logging
from infra.settings import SettingsError, load_settings
from infra.signals import stop_requested
from infra.tracing import start_tracing
from workers.app import UnknownKind, create_worker
from workers.health import WorkerHealth
from workers.registry import REGISTRY, load_handler_modules
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

log = structlog.get_logger("workers")


class Interrupted(Exception):
    """Stopped (Ctrl-C, SIGTERM) before it consumed: nothing was taken, nothing to drain."""


def _listen(start: Callable[[], None], port: int, setting: str) -> None:
    """`start()` listening on `port`; a port in use is a SettingsError naming `setting` (one line, exit 2)."""
    try:
        start()
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise SettingsError(port_in_use(port, "0.0.0.0", setting)) from error  # noqa: S104


async def serve(runtime: WorkerRuntime, settings: WorkerSettings) -> None:
    _listen(lambda: runtime.metrics.serve(settings.metrics_port), settings.metrics_port, "HC_METRICS_PORT")
    health = WorkerHealth(lambda: runtime.consuming)
    _listen(lambda: health.start(settings.health_port), settings.health_port, "HC_HEALTH_PORT")
    stop = asyncio.ensure_future(stop_requested())
    starting = asyncio.ensure_future(runtime.start())
    await asyncio.wait({stop, starting}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # Ctrl-C or SIGTERM while it connects (a broker that never answers the handshake)
        starting.cancel()
        await asyncio.wait({starting})
        await runtime.stop()
        health.stop()
        raise Interrupted
    try:
        starting.result()
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:  # the pool is the first thing it opens
        stop.cancel()
        health.stop()
        raise SettingsError(database_down(error)) from error
    await stop
    log.info("stopping: finishing in-flight handlers", grace_seconds=settings.shutdown_grace)
    await runtime.stop()
    if runtime.tracing is not None:
        runtime.tracing.shutdown()  # the spans still buffered are exported
    health.stop()
    log.info("worker stopped")
    if runtime.abandoned_handlers:  # deaf to their cancellation: the event loop would wait for them forever
        log.warning("exiting without the handlers that ignored their cancellation",
                    count=runtime.abandoned_handlers)  # fmt: skip
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hypercard-worker", description=__doc__)
    parser.add_argument("kinds", nargs="*", help="event kinds to handle, e.g. OPEN_CARD RECHARGE")
    parser.add_argument("--all", action="store_true", help="every kind that has a handler")
    parser.add_argument("--handlers", action="append", default=[], help="handler modules, a,b (also HC_HANDLERS)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (HC_METRICS_PORT; 0: none)")
    add_version(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(WorkerSettings, metrics_port=args.metrics_port)
    except SettingsError as error:
        print(f"hypercard-worker: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    try:
        load_handler_modules([*settings.handlers, *args.handlers])
    except ImportError as error:  # a ModuleLoadError names the module; the default handlers' own is a bug
        print(f"hypercard-worker: {error}", file=sys.stderr)
        sys.exit(2)
    kinds = REGISTRY.kinds if args.all else [kind.upper() for kind in args.kinds]
    try:
        runtime = create_worker(settings, kinds, tracing=start_tracing("hypercard-worker"))
    except (UnknownKind, SettingsError) as error:
        print(f"hypercard-worker: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        uvloop.run(serve(runtime, settings))
    except Interrupted:
        print("hypercard-worker: interrupted while starting, before it consumed anything", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except SettingsError as error:
        print(f"hypercard-worker: {error}", file=sys.stderr)
        sys.exit(2)
