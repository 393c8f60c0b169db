"""Who is on the other end of a request: the connection's address, or, behind proxies the
operator trusts (`COUPONRY_TRUSTED_PROXIES`), the address they forwarded.

`X-Forwarded-For` is a header anyone can send; only a proxy we trust may set it. By default
we trust none (uvicorn's own default trusts loopback: `couponry serve` turns its proxy-header
handling off, and the app resolves the address itself, however it is served).
"""

from __future__ import annotations

import ipaddress

from starlette.types import Scope

from plugin.settings import Network, parse_networks

__all__ = ["TrustedProxies", "address_key", "parse_networks"]


class TrustedProxies:
    def __init__(self, networks: tuple[Network, ...]) -> None:
        self.networks = networks

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: walking `X-Forwarded-For` from the right (the entry our
        nearest proxy added), past every proxy we trust, to the first address we don't."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer

    def resolve(self, scope: Scope) -> None:
        """Set the scope's client to the forwarded address when a trusted proxy sent it."""
        client = scope.get("client")
        if not client:
            return
        forwarded = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded = value.decode("latin-1") if forwarded is None else f"{forwarded},{value.decode('latin-1')}"
        host = self.client(client[0], forwarded)
        if host != client[0]:
            scope["client"] = (host, 0)


def address_key(host: str) -> str:
    """One shopper's address for counting: an IPv4 address, or the /64 of an IPv6 one (a
    single subscriber is routinely handed a whole /64, so counting per address would give
    a guesser 2^64 fresh identities). IPv4-mapped IPv6 counts as the IPv4 address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
