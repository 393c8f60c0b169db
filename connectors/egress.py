"""Outbound HTTP to addresses someone else chose: only public ones.

A WooCommerce store's URL comes from whoever opens our install link, so fetching it is a
server-side request forgery waiting to happen (`https://127.0.0.1:…`, the cloud metadata service
at 169.254.169.254, a host on the private network). Two checks, both with one rule
(`is_public_address`, built on `ipaddress`' `is_global` and its flags, no hand-made ranges):

    AddressPolicy.check(host, port)   resolve now and refuse when any answer is not public: a
                                      clear error before we redirect anyone or fetch anything
    public_client(policy)             an httpx client whose connections resolve the host once,
                                      check every address, and connect to a checked address
    shared_client(policy)             the app's and worker's one client: requests a connector
                                      marks `extensions={THIRD_PARTY: True}` (WooCommerce: the
                                      merchant names the host) go through the same guard, the
                                      rest (platform APIs, the sandbox on loopback) as before

The second closes the gap a DNS answer leaves between check and connect (rebinding): httpcore
hands the hostname to its network backend, ours resolves it, checks the addresses and opens the
socket to the very address it checked. TLS still runs with the hostname (SNI and certificate
verification are httpcore's `server_hostname`, the original host) and the `Host` header is the
URL's, so nothing about the request changes but where the socket goes. We chose this over a
hook that inspects the peer after connecting (the TCP connection to the internal address would
already be made) and over rewriting URLs to IP literals (pooled connections would then be shared
between different hostnames on one address, each verified against another's certificate).

httpx has no option for a network backend, so `PublicOnlyTransport` builds httpcore's
connection pool itself (`network_backend` is public httpcore API) in place of the one
`httpx.AsyncHTTPTransport` made; tests/connectors/test_egress.py fails if that stops working.
The client ignores proxy environment variables (a proxy would resolve the name itself) and
follows no redirects.

`allow_private=True` (the `COUPONRY_ALLOW_PRIVATE_STORES` opt-in, for a store on the
developer's machine and for tests) lets loopback and private addresses through; nothing else.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore
import httpx

from connectors.errors import ConnectorError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
THIRD_PARTY = "couponry.third_party_host"  # request extension: the host was named by a stranger
Resolver = Callable[[str, int], Awaitable[list[str]]]

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix: an IPv4 address inside


class ForbiddenAddress(ConnectorError):
    """The host resolves to an address we never connect to (or does not resolve at all)."""

    def __init__(self, message: str, *, reason: str = "private_address") -> None:
        super().__init__(message)
        self.reason = reason


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, NAT64, 6to4), else None: such an
    address reaches the IPv4 host inside it, so it is judged as that host."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_public_address(address: Address) -> bool:
    """Globally routable unicast: not private, loopback, link-local (169.254/16, fe80::/10),
    CGNAT (100.64/10), unique-local (fc00::/7), reserved, multicast or unspecified. `is_global`
    alone lets multicast and some IPv6 forms through, hence the flags too."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public_address(inner)
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


def parse_address(text: str) -> Address:
    return ipaddress.ip_address(text.partition("%")[0])  # fe80::1%eth0: the zone is not the address


async def system_resolver(host: str, port: int) -> list[str]:
    answers = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for *_, sockaddr in answers]


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses outbound calls to third-party hosts may reach, and how names resolve."""

    allow_private: bool = False
    resolve: Resolver = field(default=system_resolver)

    def allowed(self, address: Address) -> bool:
        if is_public_address(address):
            return True
        inner = embedded_ipv4(address) or address
        local = (inner.is_private or inner.is_loopback) and not (inner.is_link_local or inner.is_unspecified)
        return self.allow_private and local  # never the metadata service, even then

    async def check(self, host: str, port: int) -> list[str]:
        """The host's addresses, every one of them allowed; ForbiddenAddress otherwise (one bad
        answer among good ones is refused too: we would not know which one we get next time)."""
        try:
            found = [host] if _is_ip_literal(host) else await self.resolve(host, port)
            answers = [parse_address(a) for a in found]
        except (OSError, ValueError) as exc:
            raise ForbiddenAddress(f"{host} does not resolve", reason="unresolvable_host") from exc
        if not answers:
            raise ForbiddenAddress(f"{host} does not resolve", reason="unresolvable_host")
        refused = [a for a in answers if not self.allowed(a)]
        if refused:
            raise ForbiddenAddress(f"{host} resolves to an address that is not public")
        return [str(a) for a in answers]


def _is_ip_literal(host: str) -> bool:
    try:
        parse_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the policy in front: resolve, check, connect to a checked
    address (the first one that answers)."""

    def __init__(self, policy: AddressPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._policy.check(host.strip("[]"), port)
        failure: Exception | None = None
        # one address at a time (no happy eyeballs here): IPv4 first, as a blackholed IPv6
        # route costs a whole connect timeout where a missing IPv4 one fails at once
        for address in sorted(addresses, key=lambda a: ":" in a):
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise ForbiddenAddress("no unix sockets for third-party hosts")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PublicOnlyTransport(httpx.AsyncHTTPTransport):
    """`httpx.AsyncHTTPTransport` whose connections go through `PublicOnlyBackend`."""

    def __init__(self, policy: AddressPolicy, *, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PublicOnlyBackend(policy),
        )


def public_client(policy: AddressPolicy, *, timeout: httpx.Timeout | None = None) -> httpx.AsyncClient:
    """A client for third-party hosts: public addresses only, no proxies from the environment,
    no redirects followed."""
    return httpx.AsyncClient(
        transport=PublicOnlyTransport(policy),
        timeout=timeout or httpx.Timeout(30.0, connect=10.0),
        trust_env=False,
        follow_redirects=False,
    )


class ThirdPartyRouter(httpx.AsyncBaseTransport):
    """Requests marked THIRD_PARTY through `PublicOnlyTransport`, the others through a plain
    transport. Proxies from the environment (trust_env) take precedence over any transport in
    httpx: behind an egress proxy, filtering private addresses is the proxy's job."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._plain = httpx.AsyncHTTPTransport()
        self._guarded = PublicOnlyTransport(policy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._guarded if request.extensions.get(THIRD_PARTY) else self._plain
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._plain.aclose()
        await self._guarded.aclose()


def shared_client(policy: AddressPolicy, *, timeout: httpx.Timeout | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=ThirdPartyRouter(policy), timeout=timeout or httpx.Timeout(30.0, connect=10.0))
