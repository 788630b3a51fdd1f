"""Typed application keys: the one place where the app's shared objects are named."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.client_ip import ClientAddressPolicy
from gateway.metrics import GatewayMetrics
from gateway.platform_keys import PlatformKeyFile
from gateway.publisher import Publisher
from gateway.settings import GatewaySettings
from gateway.signature import SignatureVerifier
from infra.identifiers import IdentifierKey

if TYPE_CHECKING:
    from infra.spans import Tracing  # imports OpenTelemetry: only when tracing is on (infra.tracing)

SETTINGS = web.AppKey("settings", GatewaySettings)
PUBLISHER = web.AppKey("publisher", Publisher)
VERIFIER: web.AppKey[SignatureVerifier | None] = web.AppKey("verifier")
# Where VERIFIER's keys come from, read again on SIGHUP.
KEY_FILE: web.AppKey[PlatformKeyFile | None] = web.AppKey("key_file")
ADDRESS_POLICY = web.AppKey("address_policy", ClientAddressPolicy)
METRICS = web.AppKey("metrics", GatewayMetrics)
IDENTIFIERS = web.AppKey("identifiers", IdentifierKey)  # keys the event id (HC_ID_SECRET)
DRAINING = web.AppKey("draining", asyncio.Event)  # set on SIGTERM: /readyz answers 503 from then on
# The spans of each push (infra.spans) when tracing is on (infra.tracing); None, the default, costs a None check.
TRACING: web.AppKey[Tracing | None] = web.AppKey("tracing")
