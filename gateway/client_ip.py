"""Who sent a request: the peer address, or X-Forwarded-For when the peer is a trusted proxy; the IP allow-list."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

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

    def _trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted_proxies)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The first untrusted hop, read from the right of X-Forwarded-For, when the peer is a trusted proxy.

        An untrusted peer's X-Forwarded-For is ignored: anyone can write that header."""
        address = _address(peer or "")
        if address is None:
            return peer or "unknown"
        if not forwarded_for or not self._trusted(address):
            return str(address)
        for hop in reversed(forwarded_for.split(",")):
            hop_address = _address(hop)
            if hop_address is None:
                return hop.strip() or str(address)  # garbage in the header: not an address the list can allow
            address = hop_address
            if not self._trusted(address):
                return str(address)
        return str(address)

    def allows(self, client: str) -> bool:
        if not self.allowed:
            return True
        address = _address(client)
        return address is not None and any(address in network for network in self.allowed)
