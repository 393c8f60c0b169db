"""connectors.egress: third-party hosts reach public addresses only, checked again at connect time."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from connectors.base import ConnectorConfig, Credentials
from connectors.egress import THIRD_PARTY, AddressPolicy, ForbiddenAddress, is_public_address, public_client, shared_client
from connectors.woocommerce import WooCommerceConnector
from plugin.jobs.worker import make_http_client

pytestmark = pytest.mark.anyio

PUBLIC = "93.184.216.34"

NOT_PUBLIC = [
    "127.0.0.1",  # loopback
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",  # private
    "169.254.169.254",  # link-local: the cloud metadata service
    "100.64.0.1",  # CGNAT
    "0.0.0.0",  # unspecified
    "224.0.0.1",
    "239.1.1.1",  # multicast (is_global says True for these)
    "240.0.0.1",
    "255.255.255.255",  # reserved
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",  # unique local
    "fe80::1",  # link-local
    "ff02::1",  # multicast
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::127.0.0.1",  # IPv4-compatible (deprecated; is_global says True)
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def dns(*answers: list[str]) -> tuple[AddressPolicy, list[str]]:
    """A policy whose resolver gives each answer in turn (the last one from then on)."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[min(len(asked), len(answers)) - 1]

    return AddressPolicy(resolve=resolve), asked


async def test_check_refuses_any_non_public_answer() -> None:
    policy, _ = dns([PUBLIC, "10.0.0.5"])
    with pytest.raises(ForbiddenAddress) as refused:
        await policy.check("store.example", 443)
    assert refused.value.reason == "private_address"
    assert await dns([PUBLIC])[0].check("store.example", 443) == [PUBLIC]
    with pytest.raises(ForbiddenAddress):
        await AddressPolicy().check("169.254.169.254", 443)  # a literal needs no resolver


async def test_check_refuses_a_name_that_does_not_resolve() -> None:
    async def nowhere(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(ForbiddenAddress) as refused:
        await AddressPolicy(resolve=nowhere).check("nowhere.example", 443)
    assert refused.value.reason == "unresolvable_host"


async def test_the_opt_in_allows_loopback_and_private_but_never_link_local() -> None:
    policy = AddressPolicy(allow_private=True)
    assert await policy.check("127.0.0.1", 443) == ["127.0.0.1"]
    assert await policy.check("10.0.0.5", 443) == ["10.0.0.5"]
    for address in ("169.254.169.254", "0.0.0.0", "224.0.0.1", "fe80::1"):
        with pytest.raises(ForbiddenAddress):
            await policy.check(address, 443)


class Server:
    """A loopback HTTP server that counts the connections it accepted."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    listening = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield state


async def test_a_dns_answer_that_changes_after_the_check_is_refused_at_connect(server: Server) -> None:
    """Rebinding: public when checked, loopback when connecting. The connection is refused by
    the client's own network backend, before any socket is opened."""
    policy, asked = dns([PUBLIC], ["127.0.0.1"])
    assert await policy.check("rebind.example", server.port) == [PUBLIC]
    async with public_client(policy) as client:
        with pytest.raises(ForbiddenAddress):
            await client.get(f"http://rebind.example:{server.port}/latest/meta-data/")
    assert asked == ["rebind.example", "rebind.example"] and server.connections == 0


async def test_the_client_connects_to_the_address_it_checked(server: Server) -> None:
    """With the opt-in, a name resolving to loopback is reached at the checked address, with the
    URL's Host header (the transport really uses our backend: no real DNS knows this name)."""
    policy = AddressPolicy(allow_private=True, resolve=dns(["127.0.0.1"])[0].resolve)
    async with public_client(policy) as client:
        answer = await client.get(f"http://store.invalid:{server.port}/")
    assert answer.text == "ok" and server.connections == 1
    assert answer.request.headers["host"] == f"store.invalid:{server.port}"


async def test_the_client_ignores_proxy_settings(monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{server.port}")
    policy, _ = dns(["10.0.0.9"])
    async with public_client(policy) as client:
        with pytest.raises(ForbiddenAddress):
            await client.get("http://internal.example/")
    assert server.connections == 0


async def test_the_shared_client_guards_only_the_requests_marked_third_party(server: Server) -> None:
    """The app's and worker's client: a WooCommerce call to a loopback store is refused before
    connecting; other traffic (the sandbox on loopback, platform APIs) goes as before."""
    async with shared_client(AddressPolicy()) as client:
        with pytest.raises(ForbiddenAddress):
            await client.get(f"http://127.0.0.1:{server.port}/", extensions={THIRD_PARTY: True})
        assert server.connections == 0
        assert (await client.get(f"http://127.0.0.1:{server.port}/")).text == "ok"


async def test_woocommerce_calls_after_the_install_are_checked_when_connecting(server: Server) -> None:
    """A store that passed at install and now resolves to loopback (the worker pushing codes)."""
    policy, _ = dns(["127.0.0.1"])
    credentials = Credentials(
        shop_domain=f"https://store.example:{server.port}", access_token="cs_x", extra={"consumer_key": "ck_x"}
    )
    async with shared_client(policy) as client:
        with pytest.raises(ForbiddenAddress):
            await WooCommerceConnector(client, ConnectorConfig(), credentials).verify_credentials()
    async with make_http_client() as client:  # the worker's own
        with pytest.raises(ForbiddenAddress):
            await WooCommerceConnector(
                client, ConnectorConfig(), replace(credentials, shop_domain=f"https://127.0.0.1:{server.port}")
            ).verify_credentials()
    assert server.connections == 0
