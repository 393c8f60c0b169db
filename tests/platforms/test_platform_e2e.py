"""Each platform end to end against its fake: install through the routes, codes pushed by the
worker, a signed order webhook (documented payload) recorded as a redemption, its cancellation
rolled back, and the end of the install (uninstall, privacy requests)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import respx
from sqlalchemy import Engine
from sqlmodel import col, select
from starlette.applications import Starlette
from starlette.requests import Request

from connectors.base import Credentials
from connectors.bigcommerce import BigCommerceConnector
from connectors.egress import AddressPolicy
from connectors.errors import BadSignature
from plugin.jobs.worker import Worker
from plugin.platforms import installs, sync
from plugin.settings import Settings
from plugin.shops import tokens
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import AuditEvent, Code, Job, Redemption, Shop, WebhookEvent
from plugin.web.app import create_app
from plugin.web.install import verify_shopify_session
from tests.connectors.fakes import bigcommerce as bc_fakes
from tests.connectors.fakes import shopify as shopify_fakes
from tests.connectors.fakes import woocommerce as woo_fakes
from tests.connectors.fakes.bigcommerce import FakeBigCommerce
from tests.connectors.fakes.woocommerce import FakeWooCommerce
from tests.ingest import campaign_codes, make_campaign
from tests.platforms.test_sync import drain

pytestmark = pytest.mark.anyio

PUBLIC = "https://app.test"
SHOPIFY = {"client_id": "api-key", "client_secret": "hush"}
BIGCOMMERCE = {"client_id": "bc-client-id", "client_secret": "bc-client-secret-0123456789abcdef0123"}


async def _public_dns(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


PUBLIC_DNS = AddressPolicy(resolve=_public_dns)


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
        settings,
        public_url=PUBLIC,
        sandbox_enabled=False,
        run_worker_in_process=False,
        connector_config={"shopify": SHOPIFY, "bigcommerce": BIGCOMMERCE},
    )


@asynccontextmanager
async def platform_app(settings: Settings, engine: Engine) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient, Worker]]:
    """The app with its lifespan (its outbound client is the one respx intercepts), a browser-like
    client that reaches it in-process, and a worker on the app's client."""
    app = create_app(settings, engine=engine)
    app.state.store_policy = PUBLIC_DNS  # no DNS here: every store name is a public address
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=settings.public_url) as client:
            yield app, client, Worker(JobContext(engine, settings, app.state.http), sweeps=())


async def deliver(client: httpx.AsyncClient, engine: Engine, path: str, body: bytes | str, headers: dict[str, str]) -> int:
    """POST a webhook and wait for its processing (a background task after the 2xx answer)."""
    answer = await client.post(path, content=body, headers=headers)
    for _ in range(400):
        with session_scope(engine) as session:
            waiting = session.exec(
                select(WebhookEvent.id).where(col(WebhookEvent.status).in_(["received", "processing"]))
            ).first()
        if waiting is None:
            break
        await asyncio.sleep(0.005)
    else:
        raise AssertionError("the delivery was not processed")
    return answer.status_code


def the_shop(engine: Engine, platform: str) -> Shop:
    with session_scope(engine) as session:
        shop = session.exec(select(Shop).where(col(Shop.platform) == platform)).one()
        session.expunge(shop)
        return shop


def redemptions(engine: Engine, shop_id: int) -> list[Redemption]:
    with session_scope(engine) as session:
        rows = session.exec(select(Redemption).where(col(Redemption.shop_id) == shop_id).order_by(col(Redemption.id))).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def push(engine: Engine, shop_id: int, count: int = 3) -> tuple[int, list[Code]]:
    campaign_id = make_campaign(engine, shop_id, count=count)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    return campaign_id, campaign_codes(engine, campaign_id)


def audit(engine: Engine, shop_id: int, action: str) -> list[AuditEvent]:
    with session_scope(engine) as session:
        rows = session.exec(select(AuditEvent).where(col(AuditEvent.shop_id) == shop_id, col(AuditEvent.action) == action)).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


# --- Shopify ---------------------------------------------------------------------------------


def shopify_query(**params: str) -> dict[str, str]:
    """A query as Shopify signs it (shared/research/shopify.md §5.1)."""
    params = {"timestamp": str(int(time.time())), **params}
    message = "&".join(f"{key}={value}" for key, value in sorted(params.items()))  # plain values need no escaping
    digest = hmac.new(SHOPIFY["client_secret"].encode(), message.encode(), hashlib.sha256).hexdigest()
    return {**params, "hmac": digest}


def shopify_webhook(topic: str, payload: dict[str, Any], *, webhook_id: str) -> tuple[dict[str, str], bytes]:
    body = json.dumps(payload).encode()
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": shopify_fakes.SHOP,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Hmac-Sha256": base64.b64encode(hmac.new(b"hush", body, hashlib.sha256).digest()).decode(),
    }, body


async def install_shopify(client: httpx.AsyncClient) -> httpx.Response:
    started = await client.get("/install/shopify", params=shopify_query(shop=shopify_fakes.SHOP))
    assert started.status_code == 302, started.text
    grant = urlsplit(started.headers["location"])
    assert grant.netloc == shopify_fakes.SHOP and grant.path == "/admin/oauth/authorize"
    query = parse_qs(grant.query)
    assert query["scope"] == ["write_discounts,read_orders,write_app_proxy"]
    assert query["redirect_uri"] == [f"{PUBLIC}/install/shopify/callback"]
    state = query["state"][0]
    return await client.get(
        "/install/shopify/callback",
        params=shopify_query(shop=shopify_fakes.SHOP, code="a94a110d86d2452eb3e2af4cfb8a3828", state=state),
    )


async def test_shopify_end_to_end(engine: Engine, app_settings: Settings, router: respx.MockRouter) -> None:
    fake = shopify_fakes.shopify_fake(router)
    token_route = fake.mock_token()
    async with platform_app(app_settings, engine) as (_, client, worker):
        done = await install_shopify(client)
        assert done.status_code == 302, done.text
        # the app opens embedded in the shop's admin (App Bridge then loads /admin with an ID token)
        assert done.headers["location"] == f"https://{shopify_fakes.SHOP}/admin/apps/{SHOPIFY['client_id']}"
        assert token_route.call_count == 1
        shop = the_shop(engine, "shopify")
        assert shop.id is not None and shop.domain == shopify_fakes.SHOP and shop.uninstalled_at is None
        token = shopify_fakes.fixture("oauth_access_token.json")["access_token"]
        assert shop.access_token_encrypted and token not in shop.access_token_encrypted
        assert tokens.decrypt(app_settings, shop.access_token_encrypted).access_token == token

        await drain(worker)  # webhooks registered, through the outbox
        assert {topic for topic, _ in fake.webhooks} == {
            "ORDERS_CREATE",
            "ORDERS_PAID",
            "ORDERS_CANCELLED",
            "REFUNDS_CREATE",
            "APP_UNINSTALLED",
        }
        assert {url for _, url in fake.webhooks} == {f"{PUBLIC}/webhooks/shopify"}

        campaign_id, codes = push(engine, shop.id)
        await drain(worker)
        assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"synced"}
        (discount,) = fake.discounts.values()
        assert {c.code for c in codes} <= {k.upper() for k in discount.codes}
        sent = [c for c in fake.calls if c.request.headers.get("x-shopify-access-token") == token]
        assert sent, "the connector used the decrypted token"

        code = codes[0].code
        order = shopify_fakes.fixture("orders_create.json")
        order["discount_codes"] = [{"code": code, "amount": "21.50", "type": "percentage"}]
        headers, body = shopify_webhook("orders/create", order, webhook_id="w-1")
        assert await deliver(client, engine, "/webhooks/shopify", body, headers) == 200
        (redemption,) = redemptions(engine, shop.id)
        assert (redemption.code, redemption.order_id, redemption.amount, redemption.status) == (
            code,
            str(order["id"]),
            2150,
            "active",
        )

        cancelled = shopify_fakes.fixture("orders_cancelled.json")
        cancelled["discount_codes"] = [{"code": code, "amount": "21.50", "type": "percentage"}]
        headers, body = shopify_webhook("orders/cancelled", cancelled, webhook_id="w-2")
        assert (await deliver(client, engine, "/webhooks/shopify", body, headers)) == 200
        assert [r.status for r in redemptions(engine, shop.id)] == ["rolled_back"]

        bad = {**headers, "X-Shopify-Hmac-Sha256": "AAAA" + headers["X-Shopify-Hmac-Sha256"][4:]}
        assert (await deliver(client, engine, "/webhooks/shopify", body, bad)) == 401


async def test_shopify_install_refuses_forged_queries_and_states(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = shopify_fakes.shopify_fake(router)
    token_route = fake.mock_token()
    async with platform_app(app_settings, engine) as (_, client, _worker):
        forged = {**shopify_query(shop=shopify_fakes.SHOP), "shop": "other-shop.myshopify.com"}
        assert (await client.get("/install/shopify", params=forged)).status_code == 401
        bad_shop = shopify_query(shop="evil.example.com")
        assert (await client.get("/install/shopify", params=bad_shop)).status_code == 401
        # a callback whose state is not the one in our cookie (login CSRF)
        started = await client.get("/install/shopify", params=shopify_query(shop=shopify_fakes.SHOP))
        assert started.status_code == 302
        other = shopify_query(shop=shopify_fakes.SHOP, code="abc", state="not-our-state")
        assert (await client.get("/install/shopify/callback", params=other)).status_code == 401
        # no cookie at all (another browser)
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
        client.cookies.clear()
        fresh = shopify_query(shop=shopify_fakes.SHOP, code="abc", state=state)
        assert (await client.get("/install/shopify/callback", params=fresh)).status_code == 401
        assert token_route.call_count == 0


async def test_shopify_install_refuses_missing_scopes(engine: Engine, app_settings: Settings, router: respx.MockRouter) -> None:
    fake = shopify_fakes.shopify_fake(router)
    fake.mock_token({"access_token": "shpat_x", "scope": "read_orders"})
    async with platform_app(app_settings, engine) as (_, client, _worker):
        done = await install_shopify(client)
        assert done.status_code == 403 and done.json()["reason"] == "missing_scopes"
    with session_scope(engine) as session:
        assert session.exec(select(Shop).where(col(Shop.platform) == "shopify")).first() is None


async def test_shopify_uninstall_and_privacy_webhooks(engine: Engine, app_settings: Settings, router: respx.MockRouter) -> None:
    fake = shopify_fakes.shopify_fake(router)
    fake.mock_token()
    async with platform_app(app_settings, engine) as (_, client, worker):
        assert (await install_shopify(client)).status_code == 302
        shop = the_shop(engine, "shopify")
        assert shop.id is not None
        await drain(worker)
        campaign_id, codes = push(engine, shop.id)
        await drain(worker)
        with session_scope(engine) as session:  # a code handed to a customer by email
            bound = session.get_one(Code, codes[1].id)
            bound.email, bound.recipient = "jon@example.com", "jon@example.com"
            session.add(bound)
        order = shopify_fakes.fixture("orders_create.json")
        order["discount_codes"] = [{"code": codes[0].code, "amount": "21.50", "type": "percentage"}]
        headers, body = shopify_webhook("orders/create", order, webhook_id="w-1")
        assert (await deliver(client, engine, "/webhooks/shopify", body, headers)) == 200
        (redemption,) = redemptions(engine, shop.id)
        assert redemption.email == "jon@example.com"

        request = shopify_fakes.fixture("customers_data_request.json")
        request["customer"]["email"] = "jon@example.com"
        headers, body = shopify_webhook("customers/data_request", request, webhook_id="w-2")
        assert (await deliver(client, engine, "/webhooks/shopify", body, headers)) == 200
        (report,) = audit(engine, shop.id, "customer.data_request")
        assert [r["order_id"] for r in report.details["redemptions"]] == [str(order["id"])]
        assert [c["code"] for c in report.details["codes"]] == [codes[1].code]

        redact = shopify_fakes.fixture("customers_redact.json")
        redact["customer"]["email"] = "jon@example.com"
        headers, body = shopify_webhook("customers/redact", redact, webhook_id="w-3")
        assert (await deliver(client, engine, "/webhooks/shopify", body, headers)) == 200
        (redemption,) = redemptions(engine, shop.id)
        assert (redemption.email, redemption.customer_id, redemption.amount) == (None, None, 2150)
        with session_scope(engine) as session:
            bound = session.get_one(Code, codes[1].id)
            assert (bound.email, bound.recipient) == (None, None)
            stored = session.exec(select(WebhookEvent).where(col(WebhookEvent.delivery_id) == "w-1")).one()
            assert stored.payload == "" and stored.redacted_at is not None

        with session_scope(engine) as session:  # a push waiting when the merchant uninstalls
            sync.enqueue_push(session, shop_id=shop.id, campaign_id=campaign_id)
        headers, body = shopify_webhook("app/uninstalled", shopify_fakes.fixture("app_uninstalled.json"), webhook_id="w-4")
        assert (await deliver(client, engine, "/webhooks/shopify", body, headers)) == 200
        gone = the_shop(engine, "shopify")
        assert gone.uninstalled_at is not None and gone.access_token_encrypted is None
        with session_scope(engine) as session:
            assert session.exec(select(Job.status).where(col(Job.kind) == sync.PUSH, col(Job.status) == "queued")).all() == []

        headers, body = shopify_webhook("shop/redact", shopify_fakes.fixture("shop_redact.json"), webhook_id="w-5")
        assert (await deliver(client, engine, "/webhooks/shopify", body, headers)) == 200
        with session_scope(engine) as session:
            assert session.exec(select(Code).where(col(Code.shop_id) == shop.id)).all() == []
            assert session.exec(select(Redemption).where(col(Redemption.shop_id) == shop.id)).all() == []
            events = session.exec(select(WebhookEvent).where(col(WebhookEvent.shop_id) == shop.id)).all()
            assert [(e.delivery_id, e.payload) for e in events] == [("w-5", "")]


def bind_to_jon(engine: Engine, shop_id: int) -> int:
    """A code of this shop handed to jon@example.com; its id."""
    (code, *_) = campaign_codes(engine, make_campaign(engine, shop_id, count=1))
    with session_scope(engine) as session:
        bound = session.get_one(Code, code.id)
        bound.email, bound.recipient = "jon@example.com", "jon@example.com"
        session.add(bound)
    assert code.id is not None
    return code.id


async def test_a_privacy_webhook_acts_on_the_shop_its_signed_body_names(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    """The header names shop B, the signed body shop A: only A's customer data goes."""
    shopify_fakes.shopify_fake(router).mock_token()
    async with platform_app(app_settings, engine) as (_, client, _worker):
        assert (await install_shopify(client)).status_code == 302
        shop_a = the_shop(engine, "shopify")
        other = Credentials(shop_domain="victim-shop.myshopify.com", access_token="shpat_b", scopes=("write_discounts",))
        with session_scope(engine) as session:
            shop_b = installs.save_install(session, app_settings, platform="shopify", credentials=other).id
        assert shop_a.id is not None and shop_b is not None
        code_a, code_b = bind_to_jon(engine, shop_a.id), bind_to_jon(engine, shop_b)

        redact = shopify_fakes.fixture("customers_redact.json") | {"shop_domain": shopify_fakes.SHOP}
        redact["customer"]["email"] = "jon@example.com"
        headers, body = shopify_webhook("customers/redact", redact, webhook_id="w-redact")
        headers["X-Shopify-Shop-Domain"] = "victim-shop.myshopify.com"  # not covered by the HMAC
        assert (await deliver(client, engine, "/webhooks/shopify", body, headers)) == 200
        with session_scope(engine) as session:
            assert session.get_one(Code, code_a).email is None
            assert session.get_one(Code, code_b).email == "jon@example.com"
            event = session.exec(select(WebhookEvent).where(col(WebhookEvent.delivery_id) == "w-redact")).one()
            assert event.shop_id == shop_a.id


# --- WooCommerce -----------------------------------------------------------------------------


async def install_woocommerce(client: httpx.AsyncClient, fake: FakeWooCommerce) -> httpx.Response:
    started = await client.get("/install/woocommerce", params={"store_url": "shop.example/"})
    assert started.status_code == 200, started.text  # a page naming the store, not a redirect
    assert started.headers["x-frame-options"] == "DENY" and f"<strong>{fake.host}</strong>" in started.text
    target = urlsplit(html.unescape(re.search(r'<a href="([^"]+)"', started.text)[1]))  # type: ignore[index]
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{fake.store_url}/wc-auth/v1/authorize"
    query = parse_qs(target.query)
    assert query["callback_url"] == [f"{PUBLIC}/install/woocommerce/callback"] and query["scope"] == ["read_write"]
    keys = woo_fakes.fixture("auth_callback.json") | {
        "user_id": query["user_id"][0],
        "consumer_key": fake.consumer_key,
        "consumer_secret": fake.consumer_secret,
    }
    return await client.post(
        "/install/woocommerce/callback", content=json.dumps(keys), headers={"Content-Type": "application/json"}
    )


async def test_woocommerce_end_to_end(engine: Engine, app_settings: Settings, router: respx.MockRouter) -> None:
    fake = FakeWooCommerce()
    fake.install(router)
    fake.install(router, "index")
    async with platform_app(app_settings, engine) as (_, client, worker):
        done = await install_woocommerce(client, fake)
        assert done.status_code == 200, done.text
        shop = the_shop(engine, "woocommerce")
        assert shop.id is not None and shop.domain == fake.store_url
        assert shop.access_token_encrypted and fake.consumer_secret not in shop.access_token_encrypted

        await drain(worker)
        hooks = list(fake.webhooks.values())
        assert sorted(h["topic"] for h in hooks) == ["order.created", "order.deleted", "order.restored", "order.updated"]
        assert {h["delivery_url"] for h in hooks} == {f"{PUBLIC}/webhooks/woocommerce"}
        secret = hooks[0]["secret"]  # what the store signs our deliveries with
        assert secret and secret != app_settings.secret_key

        campaign_id, codes = push(engine, shop.id)
        await drain(worker)
        assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"synced"}
        assert all(fake.coupon_by_code(c.code) for c in codes)

        order = fake.add_order(
            coupon_lines=[{"id": 1, "code": codes[0].code.lower(), "discount": "2.00", "discount_tax": "0.00"}]
        )
        headers, body = fake.delivery(order, secret, topic="order.created")
        assert (await deliver(client, engine, "/webhooks/woocommerce", body, headers)) == 200
        (redemption,) = redemptions(engine, shop.id)
        assert (redemption.code, redemption.order_id, redemption.amount) == (codes[0].code, str(order["id"]), 200)

        cancelled = order | {"status": "cancelled", "date_modified_gmt": "2017-03-23T10:00:00"}
        headers, body = fake.delivery(cancelled, secret, topic="order.updated", delivery_id="d2")
        assert (await deliver(client, engine, "/webhooks/woocommerce", body, headers)) == 200
        assert [r.status for r in redemptions(engine, shop.id)] == ["rolled_back"]

        # another store's secret (or the app's) proves nothing about this store
        headers, body = fake.delivery(order, "someone-elses-secret", topic="order.created", delivery_id="d3")
        assert (await deliver(client, engine, "/webhooks/woocommerce", body, headers)) == 401


async def test_woocommerce_callback_refuses_an_unsigned_reference(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = FakeWooCommerce()
    fake.install(router)
    async with platform_app(app_settings, engine) as (_, client, _worker):
        keys = woo_fakes.fixture("auth_callback.json") | {"user_id": "tenant-123"}
        answer = await client.post("/install/woocommerce/callback", content=json.dumps(keys))
        assert answer.status_code == 401
        assert (await client.get("/install/woocommerce", params={"store_url": "ftp://shop.example"})).status_code == 422
    with session_scope(engine) as session:
        assert session.exec(select(Shop).where(col(Shop.platform) == "woocommerce")).first() is None


# --- BigCommerce -----------------------------------------------------------------------------


def signed_payload(store_hash: str = "abc123") -> str:
    now = int(time.time())
    claims = bc_fakes.fixture("signed_payload_claims.json") | {
        "aud": BIGCOMMERCE["client_id"],
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "sub": f"stores/{store_hash}",
    }
    return jwt.encode(claims, BIGCOMMERCE["client_secret"], algorithm="HS256")


async def test_bigcommerce_end_to_end(engine: Engine, app_settings: Settings, router: respx.MockRouter) -> None:
    fake = FakeBigCommerce()
    fake.install(router)
    async with platform_app(app_settings, engine) as (_, client, worker):
        params = {"code": "qr6h3thvbvag2ffq", "scope": "store_v2_marketing store_v2_orders_read_only", "context": "stores/abc123"}
        done = await client.get("/install/bigcommerce/callback", params=params)
        assert done.status_code == 302, done.text
        assert done.headers["location"].startswith(f"{PUBLIC}/admin/?t=cbc_")
        landed = await client.get(done.headers["location"])  # an install lands on a working home page
        assert landed.status_code == 200 and "Key figures" in landed.text
        assert fake.routes["token"].call_count == 1
        shop = the_shop(engine, "bigcommerce")
        assert shop.id is not None and shop.domain == "abc123"

        await drain(worker)
        hooks = list(fake.hooks.values())
        assert sorted(h["scope"] for h in hooks) == ["store/order/created", "store/order/statusUpdated"]
        secret = hooks[0]["headers"][BigCommerceConnector.WEBHOOK_HEADER]

        load = await client.get("/install/bigcommerce/load", params={"signed_payload_jwt": signed_payload()})
        assert load.status_code == 302 and load.headers["location"].startswith(f"{PUBLIC}/admin/?t=cbc_")
        home = await client.get(load.headers["location"])
        assert home.status_code == 200 and "Order webhooks registered" in home.text
        assert (await client.get("/install/bigcommerce/load", params={"signed_payload_jwt": "x.y.z"})).status_code == 401

        campaign_id, codes = push(engine, shop.id)
        await drain(worker)
        assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"synced"}
        (promotion_id,) = fake.promotions
        assert {c.upper() for c in fake.all_codes(promotion_id)} >= {c.code for c in codes}

        coupons = [c | {"code": codes[0].code} for c in bc_fakes.fixture("order_coupons.json")]
        order = fake.add_order(coupons=coupons)
        created = bc_fakes.fixture("webhook_order_created.json")
        created["data"]["id"] = order["id"]
        headers = {"Content-Type": "application/json", BigCommerceConnector.WEBHOOK_HEADER: secret}
        assert (await deliver(client, engine, "/webhooks/bigcommerce", json.dumps(created), headers)) == 200
        (redemption,) = redemptions(engine, shop.id)
        assert (redemption.code, redemption.order_id, redemption.amount) == (codes[0].code, str(order["id"]), 500)

        status = bc_fakes.fixture("webhook_order_status_updated.json")
        status["data"] = {"type": "order", "id": order["id"], "status": {"previous_status_id": 11, "new_status_id": 5}}
        assert (await deliver(client, engine, "/webhooks/bigcommerce", json.dumps(status), headers)) == 200
        assert [r.status for r in redemptions(engine, shop.id)] == ["rolled_back"]

        forged = {**headers, BigCommerceConnector.WEBHOOK_HEADER: "guess"}
        assert (await deliver(client, engine, "/webhooks/bigcommerce", json.dumps(created), forged)) == 401

        gone = await client.get("/install/bigcommerce/uninstall", params={"signed_payload_jwt": signed_payload()})
        assert gone.status_code == 200 and gone.json() == {"ok": True}
        assert the_shop(engine, "bigcommerce").uninstalled_at is not None


async def test_an_embedded_session_token_names_its_shop(engine: Engine, app_settings: Settings) -> None:
    now = int(time.time())
    claims = {
        "iss": f"https://{shopify_fakes.SHOP}/admin",
        "dest": f"https://{shopify_fakes.SHOP}",
        "aud": SHOPIFY["client_id"],
        "sub": "42",
        "exp": now + 60,
        "nbf": now,
        "iat": now,
        "jti": "f8912129-1af6-4cad-9ca3-76b0f7621087",
        "sid": "aaea182f2732d44c23057c0fea584021a4485b2bd25d3eb7fd349313ad24c685",
    }
    secret = SHOPIFY["client_secret"].ljust(32, "!")  # HS256 wants a 32-byte key
    settings = replace(app_settings, connector_config={"shopify": {**SHOPIFY, "client_secret": secret}})
    async with platform_app(settings, engine) as (app, _client, _worker):

        def request(token: str) -> Request:
            return Request({"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())], "app": app})

        session = verify_shopify_session(request(jwt.encode(claims, secret, algorithm="HS256")))
        assert (session.shop, session.user_id) == (shopify_fakes.SHOP, "42")
        with pytest.raises(BadSignature):
            verify_shopify_session(request(jwt.encode(claims, "another-secret-of-32-bytes-long!", algorithm="HS256")))
        with pytest.raises(BadSignature):
            verify_shopify_session(request(jwt.encode(claims | {"aud": "other-app"}, secret, algorithm="HS256")))
