"""`hypercard-gateway`: serve the push endpoint, in one process or several sharing the port (SO_REUSEPORT)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import multiprocessing
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable

import structlog
import uvloop
from aiohttp import web

from gateway.app import create_app, load_key_file, reload_platform_keys
from gateway.app_keys import DRAINING, METRICS
from gateway.metrics import serve_all_processes
from gateway.server import ContractAppRunner
from gateway.settings import GatewaySettings
from infra.commands import add_version, port_in_use
from infra.identifiers import identifier_key
from infra.logs import configure_logging
from infra.settings import SettingsError, load_settings
from infra.signals import stop_requested
from infra.tracing import requested_exporters, start_tracing

log = structlog.get_logger("gateway")


async def serve(settings: GatewaySettings, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, then drain: /readyz answers 503 for HC_DRAIN_SECONDS while requests are still
    served (the load balancer takes this instance out), in-flight requests finish, then the broker is closed."""
    tracing = start_tracing("hypercard-gateway")  # None unless OTEL_* asks for it (infra.tracing)
    app = create_app(settings, tracing)
    # SIGHUP: read HC_PLATFORM_PUBLIC_KEY again (a key rotation); ignored until here, see main().
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_platform_keys, app, "SIGHUP")
    runner = ContractAppRunner(
        app,
        access_log=None,
        shutdown_timeout=max(settings.publish_timeout * 2, 10.0),
        # aiohttp closes a connection still waiting for a complete request line and headers when this runs out,
        # from its opening or from its last reply: it bounds slow headers and idle keep-alive connections alike.
        keepalive_timeout=settings.read_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None, backlog=1024)
    await _bind(runner, site.start, settings.host, settings.port, "HC_PORT")
    if not reuse_port:  # with --processes N the parent serves the sum of all processes
        metrics_port = settings.gateway_metrics_port

        async def serve_metrics() -> None:
            app[METRICS].serve(settings.host, metrics_port)

        await _bind(runner, serve_metrics, settings.host, metrics_port, "HC_GATEWAY_METRICS_PORT")
    log.info("gateway listening", host=settings.host, port=settings.port, metrics_port=settings.gateway_metrics_port)

    await stop_requested()

    app[DRAINING].set()
    # Idle keep-alive connections are closed now, while the load balancer is still taking this instance out;
    # from here on every reply says `Connection: close`. A client that picked an idle connection at this very
    # moment gets no reply and sends again; a request already being read is served.
    runner.close_idle_connections()
    log.info("draining", seconds=settings.drain_seconds)
    await asyncio.sleep(settings.drain_seconds)
    await runner.cleanup()  # stops accepting, waits for in-flight requests, then runs cleanup_ctx (broker close)
    if tracing is not None:
        tracing.shutdown()  # the spans still buffered are exported
    log.info("gateway stopped")


async def _bind(
    runner: web.AppRunner, start: Callable[[], Awaitable[None]], host: str, port: int, setting: str
) -> None:
    """`start()` listening on `port`; a port in use is a SettingsError naming `setting` (one line, exit 2)."""
    try:
        await start()
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        await runner.cleanup()
        raise SettingsError(port_in_use(port, host, setting)) from error


def _serve_process(settings: GatewaySettings, reuse_port: bool) -> None:
    configure_logging(settings.log_level)
    uvloop.run(serve(settings, reuse_port))


def _run_processes(settings: GatewaySettings) -> int:
    # prometheus-client multi-process mode: every process writes its metrics to this folder and serves the sum.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hypercard-metrics-")
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_serve_process, args=(settings, True), name=f"gateway-{n}")
        for n in range(settings.processes)
    ]
    for child in children:
        child.start()
    serve_all_processes(settings.host, settings.gateway_metrics_port)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # every process reloads its keys
    for child in children:
        child.join()
    return max((child.exitcode or 0) for child in children)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hypercard-gateway", description=__doc__)
    parser.add_argument("--host", help="address to listen on (HC_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (HC_PORT)")
    parser.add_argument("--processes", type=int, help="number of server processes sharing the port (HC_PROCESSES)")
    add_version(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(GatewaySettings, host=args.host, port=args.port, processes=args.processes)
        configure_logging(settings.log_level)
        # A SIGHUP before the server is up would end the process (its default action): it is ignored until serve()
        # handles it. Processes started from here inherit the ignoring, and so are never ended by a forwarded one.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if settings.processes > 1:
            load_key_file(settings)  # refuse a bad key file or secret here, once, not in every child
            identifier_key(settings)
            requested_exporters()
            sys.exit(_run_processes(settings))
        uvloop.run(serve(settings))
    except SettingsError as error:
        print(f"hypercard-gateway: {error}", file=sys.stderr)
        sys.exit(2)
