"""The gateway's settings (HC_* variables; the README's settings table)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

import msgspec

from infra.settings import BrokerSettings, Port, Seconds, SettingsError, env_name
from schemas.events import kind_name_problem


class GatewaySettings(BrokerSettings, kw_only=True, frozen=True):
    host: str = "0.0.0.0"
    port: Port = 8080
    platform_public_key: str = ""
    # The merchant's api key(s) (several during a rotation): a push with another api-key header is refused.
    api_key: tuple[str, ...] = ()
    # enforce: refuse unsigned or badly signed events; monitor: keep them unverified; off: development.
    signature_mode: Literal["enforce", "monitor", "off"] = "enforce"
    allowed_ips: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    trust_any_proxy: bool = False  # HC_TRUSTED_PROXIES may then cover every address (a proxy that rewrites the header)
    max_body_bytes: Annotated[int, msgspec.Meta(ge=2)] = 65536
    # Client connections one gateway process keeps open; more are answered 503 and closed (each may hold a head of
    # up to 32 KB while it is being sent: gateway.server).
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1000
    publish_timeout: Seconds = 5.0
    read_timeout: Seconds = 10.0
    extra_paths: tuple[str, ...] = ()
    drain_seconds: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    processes: Annotated[int, msgspec.Meta(ge=1)] = 1
    gateway_metrics_port: Port = 9101  # /metrics of the gateway, off the push port; 0: none
    kinds: tuple[str, ...] = ()  # modules declaring kinds that are not installed (`infra.kinds`); entry points too

    def __post_init__(self) -> None:
        for name in ("allowed_ips", "trusted_proxies"):
            for cidr in getattr(self, name):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise SettingsError(f"{env_name(name)}: {cidr!r} is not an IP address or CIDR") from None
        if not self.trust_any_proxy and _covers_every_address(self.trusted_proxies):
            raise SettingsError(
                f"HC_TRUSTED_PROXIES: {','.join(self.trusted_proxies)} covers every IPv4 or IPv6 address, so any "
                "client could name its own address in X-Forwarded-For; list your proxies' networks (or set "
                "HC_TRUST_ANY_PROXY=true when every path to the gateway passes a proxy that rewrites the header)"
            )
        for path, kind in self.extra_path_kinds.items():
            if not re.fullmatch(r"/[A-Za-z0-9_./-]*", path):
                raise SettingsError(f"HC_EXTRA_PATHS: {path!r} is not a URL path (write /path or /path=KIND)")
            if kind is not None and (problem := kind_name_problem(kind)):
                raise SettingsError(f"HC_EXTRA_PATHS: {problem}; bind the path to an event kind such as OPEN_CARD")

    @property
    def extra_path_kinds(self) -> dict[str, str | None]:
        """HC_EXTRA_PATHS entries `/path` or `/path=KIND` (the kind used for bodies without notify_type)."""
        paths: dict[str, str | None] = {}
        for entry in self.extra_paths:
            path, _, kind = entry.partition("=")
            paths[path.strip()] = kind.strip() or None
        return paths


def _covers_every_address(cidrs: tuple[str, ...]) -> bool:
    """Whether the networks, merged, include 0.0.0.0/0 or ::/0 (also when split, as 0.0.0.0/1 and 128.0.0.0/1)."""
    networks = [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
    v4 = ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv6Network))
    return any(network.prefixlen == 0 for network in v4) or any(network.prefixlen == 0 for network in v6)
