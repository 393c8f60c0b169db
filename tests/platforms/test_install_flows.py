"""Install flows as an attacker tries them (issue 12 §4): the WooCommerce store URL cannot make
us fetch a private address nor bounce a merchant anywhere, our errors never quote what a store
answered, an http public URL is a clear 4xx naming the setting, and a state is spent once."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from sqlalchemy import Engine
from sqlmodel import col, select

from connectors.egress import AddressPolicy
from plugin.errors import Conflict
from plugin.platforms import installs
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.models import Shop, UsedNonce, utcnow
from plugin.web.app import create_app
from plugin.web.install import SHOPIFY_STATE_COOKIE, warn_insecure_public_url
from tests.connectors.fakes import shopify as shopify_fakes
from tests.connectors.fakes import woocommerce as woo_fakes
from tests.connectors.fakes.woocommerce import FakeWooCommerce
from tests.platforms.test_platform_e2e import PUBLIC, SHOPIFY, shopify_query

pytestmark = pytest.mark.anyio

DNS = {
    "shop.example": ["93.184.216.34"],
    "evil.example": ["93.184.216.35"],
    "internal.example": ["10.0.0.7"],
    "mixed.example": ["93.184.216.36", "169.254.169.254"],
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return replace(
        settings, public_url=PUBLIC, sandbox_enabled=False, run_worker_in_process=False, connector_config={"shopify": SHOPIFY}
    )


async def fake_dns(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError("Name or service not known")
    return DNS[host]


@asynccontextmanager
async def app_client(settings: Settings, engine: Engine, policy: AddressPolicy | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan; the store policy resolves names with `fake_dns` (no DNS here)
    and keeps the settings' opt-in, unless a test brings its own."""
    app = create_app(settings, engine=engine)
    app.state.store_policy = policy or AddressPolicy(allow_private=settings.allow_private_stores, resolve=fake_dns)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=settings.public_url) as client:
            yield client


async def woo_install(client: httpx.AsyncClient, store_url: str) -> httpx.Response:
    return await client.get("/install/woocommerce", params={"store_url": store_url})


def link(page: httpx.Response) -> str:
    found = re.search(r'<a href="([^"]+)"', page.text)
    assert found, page.text
    return html.unescape(found[1])


# --- SSRF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store_url", "reason"),
    [
        ("http://127.0.0.1:8080/x", "insecure_store_url"),  # the reproduction: plain http
        ("https://127.0.0.1:8080/x", "private_address"),
        ("https://169.254.169.254/latest/meta-data", "private_address"),  # cloud metadata
        ("https://[::1]:8443/", "private_address"),
        ("https://[::ffff:10.0.0.1]/", "private_address"),  # IPv4-mapped
        ("https://[fd00::1]/", "private_address"),  # unique local
        ("https://100.64.0.1/", "private_address"),  # CGNAT
        ("https://internal.example/", "private_address"),  # a name for a private address
        ("https://mixed.example/", "private_address"),  # one bad answer among good ones
        ("https://nowhere.example/", "unresolvable_host"),
        ("ftp://shop.example", "invalid_store_url"),
        ("https://[::1", "invalid_store_url"),
    ],
)
async def test_woocommerce_install_never_fetches_a_private_address(
    engine: Engine, app_settings: Settings, router: respx.MockRouter, store_url: str, reason: str
) -> None:
    anything = router.route().mock(return_value=httpx.Response(200, text="root:x:0:0 internal secret"))
    async with app_client(app_settings, engine) as client:
        answer = await woo_install(client, store_url)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["reason"] == reason and "location" not in answer.headers
    assert "secret" not in answer.text
    assert anything.call_count == 0  # nothing was fetched


async def test_the_check_is_made_again_when_connecting(engine: Engine, app_settings: Settings) -> None:
    """DNS rebinding: public when the route checks, loopback when the client connects. The
    client's own network backend refuses (no respx here: real sockets), and a listener on that
    port never sees a connection."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers, ["127.0.0.1"])

    async with server, app_client(app_settings, engine, AddressPolicy(resolve=rebinding)) as client:
        answer = await woo_install(client, f"https://rebind.example:{port}")
    assert answer.status_code == 422 and answer.json()["reason"] == "private_address", answer.text
    assert accepted == []


async def test_the_opt_in_lets_a_loopback_store_through(engine: Engine, app_settings: Settings, router: respx.MockRouter) -> None:
    fake = FakeWooCommerce("https://127.0.0.1:8443")
    fake.install(router, "index")
    async with app_client(app_settings, engine) as client:
        assert (await woo_install(client, fake.store_url)).status_code == 422  # off by default
    async with app_client(replace(app_settings, allow_private_stores=True), engine) as client:
        page = await woo_install(client, fake.store_url)
    assert page.status_code == 200, page.text
    assert link(page).startswith("https://127.0.0.1:8443/wc-auth/v1/authorize?")


# --- never echo a store's answer; no open redirect -------------------------------------------


async def test_a_site_that_is_not_a_woocommerce_store_gets_no_link(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    """`store_url=https://evil.example/phish` used to redirect there straight away."""
    router.get("https://evil.example/phish/wp-json/").mock(return_value=httpx.Response(404, text="<h1>internal secret</h1>"))
    router.get("https://shop.example/wp-json/").mock(return_value=httpx.Response(200, json={"namespaces": ["wp/v2"]}))
    async with app_client(app_settings, engine) as client:
        phish = await woo_install(client, "https://evil.example/phish")
        plain_wordpress = await woo_install(client, "https://shop.example")
    for answer in (phish, plain_wordpress):
        assert answer.status_code == 422 and answer.json()["reason"] == "not_woocommerce", answer.text
        assert "location" not in answer.headers and "secret" not in answer.text


async def test_a_woocommerce_store_gets_a_page_naming_it_not_a_redirect(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = FakeWooCommerce()
    fake.install(router, "index")
    async with app_client(app_settings, engine) as client:
        page = await woo_install(client, "shop.example")
    assert page.status_code == 200 and "location" not in page.headers
    assert "<strong>shop.example</strong>" in page.text
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    target = urlsplit(link(page))
    assert (target.scheme, target.netloc, target.path) == ("https", "shop.example", "/wc-auth/v1/authorize")
    assert fake.routes["index"].calls.last.request.url.params["_fields"] == "namespaces"


async def test_an_unreachable_or_huge_store_is_refused_without_its_body(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    router.get("https://shop.example/wp-json/").mock(side_effect=httpx.ConnectError("refused"))
    router.get("https://evil.example/wp-json/").mock(
        return_value=httpx.Response(200, content=b'{"namespaces": ["wc/v3"], "pad": "' + b"x" * 2_000_000 + b'"}')
    )
    async with app_client(app_settings, engine) as client:
        down = await woo_install(client, "https://shop.example")
        huge = await woo_install(client, "https://evil.example")
    assert down.status_code == 502 and down.json()["reason"] == "store_unreachable"
    assert huge.status_code == 422 and huge.json()["reason"] == "not_woocommerce" and "xxx" not in huge.text


async def start_woo_install(client: httpx.AsyncClient, fake: FakeWooCommerce) -> dict[str, Any]:
    page = await woo_install(client, fake.store_url)
    assert page.status_code == 200, page.text
    user_id = parse_qs(urlsplit(link(page)).query)["user_id"][0]
    return woo_fakes.fixture("auth_callback.json") | {
        "user_id": user_id,
        "consumer_key": fake.consumer_key,
        "consumer_secret": fake.consumer_secret,
    }


async def test_the_key_check_never_quotes_the_store(engine: Engine, app_settings: Settings, router: respx.MockRouter) -> None:
    fake = FakeWooCommerce()
    fake.install(router, "index", "coupons")
    fake.script("coupons", httpx.Response(401, json={"code": "x", "message": "internal secret"}))
    fake.script("coupons", httpx.Response(400, text="internal secret"))  # not retried, unlike a 5xx
    async with app_client(app_settings, engine) as client:
        keys = await start_woo_install(client, fake)
        refused = await client.post("/install/woocommerce/callback", content=json.dumps(keys))
        broken = await client.post("/install/woocommerce/callback", content=json.dumps(keys))
    assert refused.status_code == 403 and refused.json()["reason"] == "credentials_refused"
    assert broken.status_code == 502 and broken.json()["reason"] == "credentials_refused"
    assert "secret" not in refused.text + broken.text


# --- an http public URL ----------------------------------------------------------------------


async def test_an_http_public_url_is_a_409_naming_the_setting(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    """It was a 500 (`insecure_callback`) on every WooCommerce install."""
    FakeWooCommerce().install(router, "index")
    settings = replace(app_settings, public_url="http://127.0.0.1:8000")
    async with app_client(settings, engine) as client:
        woo = await woo_install(client, "https://shop.example")
        shopify = await client.get("/install/shopify", params=shopify_query(shop=shopify_fakes.SHOP))
    for answer in (woo, shopify):
        assert answer.status_code == 409, answer.text
        body = answer.json()
        assert body["reason"] == "insecure_callback" and "COUPONRY_PUBLIC_URL" in body["detail"]
        assert body["details"] == {"setting": "COUPONRY_PUBLIC_URL"}


async def test_start_up_says_so_once_when_a_platform_is_configured(
    engine: Engine, app_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    http_settings = replace(app_settings, public_url="http://127.0.0.1:8000")
    with caplog.at_level(logging.WARNING, logger="couponry.install"):
        async with app_client(http_settings, engine):
            pass
    (line,) = [r.getMessage() for r in caplog.records if r.name == "couponry.install"]
    assert "COUPONRY_PUBLIC_URL" in line and "shopify" in line
    # the embedded default (http on loopback, sandbox only) starts quietly; so does https
    assert warn_insecure_public_url(replace(http_settings, connector_config={})) is None
    assert warn_insecure_public_url(app_settings) is None


# --- single-use states -----------------------------------------------------------------------


async def test_a_replayed_shopify_state_is_refused_on_any_process(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = shopify_fakes.shopify_fake(router)
    token_route = fake.mock_token()
    async with app_client(app_settings, engine) as first, app_client(app_settings, engine) as second:
        started = await first.get("/install/shopify", params=shopify_query(shop=shopify_fakes.SHOP))
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
        callback = shopify_query(shop=shopify_fakes.SHOP, code="a94a110d86d2452eb3e2af4cfb8a3828", state=state)
        done = await first.get("/install/shopify/callback", params=callback)
        assert done.status_code == 302, done.text
        # the same callback (cookie and query captured) on this process and on another one
        first.cookies.set(SHOPIFY_STATE_COOKIE, state)
        second.cookies.set(SHOPIFY_STATE_COOKIE, state)
        again = await first.get("/install/shopify/callback", params=callback)
        elsewhere = await second.get("/install/shopify/callback", params=callback)
    for answer in (again, elsewhere):
        assert answer.status_code == 409 and answer.json()["reason"] == "state_used", answer.text
    assert token_route.call_count == 1  # the replays never reached the code exchange


async def test_a_replayed_woocommerce_callback_is_refused(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = FakeWooCommerce()
    fake.install(router, "index", "coupons")
    async with app_client(app_settings, engine) as client:
        keys = await start_woo_install(client, fake)
        done = await client.post("/install/woocommerce/callback", content=json.dumps(keys))
        replayed = await client.post("/install/woocommerce/callback", content=json.dumps(keys))
    assert done.status_code == 200, done.text
    assert replayed.status_code == 409 and replayed.json()["reason"] == "state_used"
    with session_scope(engine) as session:
        assert len(session.exec(select(Shop).where(col(Shop.platform) == "woocommerce")).all()) == 1


def test_spending_a_nonce_is_atomic_and_expired_ones_are_pruned(engine: Engine) -> None:
    from datetime import timedelta

    with session_scope(engine) as session:
        installs.spend_nonce(session, "test", "old", expires_at=utcnow() - timedelta(seconds=1))
        installs.spend_nonce(session, "test", "n1", expires_at=utcnow() + timedelta(minutes=10))
    with pytest.raises(Conflict) as replay, session_scope(engine) as session:
        installs.spend_nonce(session, "test", "n1", expires_at=utcnow() + timedelta(minutes=10))
    assert replay.value.reason == "state_used"
    with session_scope(engine) as session:
        installs.spend_nonce(session, "test", "n2", expires_at=utcnow() + timedelta(minutes=10))
        keys = set(session.exec(select(UsedNonce.key)).all())
    assert keys == {"test:n1", "test:n2"}  # "old" went with the next spend


# --- WooCommerce: the return link leads to the owner's set-up once ------------------------------


async def test_woocommerce_return_is_a_signed_one_time_link_to_the_owner_setup(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = FakeWooCommerce()
    fake.install(router, "index", "coupons")
    async with app_client(app_settings, engine) as client:
        keys = await start_woo_install(client, fake)
        back = {"success": "1", "user_id": keys["user_id"]}
        early = await client.get("/install/woocommerce/return", params=back)
        assert early.status_code == 409  # the keys have not come: nobody may set up an owner yet
        assert (await client.post("/install/woocommerce/callback", content=json.dumps(keys))).status_code == 200
        forged = await client.get("/install/woocommerce/return", params={"success": "1", "user_id": keys["user_id"] + "x"})
        assert forged.status_code == 401
        first = await client.get("/install/woocommerce/return", params=back)
        assert first.status_code == 303 and first.headers["location"].startswith(f"{app_settings.public_url}/admin/setup?token=")
        setup = await client.get(first.headers["location"].removeprefix(app_settings.public_url))
        assert setup.status_code == 200 and 'name="password"' in setup.text
        again = await client.get("/install/woocommerce/return", params=back)
        assert again.status_code == 303 and "/admin/sign-in?shop=" in again.headers["location"]  # once only
        refused = await client.get("/install/woocommerce/return", params={"success": "0", "user_id": keys["user_id"]})
        assert refused.status_code == 400


# --- the App URL, loaded each time a merchant opens the app ---------------------------------------


async def _installed(client: httpx.AsyncClient, fake: Any) -> None:
    started = await client.get("/install/shopify", params=shopify_query(shop=shopify_fakes.SHOP))
    state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
    done = await client.get(
        "/install/shopify/callback",
        params=shopify_query(shop=shopify_fakes.SHOP, code="a94a110d86d2452eb3e2af4cfb8a3828", state=state),
    )
    assert done.status_code == 302 and done.headers["location"].startswith(f"https://{shopify_fakes.SHOP}/admin/apps/"), done.text


async def test_an_installed_shop_opening_the_app_gets_the_embedded_admin_not_a_new_grant(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = shopify_fakes.shopify_fake(router)
    token_route = fake.mock_token()
    async with app_client(app_settings, engine) as client:
        await _installed(client, fake)
        opened = shopify_query(shop=shopify_fakes.SHOP, host="YWRtaW4uc2hvcGlmeS5jb20vc3RvcmUvc2hvcA", embedded="1")
        answer = await client.get("/install/shopify", params=opened, headers={"Sec-Fetch-Dest": "iframe"})
        assert answer.status_code == 302, answer.text
        target = urlsplit(answer.headers["location"])
        assert f"{target.scheme}://{target.netloc}{target.path}" == f"{PUBLIC}/admin"
        assert {k: v[0] for k, v in parse_qs(target.query).items()} == opened  # shop, host, embedded, hmac carried
        assert SHOPIFY_STATE_COOKIE not in answer.headers.get("set-cookie", "")
        admin = await client.get(answer.headers["location"])  # no ID token yet: App Bridge's bounce page
        assert admin.status_code == 200 and "admin/bounce" in admin.text
    assert token_route.call_count == 1  # opened twice, granted once


async def test_opening_the_app_in_the_admin_before_the_grant_leaves_the_frame_for_it(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    shopify_fakes.shopify_fake(router)
    opened = shopify_query(shop=shopify_fakes.SHOP, host="YWRtaW4uc2hvcGlmeS5jb20vc3RvcmUvc2hvcA", embedded="1")
    async with app_client(app_settings, engine) as client:
        framed = await client.get("/install/shopify", params=opened, headers={"Sec-Fetch-Dest": "iframe"})
        top = await client.get("/install/shopify", params=opened, headers={"Sec-Fetch-Dest": "document"})
    # in the frame: a page that reloads the same signed address in the top window, and no cookie
    # (one set in a frame is a third-party cookie, which browsers drop)
    assert framed.status_code == 200 and framed.headers["content-type"].startswith("text/html")
    assert "set-cookie" not in framed.headers
    assert f"https://{shopify_fakes.SHOP}" in framed.headers["content-security-policy"]  # only the shop's admin frames it
    link = re.search(r'<a id="continue" href="([^"]+)" target="_top">', framed.text)
    assert link is not None and "admin/exit_iframe" in framed.text
    again = urlsplit(html.unescape(link.group(1)))
    assert f"{again.scheme}://{again.netloc}{again.path}" == f"{PUBLIC}/install/shopify"
    assert {k: v[0] for k, v in parse_qs(again.query).items()} == opened
    # in the top window: the grant screen, with its state cookie
    assert top.status_code == 302 and top.headers["location"].startswith(f"https://{shopify_fakes.SHOP}/admin/oauth/authorize")
    assert SHOPIFY_STATE_COOKIE in top.headers["set-cookie"]


@pytest.mark.parametrize("change", ["uninstalled", "scope_missing", "no_token"])
async def test_a_shop_without_a_full_grant_is_sent_to_the_grant_screen_again(
    engine: Engine, app_settings: Settings, router: respx.MockRouter, change: str
) -> None:
    fake = shopify_fakes.shopify_fake(router)
    fake.mock_token()
    async with app_client(app_settings, engine) as client:
        await _installed(client, fake)
        with session_scope(engine) as session:
            shop = session.exec(select(Shop).where(col(Shop.domain) == shopify_fakes.SHOP)).one()
            if change == "uninstalled":
                shop.uninstalled_at = utcnow()
            elif change == "scope_missing":  # e.g. a version of the app that asks for one more scope
                shop.scopes = "write_discounts read_orders"
            else:
                shop.access_token_encrypted = None
        answer = await client.get("/install/shopify", params=shopify_query(shop=shopify_fakes.SHOP))
    assert answer.status_code == 302 and answer.headers["location"].startswith(
        f"https://{shopify_fakes.SHOP}/admin/oauth/authorize"
    )


async def test_a_forged_app_url_load_is_refused_even_for_an_installed_shop(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = shopify_fakes.shopify_fake(router)
    fake.mock_token()
    async with app_client(app_settings, engine) as client:
        await _installed(client, fake)
        forged = {**shopify_query(shop=shopify_fakes.SHOP), "hmac": "0" * 64}
        answer = await client.get("/install/shopify", params=forged)
    assert answer.status_code == 401 and answer.json()["reason"] == "bad_signature"
