"""Settings for the gateway and the workers, decoded from HC_* environment variables into one typed Struct."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from schemas.events import KIND_NAME
from schemas.topology import DEFAULT_DELIVERY_LIMIT

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]

ENV_PREFIX = "HC_"
# Variables holding comma-separated lists.
LIST_FIELDS = {"allowed_ips", "trusted_proxies", "retry_delays", "handlers", "extra_paths", "api_key"}


class SettingsError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    host: str = "0.0.0.0"
    port: Port = 8080
    platform_public_key: str = ""
    # The merchant's api key(s) (several during a rotation): a push with another api-key header is refused.
    api_key: tuple[str, ...] = ()
    # enforce: refuse unsigned or badly signed events; monitor: accept them but log and count; off: development.
    signature_mode: Literal["enforce", "monitor", "off"] = "enforce"
    allowed_ips: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: Annotated[int, msgspec.Meta(ge=2)] = 65536
    publish_timeout: Seconds = 5.0
    read_timeout: Seconds = 10.0
    extra_paths: tuple[str, ...] = ()
    drain_seconds: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    processes: Annotated[int, msgspec.Meta(ge=1)] = 1
    delivery_limit: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_DELIVERY_LIMIT
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    prefetch: Annotated[int, msgspec.Meta(ge=1)] = 32
    handler_timeout: Seconds = 30.0
    retry_delays: tuple[Annotated[float, msgspec.Meta(gt=0)], ...] = (1.0, 10.0, 60.0, 600.0, 3600.0)
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    handlers: tuple[str, ...] = ()
    metrics_port: Port = 9100
    gateway_metrics_port: Port = 9101  # /metrics of the gateway, off the push port; 0: none
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __post_init__(self) -> None:
        for name in ("allowed_ips", "trusted_proxies"):
            for cidr in getattr(self, name):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise SettingsError(f"{env_name(name)}: {cidr!r} is not an IP address or CIDR") from None
        for path, kind in self.extra_path_kinds.items():
            if not re.fullmatch(r"/[A-Za-z0-9_./-]*", path):
                raise SettingsError(f"HC_EXTRA_PATHS: {path!r} is not a URL path (write /path or /path=KIND)")
            if kind is not None and not KIND_NAME.match(kind):
                raise SettingsError(f"HC_EXTRA_PATHS: {kind!r} is not an event kind such as OPEN_CARD")

    @property
    def amqp_urls(self) -> list[str]:
        """HC_AMQP_URL may list several cluster nodes, comma-separated; they are tried in turn."""
        return [url.strip() for url in self.amqp_url.split(",") if url.strip()]

    @property
    def extra_path_kinds(self) -> dict[str, str | None]:
        """HC_EXTRA_PATHS entries `/path` or `/path=KIND` (the kind used for bodies without notify_type)."""
        paths: dict[str, str | None] = {}
        for entry in self.extra_paths:
            path, _, kind = entry.partition("=")
            paths[path.strip()] = kind.strip() or None
        return paths


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Decode HC_* variables (and explicit overrides, e.g. from the command line) into Settings."""
    environ = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field in Settings.__struct_fields__:
        value = environ.get(env_name(field))
        if value is None or value.strip() == "":
            continue
        if field in LIST_FIELDS:
            raw[field] = [item.strip() for item in value.split(",") if item.strip()]
        else:
            raw[field] = value.strip()
    raw.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as error:
        raise SettingsError(_name_the_variable(str(error))) from None


def _name_the_variable(message: str) -> str:
    # msgspec says "... - at `$.port`" (or `$.retry_delays[1]`); the operator knows the variable as HC_PORT.
    found = re.search(r"`\$\.([a-z_]+)", message)
    if found is None:
        return message
    return f"{env_name(found.group(1))}: {message.split(' - at ')[0]}"
