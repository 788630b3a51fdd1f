"""Who sent a request: the peer address, or X-Forwarded-For when the peer is a trusted proxy; the IP allow-list."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientAddressPolicy:
    """Resolves the client address and applies the allow-list (empty allow-list = any address)."""

    def __init__(self, allowed: Iterable[str] = (), trusted_proxies: Iterable[str] = ()) -> None:
        self.allowed = _networks(allowed)
        self.trusted_proxies = _networks(trusted_proxies)
        # The platform pushes from a handful of addresses: each peer/header combination is parsed once.
        self.client_address = functools.lru_cache(maxsize=1024)(self._client_address)  # type: ignore[method-assign]
        self.allows = functools.lru_cache(maxsize=1024)(self._allows)  # type: ignore[method-assign]

    def _trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted_proxies)

    def _client_address(self, peer: str | None, forwarded_for: Sequence[str] | str | None) -> str:
        """The first untrusted hop, read from the right of X-Forwarded-For, when the peer is a trusted proxy.

        `forwarded_for` is every X-Forwarded-For header line, in order: a proxy that appends its own line after a
        client's (HAProxy's `option forwardfor`) must not let the client's line be read as the proxy's word. An
        untrusted peer's X-Forwarded-For is ignored: anyone can write that header."""
        address = _address(peer or "")
        if address is None:
            return peer or "unknown"
        if not forwarded_for or not self._trusted(address):
            return str(address)
        lines = [forwarded_for] if isinstance(forwarded_for, str) else forwarded_for
        hops = [hop for line in lines for hop in line.split(",")]
        for hop in reversed(hops):
            hop_address = _address(hop)
            if hop_address is None:
                return hop.strip() or "unknown"  # garbage in the header: not an address the list can allow
            address = hop_address
            if not self._trusted(address):
                return str(address)
        return str(address)

    def _allows(self, client: str) -> bool:
        if not self.allowed:
            return True
        address = _address(client)
        return address is not None and any(address in network for network in self.allowed)
