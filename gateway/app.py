"""The gateway's app factory, used by the CLI and by the tests alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from cryptography.exceptions import UnsupportedAlgorithm

from gateway import views
from gateway.app_keys import (
    ADDRESS_POLICY,
    DRAINING,
    IDENTIFIERS,
    KEY_FILE,
    METRICS,
    PUBLISHER,
    SETTINGS,
    TRACING,
    VERIFIER,
)
from gateway.client_ip import ClientAddressPolicy
from gateway.metrics import GatewayMetrics
from gateway.platform_keys import CHECK_EVERY_SECONDS, PlatformKeyFile
from gateway.publisher import Publisher
from gateway.replies import reply_contract
from gateway.server import close_while_draining
from gateway.settings import GatewaySettings
from infra.identifiers import identifier_key
from infra.kinds import load_kinds
from infra.settings import SettingsError
from schemas.kinds import KINDS

if TYPE_CHECKING:
    from infra.spans import Tracing

COMMON_PATH = "/hc_sync/common"
log = structlog.get_logger("gateway")


def load_key_file(settings: GatewaySettings) -> PlatformKeyFile | None:
    if settings.signature_mode == "off":
        log.warning("SIGNATURE CHECKING IS OFF (HC_SIGNATURE_MODE=off): anyone can post events; for development only")
        return None
    if not settings.platform_public_key:
        raise SettingsError(
            f"HC_PLATFORM_PUBLIC_KEY: required when HC_SIGNATURE_MODE is {settings.signature_mode}; "
            "give the path of the platform's public key file (PEM)"
        )
    try:
        return PlatformKeyFile(settings.platform_public_key)
    except (OSError, ValueError, UnsupportedAlgorithm) as error:
        raise SettingsError(f"HC_PLATFORM_PUBLIC_KEY: cannot load {settings.platform_public_key}: {error}") from None


def reload_platform_keys(app: web.Application, cause: str) -> None:
    """Read HC_PLATFORM_PUBLIC_KEY again (SIGHUP, or the file changed); a file that does not load keeps the keys."""
    key_file = app[KEY_FILE]
    if key_file is None:
        return
    loaded = key_file.reload(cause)
    app[METRICS].key_reload_failed.set(0 if loaded else 1)
    if loaded:
        app[METRICS].start_key_series(key_file.verifier.fingerprints)


async def key_file_watch(app: web.Application) -> AsyncIterator[None]:
    """Reload the keys when their file changes: a rotation where nobody can send SIGHUP (a Kubernetes Secret)."""

    async def watch(key_file: PlatformKeyFile) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_SECONDS)
            if key_file.changed():
                reload_platform_keys(app, "the key file changed")

    key_file = app[KEY_FILE]
    watching = asyncio.create_task(watch(key_file), name="key-file-watch") if key_file is not None else None
    yield
    if watching is not None:
        watching.cancel()


async def broker_connection(app: web.Application) -> AsyncIterator[None]:
    publisher = app[PUBLISHER]
    # Start serving even if the broker is down: /readyz says so, pushes answer 503 and the platform retries.
    await publisher.start(wait=5.0)
    readiness = asyncio.create_task(report_readiness(app), name="readiness-metric")
    yield
    readiness.cancel()
    await publisher.close()


async def report_readiness(app: web.Application, every: float = 1.0) -> None:
    """hypercard_gateway_ready follows what /readyz answers, for the alert on a gateway that takes no pushes;
    hypercard_gateway_broker_blocked says when the reason is the broker's resource alarm."""
    while True:
        publisher = app[PUBLISHER]
        blocked = publisher.blocked is not None
        app[METRICS].broker_blocked.set(1 if blocked else 0)
        app[METRICS].ready.set(1 if publisher.ready and not blocked and not app[DRAINING].is_set() else 0)
        await asyncio.sleep(every)


def create_app(settings: GatewaySettings, tracing: Tracing | None = None) -> web.Application:
    """The gateway; `tracing` (`infra.tracing.start_tracing`) gives each push a span, None (the default) none."""
    app = web.Application(middlewares=[reply_contract], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[TRACING] = tracing
    key_file = load_key_file(settings)
    verifier = key_file.verifier if key_file is not None else None
    app[KEY_FILE], app[VERIFIER] = key_file, verifier
    app[IDENTIFIERS] = identifier_key(settings)  # in every signature mode: event ids are logged and published
    app[ADDRESS_POLICY] = ClientAddressPolicy(settings.allowed_ips, settings.trusted_proxies)
    app[PUBLISHER] = Publisher(settings.amqp_urls, settings.publish_timeout, settings.delivery_limit)
    try:  # the installed packages' kinds: validated, counted and logged as the built-in ones
        load_kinds(settings.kinds)
    except ImportError as error:  # infra.kinds.ModuleLoadError: the module, and what importing it raised
        raise SettingsError(str(error)) from None
    app[METRICS] = GatewayMetrics()
    app[METRICS].start_series(KINDS.kinds())
    if verifier is not None:
        app[METRICS].start_key_series(verifier.fingerprints)
    app[DRAINING] = asyncio.Event()
    app.cleanup_ctx.append(broker_connection)
    app.cleanup_ctx.append(key_file_watch)
    app.on_response_prepare.append(close_while_draining)

    app.router.add_post(COMMON_PATH, views.event_receiver())
    for path, kind in settings.extra_path_kinds.items():
        if path != COMMON_PATH:
            app.router.add_post(path, views.event_receiver(kind))
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    return app
