"""One contract for every shop connector in the registry (sandbox included).

Each platform gets a harness: its connector pointed at its fake (respx routers built from the
documented shapes in tests/connectors/fakes/, or the sandbox store's own ASGI app), and a
way to produce a signed order webhook in the platform's documented shape. The suite then
checks the protocol the services rely on; per-platform quirks stay in test_<platform>.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from tenacity import wait_none

from connectors import SHOP_CONNECTORS, shop_connector_class
from connectors.base import CodeSpec, ConnectorConfig, Credentials, DiscountSpec, OrderEvent, ShopConnector
from connectors.errors import BadSignature
from plugin import shared_secrets as keys
from plugin.formats.codes import normalise_generic
from plugin.sandbox.api import create_sandbox_app
from plugin.settings import Settings
from plugin.store.sandbox_models import SandboxDelivery
from tests.connectors.fakes import shopify as shopify_fakes
from tests.connectors.fakes import woocommerce as woo_fakes
from tests.connectors.fakes.bigcommerce import FakeBigCommerce
from tests.connectors.fakes.bigcommerce import fixture as bc_fixture
from tests.connectors.fakes.woocommerce import FakeWooCommerce

pytestmark = pytest.mark.anyio

CODES = [CodeSpec(code=c.replace("-", ""), display=c) for c in ("CPN-AAAA-1111", "CPN-BBBB-2222", "CPN-CCCC-3333")]
SPEC = DiscountSpec(campaign_id=7, title="Couponry: contract", kind="percentage", value=10, uses_per_code=1)

# A signed order webhook: (headers, body, the amount in minor units the order gives the code).
Webhook = tuple[dict[str, str], bytes, int]


@dataclass
class Harness:
    connector: Any  # a ShopConnector (checked below), plus its platform's own constants
    order_webhook: Callable[[str], Awaitable[Webhook]]
    own_client: httpx.AsyncClient | None = None
    signs_body: bool = True  # BigCommerce's registered secret header proves the sender, not the body


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
async def http(router: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _b64_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shopify_harness(http: httpx.AsyncClient, router: respx.MockRouter, **_: Any) -> Harness:
    shopify_fakes.shopify_fake(router)
    secret = "hush"
    config = ConnectorConfig(client_id="api-key", client_secret=secret)
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_test", scopes=("write_discounts",))
    connector = shop_connector_class("shopify")(http, config, credentials, wait=wait_none(), poll_interval=0)

    async def order_webhook(code: str) -> Webhook:
        payload = shopify_fakes.fixture("orders_create.json")
        payload["discount_codes"] = [{"code": code, "amount": "21.50", "type": "percentage"}]
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Shop-Domain": shopify_fakes.SHOP,
            "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            "X-Shopify-Hmac-Sha256": _b64_hmac(secret, body),
        }
        return headers, body, 2150

    return Harness(connector, order_webhook)


def woocommerce_harness(http: httpx.AsyncClient, router: respx.MockRouter, **_: Any) -> Harness:
    fake = FakeWooCommerce()
    fake.install(router)
    secret = "woo-hook-secret"
    connector = shop_connector_class("woocommerce")(
        http, ConnectorConfig(), fake.credentials(webhook_secret=secret), wait=wait_none()
    )

    async def order_webhook(code: str) -> Webhook:
        payload = woo_fakes.fixture("order.json")
        payload["coupon_lines"] = [{"id": 319, "code": code.lower(), "discount": "2.00", "discount_tax": "0.00", "meta_data": []}]
        headers, body = fake.delivery(payload, secret, topic="order.updated")
        return headers, body, 200

    return Harness(connector, order_webhook)


def bigcommerce_harness(http: httpx.AsyncClient, router: respx.MockRouter, **_: Any) -> Harness:
    fake = FakeBigCommerce()
    fake.install(router)
    secret = "bc-hook-secret"
    config = ConnectorConfig(client_id="client-id", client_secret="client-secret")
    connector = shop_connector_class("bigcommerce")(http, config, fake.credentials(webhook_secret=secret), wait=wait_none())

    async def order_webhook(code: str) -> Webhook:
        coupons = [c | {"code": code} for c in bc_fixture("order_coupons.json")]
        order = fake.add_order(coupons=coupons)
        payload = bc_fixture("webhook_order_created.json")
        payload["data"]["id"] = order["id"]
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", connector.WEBHOOK_HEADER: secret}
        return headers, body, 500

    return Harness(connector, order_webhook, signs_body=False)


def sandbox_harness(http: httpx.AsyncClient, router: respx.MockRouter, *, engine: Engine, settings: Settings) -> Harness:
    base = "http://sandbox.test"
    settings = replace(settings, public_url="http://app.test")
    router.route(host="sandbox.test").pass_through()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_sandbox_app(engine, settings)), base_url=base)
    shop = "contract.sandbox.test"
    config = ConnectorConfig(base_url=f"{base}/api", webhook_secret=keys.webhook_secret(settings))
    credentials = Credentials(shop_domain=shop, access_token=keys.access_token(settings, shop))
    connector = shop_connector_class("sandbox")(client, config, credentials, wait=wait_none())

    async def order_webhook(code: str) -> Webhook:
        # the sandbox's own order flow queues the webhook it would send; we sign it like its deliverer
        auth = {"X-Sandbox-Shop": shop, "X-Sandbox-Access-Token": credentials.access_token}
        placed = await client.post("/api/orders", json={"codes": [code], "subtotal": "80.00"}, headers=auth)
        assert placed.status_code == 201, placed.text
        order = placed.json()
        with Session(engine) as session:
            delivery = session.exec(select(SandboxDelivery).where(col(SandboxDelivery.order_id) == order["id"])).one()
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Sandbox-Topic": delivery.topic,
            "X-Sandbox-Shop-Domain": shop,
            "X-Sandbox-Delivery-Id": delivery.delivery_id,
            "X-Sandbox-Hmac-Sha256": _b64_hmac(keys.webhook_secret(settings), body),
        }
        amount = sum(round(float(d["amount"]) * 100) for d in order["discount_codes"])
        return headers, body, amount

    return Harness(connector, order_webhook, own_client=client)


HARNESSES: dict[str, Callable[..., Harness]] = {
    "shopify": shopify_harness,
    "woocommerce": woocommerce_harness,
    "bigcommerce": bigcommerce_harness,
    "sandbox": sandbox_harness,
}


def test_every_registered_shop_connector_has_a_harness() -> None:
    assert set(HARNESSES) == set(SHOP_CONNECTORS)


@pytest.fixture(params=sorted(SHOP_CONNECTORS))
async def harness(
    request: pytest.FixtureRequest, http: httpx.AsyncClient, router: respx.MockRouter, engine: Engine, settings: Settings
) -> AsyncIterator[Harness]:
    made = HARNESSES[request.param](http, router, engine=engine, settings=settings)
    yield made
    if made.own_client is not None:
        await made.own_client.aclose()


def _keys(codes: list[str]) -> set[str]:
    return {normalise_generic(c) for c in codes}


async def _listed(harness: Harness, discount_id: str) -> set[str]:
    return _keys([c async for c in harness.connector.list_codes(discount_id)])


async def test_the_connector_satisfies_the_protocol(harness: Harness) -> None:
    connector = harness.connector
    assert isinstance(connector, ShopConnector)
    assert connector.BATCH_SIZE >= 1 and connector.SCOPES and connector.WEBHOOK_TOPICS


async def test_push_answers_one_result_per_code_in_order_and_again_when_repeated(harness: Harness) -> None:
    discount_id = await harness.connector.ensure_discount(SPEC)
    assert isinstance(discount_id, str) and discount_id
    first = await harness.connector.push_codes(discount_id, CODES)
    assert [r.code for r in first] == [c.code for c in CODES]
    assert all(r.ok for r in first), first
    again = await harness.connector.push_codes(discount_id, CODES)  # after a crash: idempotent
    assert [r.code for r in again] == [c.code for c in CODES]
    assert all(r.ok for r in again), again
    listed = await _listed(harness, discount_id)
    assert {c.code for c in CODES} <= listed


async def test_deactivated_codes_leave_the_listing(harness: Harness) -> None:
    discount_id = await harness.connector.ensure_discount(SPEC)
    await harness.connector.push_codes(discount_id, CODES)
    gone = [CODES[0].display, CODES[2].display]
    results = await harness.connector.deactivate_codes(discount_id, gone)
    assert [r.code for r in results] == gone and all(r.ok for r in results), results
    listed = await _listed(harness, discount_id)
    assert CODES[1].code in listed
    assert not ({CODES[0].code, CODES[2].code} & listed)


async def test_a_bad_signature_is_refused(harness: Harness) -> None:
    discount_id = await harness.connector.ensure_discount(SPEC)
    await harness.connector.push_codes(discount_id, CODES[:1])
    headers, body, _ = await harness.order_webhook(CODES[0].display)
    harness.connector.verify_webhook(headers, body)  # the genuine one passes
    if harness.signs_body:
        with pytest.raises(BadSignature):
            harness.connector.verify_webhook(headers, body.replace(b"}", b', "forged": 1}', 1))
    forged = {
        k: ("AAAA" + v[4:] if "signature" in k.lower() or "hmac" in k.lower() or "token" in k.lower() else v)
        for k, v in headers.items()
    }
    with pytest.raises(BadSignature):
        harness.connector.verify_webhook(forged, body)


async def test_an_order_webhook_names_the_code_and_its_discount(harness: Harness) -> None:
    discount_id = await harness.connector.ensure_discount(SPEC)
    await harness.connector.push_codes(discount_id, CODES[:1])
    headers, body, amount = await harness.order_webhook(CODES[0].display)
    delivery = harness.connector.parse_webhook(headers, body)
    assert delivery.kind == "order" and delivery.delivery_id and len(delivery.events) == 1
    event: OrderEvent = delivery.events[0]
    if event.needs_fetch:  # thin webhooks (BigCommerce): the order comes from the API
        event = await harness.connector.fetch_order(event.order_id)
    assert event.order_id
    assert [(normalise_generic(u.code), u.amount) for u in event.codes] == [(CODES[0].code, amount)]


async def test_identifying_a_webhook_agrees_with_parsing_it(harness: Harness) -> None:
    discount_id = await harness.connector.ensure_discount(SPEC)
    await harness.connector.push_codes(discount_id, CODES[:1])
    headers, body, _ = await harness.order_webhook(CODES[0].display)
    parsed = harness.connector.parse_webhook(headers, body)
    head = harness.connector.identify_webhook(headers, body)
    fields = ("delivery_id", "topic", "shop", "kind", "response_status")
    assert [getattr(head, f) for f in fields] == [getattr(parsed, f) for f in fields]
