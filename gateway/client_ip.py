"""Who sent a request: the peer address, or X-Forwarded-For when the peer is a trusted proxy; the IP allow-list."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
SHOWN_GARBAGE = 64  # characters of a forwarded hop that is no address, kept for the log line


def _networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _address(text: str) -> Address | None:
    text = text.strip().strip("[]")
    if "%" in text:  # an IPv6 scope (`fe80::1%eth0`) is free text of any length: not a client address
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientAddressPolicy:
    """Resolves the client address and applies the allow-list (empty allow-list = any address).

    What it keeps between requests is keyed by the peer's address (from the socket), never by header content: a
    cache keyed by X-Forwarded-For lines let anyone pin memory with large headers before any check."""

    def __init__(self, allowed: Iterable[str] = (), trusted_proxies: Iterable[str] = ()) -> None:
        self.allowed = _networks(allowed)
        self.trusted_proxies = _networks(trusted_proxies)
        # The platform pushes from a handful of addresses: each peer is parsed and checked once.
        self._peer = functools.lru_cache(maxsize=1024)(self._resolve_peer)

    def _trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted_proxies)

    def _resolve_peer(self, peer: str | None) -> tuple[str, bool]:
        """The peer's address as text, and whether it is a trusted proxy."""
        address = _address(peer or "")
        if address is None:
            return (peer or "unknown")[:SHOWN_GARBAGE], False
        return str(address), self._trusted(address)

    def client_address(self, peer: str | None, forwarded_for: Sequence[str] | str | None) -> str:
        """The first untrusted hop, read from the right of X-Forwarded-For, when the peer is a trusted proxy.

        `forwarded_for` is every X-Forwarded-For header line, in order: a proxy that appends its own line after a
        client's (HAProxy's `option forwardfor`) must not let the client's line be read as the proxy's word. An
        untrusted peer's X-Forwarded-For is ignored: anyone can write that header."""
        client, trusted = self._peer(peer)
        if not forwarded_for or not trusted:
            return client
        lines = [forwarded_for] if isinstance(forwarded_for, str) else forwarded_for
        for line in reversed(lines):
            for hop in reversed(line.split(",")):
                hop_address = _address(hop)
                if hop_address is None:  # garbage in the header: not an address the list can allow
                    return hop.strip()[:SHOWN_GARBAGE] or "unknown"
                client = str(hop_address)
                if not self._trusted(hop_address):
                    return client
        return client

    def allows(self, client: str) -> bool:
        if not self.allowed:
            return True
        address = _address(client)
        return address is not None and any(address in network for network in self.allowed)
