"""Shopify's quirks: signatures, session tokens, GraphQL documents against the pinned schema,
the cost bucket and throttling, asynchronous bulk code creation, and order payloads."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import graphql
import httpx
import jwt
import pytest
import respx
from graphql.validation import NoDeprecatedCustomRule, specified_rules
from tenacity import wait_none

import connectors.shopify as shopify
from connectors import shop_connector_class
from connectors.base import CodeSpec, ConnectorConfig, Credentials, DiscountSpec, ShippingAddress, ShopConnector
from connectors.errors import AuthError, BadSignature, NotFound, RateLimited, Rejected, UpstreamError
from connectors.shopify import UNCONFIRMED, CostBucket, ShopifyConnector
from tests.connectors.fakes.shopify import SHOP, TAKEN, ShopifyFake, fixture, order_node, shopify_fake
from tests.contracts import shopify_schema

pytestmark = pytest.mark.anyio

CONFIG = ConnectorConfig(client_id="api-key", client_secret="hush")
CREDENTIALS = Credentials(shop_domain=SHOP, access_token="shpat_test_token", scopes=("write_discounts", "read_orders"))


class FakeClock:
    """Time that only moves when someone sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds:  # tenacity's zero wait between attempts is not a pause
            self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    router = respx.MockRouter(assert_all_called=True, assert_all_mocked=True)
    yield router
    router.assert_all_called()


@pytest.fixture
async def client(router: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(router: respx.MockRouter) -> ShopifyFake:
    return shopify_fake(router)


@pytest.fixture
def connector(client: httpx.AsyncClient, clock: FakeClock) -> ShopifyConnector:
    return ShopifyConnector(client, CONFIG, CREDENTIALS, wait=wait_none(), clock=clock, sleep=clock.sleep, poll_interval=0.5)


def _no_http(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected HTTP request: {request.method} {request.url}")


NO_HTTP = httpx.AsyncClient(transport=httpx.MockTransport(_no_http))  # for the pure methods


def codes(*displays: str) -> list[CodeSpec]:
    return [CodeSpec(code=d.replace("-", "").replace(" ", ""), display=d) for d in displays]


# --- the class and its place in the registry ----------------------------------------------------


def test_connector_is_registered_and_declares_its_quirks() -> None:
    assert shop_connector_class("shopify") is ShopifyConnector
    assert ShopifyConnector.name == "shopify"
    assert ShopifyConnector.API_VERSION == "2025-01"
    assert ShopifyConnector.BATCH_SIZE == 100  # "Maximum: 100 codes" in the 2025-01 schema
    assert set(ShopifyConnector.COMPLIANCE_TOPICS) <= set(ShopifyConnector.WEBHOOK_TOPICS)


def test_bulk_add_limit_matches_the_pinned_schema() -> None:
    mutations = shopify_schema().mutation_type
    assert mutations is not None
    description = mutations.fields["discountRedeemCodeBulkAdd"].args["codes"].description
    assert f"Maximum: {ShopifyConnector.BATCH_SIZE} codes." in description


async def test_connector_satisfies_the_shop_protocol(connector: ShopifyConnector) -> None:
    typed: ShopConnector = connector  # mypy checks the signatures, isinstance the members
    assert isinstance(typed, ShopConnector)


# --- GraphQL documents against the schema -----------------------------------------------------------

DOCUMENTS = {
    name: value
    for name, value in vars(shopify).items()
    if name.isupper() and isinstance(value, str) and value.lstrip().startswith(("query", "mutation"))
}


def test_documents_are_collected() -> None:
    assert {"BULK_ADD", "BULK_CREATION_STATUS", "DISCOUNT_BASIC_CREATE", "REDEEM_CODE_BULK_DELETE", "ORDER"} <= set(DOCUMENTS)


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_document_is_valid_against_the_pinned_schema(name: str) -> None:
    document = graphql.parse(DOCUMENTS[name])
    errors = graphql.validate(shopify_schema(), document, [*specified_rules, NoDeprecatedCustomRule])
    assert not errors, [e.message for e in errors]
    operation = document.definitions[0]
    assert isinstance(operation, graphql.OperationDefinitionNode) and operation.name is not None
    assert DOCUMENTS[name] in shopify.EXPECTED_COST or operation.operation.value == "mutation"


async def test_every_document_is_sent_with_variables_the_schema_accepts(
    connector: ShopifyConnector, fake: ShopifyFake, router: respx.MockRouter
) -> None:
    # the fake validates each document and coerces its variables against the schema's input types
    fake.fail_codes["BAD"] = ("INVALID", "Code is invalid")
    for kind in ("percentage", "fixed_amount", "free_shipping"):
        discount = await connector.ensure_discount(
            DiscountSpec(campaign_id=1, title=kind, kind=kind, value=10, minimum_quantity=2)
        )
        spec = DiscountSpec(campaign_id=1, title=kind, kind=kind, value=5, platform_discount_id=discount)
        assert await connector.ensure_discount(spec) == discount
    fake.add_discount(["TAKEN-1"])
    await connector.push_codes(discount, codes("GOOD-0"))  # all imported: the ids alone
    await connector.push_codes(discount, codes("GOOD-1", "BAD", "TAKEN-1"))
    await connector.deactivate_codes(discount, ["GOOD-1"])
    assert [c async for c in connector.list_codes(discount)]
    assert await connector.count_codes(discount) >= 1
    fake.orders["gid://shopify/Order/1"] = order_node(1, codes={"GOOD-1": ["1.00"]})
    await connector.fetch_order("1")
    assert [e.order_id async for e in connector.list_recent_orders(datetime(2025, 1, 1, tzinfo=UTC))] == ["1"]
    await connector.register_webhooks("https://app.example/webhooks/shopify")
    await connector.fetch_shop()
    for state in ("paused", "active", "deleted"):
        await connector.set_discount_status(discount, state)
    sent = {call.document for call in fake.calls}
    assert set(DOCUMENTS.values()) == sent, sorted(n for n, d in DOCUMENTS.items() if d not in sent)


# --- webhooks ---------------------------------------------------------------------------------------

WEBHOOK_SECRET = "test_secret_key"
WEBHOOK_BODY = b'{"foo": "bar"}'
WEBHOOK_HMAC = "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g="  # shopify-api-js validate.test.ts


def webhook_connector(client: httpx.AsyncClient | None = None) -> ShopifyConnector:
    return ShopifyConnector(client or NO_HTTP, ConnectorConfig(client_id="api-key", client_secret=WEBHOOK_SECRET))


def signed(body: bytes, topic: str, **extra: str) -> dict[str, str]:
    digest = base64.b64encode(hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    headers = {
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": digest,
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-API-Version": "2025-01",
        "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "X-Shopify-Event-Id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
    }
    headers.update(extra)
    return headers


def test_webhook_hmac_matches_the_published_vector() -> None:
    connector = webhook_connector()
    connector.verify_webhook({"X-Shopify-Hmac-Sha256": WEBHOOK_HMAC}, WEBHOOK_BODY)
    connector.verify_webhook({"x-shopify-hmac-sha256": WEBHOOK_HMAC}, WEBHOOK_BODY)  # HTTP/2 lower-cases names


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"X-Shopify-Hmac-Sha256": WEBHOOK_HMAC}, b'{"foo": "baz"}'),
        ({"X-Shopify-Hmac-Sha256": WEBHOOK_HMAC}, b'{"foo":"bar"}'),  # re-serialised JSON is not the raw body
        ({"X-Shopify-Hmac-Sha256": "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7h="}, WEBHOOK_BODY),
        ({}, WEBHOOK_BODY),
    ],
)
def test_webhook_with_a_wrong_or_missing_signature_is_refused(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(BadSignature):
        webhook_connector().verify_webhook(headers, body)


def test_webhook_prefers_the_dedicated_webhook_secret() -> None:
    connector = ShopifyConnector(NO_HTTP, ConnectorConfig(client_secret="other", webhook_secret=WEBHOOK_SECRET))
    connector.verify_webhook({"X-Shopify-Hmac-Sha256": WEBHOOK_HMAC}, WEBHOOK_BODY)


def test_orders_create_is_parsed_with_codes_in_minor_units() -> None:
    body = json.dumps(fixture("orders_create.json")).encode()
    delivery = webhook_connector().parse_webhook(signed(body, "orders/create"), body)
    assert (delivery.delivery_id, delivery.topic, delivery.shop, delivery.kind) == (
        "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "orders/create",
        SHOP,
        "order",
    )
    (event,) = delivery.events
    assert event.kind == "created"
    assert event.order_id == "820982911946154508"
    assert [(c.code, c.amount) for c in event.codes] == [("WELCOME-7KQ2-XM4P", 2150), ("SHIPFREE-93TD", 600)]
    assert (event.subtotal, event.total, event.currency) == (18750, 20375, "USD")
    assert event.net_subtotal == 18750  # subtotal_price is after discounts, before shipping and tax
    assert (event.customer_id, event.email, event.channel) == ("115310627314723954", "jon@example.com", "web")
    assert event.occurred_at == datetime(2025, 3, 14, 13, 26, 53, tzinfo=UTC)
    # REST shipping_address: address1, address2, zip, country_code (names, city, phone left out)
    assert event.shipping_address == ShippingAddress("Chestnut Street 92", "Apt 4", "40202", "US")
    assert event.delivery_id == delivery.delivery_id and event.platform == "shopify" and event.shop == SHOP


@pytest.mark.parametrize(
    ("name", "codes_", "subtotal", "total", "currency"),
    [
        ("orders_create_jpy.json", [("HARU-Q8ZP", 1000)], 9000, 9900, "JPY"),  # no minor unit
        ("orders_create_kwd.json", [("EID-4J7N", 1250)], 12500, 13750, "KWD"),  # three decimals
        ("orders_create_no_codes.json", [], 4000, 4000, "EUR"),
    ],
)
def test_order_amounts_follow_the_currency_exponent(
    name: str, codes_: list[tuple[str, int]], subtotal: int, total: int, currency: str
) -> None:
    body = json.dumps(fixture(name)).encode()
    (event,) = webhook_connector().parse_webhook(signed(body, "orders/paid"), body).events
    assert event.kind == "paid"
    assert [(c.code, c.amount) for c in event.codes] == codes_
    assert (event.subtotal, event.total, event.currency) == (subtotal, total, currency)


def test_guest_order_has_no_customer() -> None:
    body = json.dumps(fixture("orders_create_no_codes.json")).encode()
    (event,) = webhook_connector().parse_webhook(signed(body, "orders/create"), body).events
    assert (event.customer_id, event.email, event.channel) == (None, None, "pos")
    assert event.shipping_address is None  # a POS sale ships nowhere


def test_cancellation_carries_the_codes_and_when() -> None:
    body = json.dumps(fixture("orders_cancelled.json")).encode()
    (event,) = webhook_connector().parse_webhook(signed(body, "orders/cancelled"), body).events
    assert event.kind == "cancelled"
    assert [c.code for c in event.codes] == ["WELCOME-7KQ2-XM4P", "SHIPFREE-93TD"]
    assert event.occurred_at == datetime(2025, 3, 14, 15, 0, tzinfo=UTC)


def test_refund_points_at_its_order() -> None:
    body = json.dumps(fixture("refunds_create.json")).encode()
    delivery = webhook_connector().parse_webhook(signed(body, "refunds/create"), body)
    (event,) = delivery.events
    # one refund, whole or partial: the refund ledger decides (plugin.checkout.refunds)
    assert (delivery.kind, event.kind, event.order_id) == ("order", "refund", "820982911946154508")
    assert event.codes == () and event.occurred_at == datetime(2025, 3, 20, 12, 15, tzinfo=UTC)
    assert [(r.refund_id, r.amount, r.items) for r in event.refunds] == [("890088186047892319", 0, 0)]


def test_a_partial_refund_says_what_it_returned() -> None:
    """The money of its successful refund transactions and the units of its refund lines."""
    body = json.dumps(fixture("refunds_create_partial.json")).encode()
    (event,) = webhook_connector().parse_webhook(signed(body, "refunds/create"), body).events
    assert (event.kind, event.order_id) == ("refund", "820982911946154508")
    assert [(r.refund_id, r.amount, r.items) for r in event.refunds] == [("890088186047892320", 10238, 1)]
    failed = fixture("refunds_create_partial.json")
    failed["transactions"][0]["status"] = "failure"  # money that did not go back is not refunded
    body = json.dumps(failed).encode()
    (event,) = webhook_connector().parse_webhook(signed(body, "refunds/create"), body).events
    assert [(r.amount, r.items) for r in event.refunds] == [(0, 1)]


def test_an_order_lists_its_refunds_and_units() -> None:
    order = fixture("orders_create.json")
    order["refunds"] = [fixture("refunds_create_partial.json")]
    order["financial_status"] = "partially_refunded"
    body = json.dumps(order).encode()
    (event,) = webhook_connector().parse_webhook(signed(body, "orders/updated"), body).events
    assert (event.kind, event.items, event.total) == ("updated", 2, 20375)
    assert [(r.refund_id, r.amount, r.items) for r in event.refunds] == [("890088186047892320", 10238, 1)]
    order["financial_status"] = "refunded"  # the platform says the whole order is refunded
    body = json.dumps(order).encode()
    (event,) = webhook_connector().parse_webhook(signed(body, "orders/updated"), body).events
    assert event.kind == "refunded"


@pytest.mark.parametrize(
    ("topic", "name", "kind", "customer_id", "email", "order_ids"),
    [
        (
            "customers/redact",
            "customers_redact.json",
            "customers_redact",
            "191167",
            "john@example.com",
            ("299938", "280263", "220458"),
        ),
        (
            "customers/data_request",
            "customers_data_request.json",
            "customers_data_request",
            "191167",
            "john@example.com",
            ("299938", "280263", "220458"),
        ),
        ("shop/redact", "shop_redact.json", "shop_redact", None, None, ()),
        ("app/uninstalled", "app_uninstalled.json", "app_uninstalled", None, None, ()),
        ("products/create", "app_uninstalled.json", "other", None, None, ()),
    ],
)
def test_other_topics(
    topic: str, name: str, kind: str, customer_id: str | None, email: str | None, order_ids: tuple[str, ...]
) -> None:
    body = json.dumps(fixture(name)).encode()
    delivery = webhook_connector().parse_webhook(signed(body, topic), body)
    assert (delivery.kind, delivery.customer_id, delivery.email, delivery.order_ids, delivery.events) == (
        kind,
        customer_id,
        email,
        order_ids,
        (),
    )


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        ("orders/paid", "orders_create.json"),
        ("customers/redact", "customers_redact.json"),
        ("products/create", "app_uninstalled.json"),
    ],
)
def test_identifying_reads_the_headers_and_agrees_with_parsing(topic: str, name: str) -> None:
    body = json.dumps(fixture(name)).encode()
    head = webhook_connector().identify_webhook(signed(body, topic), body)
    parsed = webhook_connector().parse_webhook(signed(body, topic), body)
    assert (head.delivery_id, head.topic, head.shop, head.kind) == (parsed.delivery_id, topic, SHOP, parsed.kind)
    assert head.events == ()  # left to whoever processes it


def test_identifying_without_the_shop_header_reads_the_payload() -> None:
    body = json.dumps(fixture("shop_redact.json")).encode()
    headers = signed(body, "shop/redact")
    del headers["X-Shopify-Shop-Domain"]
    head = webhook_connector().identify_webhook(headers, body)
    assert head.shop == fixture("shop_redact.json")["shop_domain"] and head.kind == "shop_redact"


def test_delivery_id_falls_back_to_the_event_id_then_the_body() -> None:
    body = json.dumps(fixture("shop_redact.json")).encode()
    headers = signed(body, "shop/redact")
    del headers["X-Shopify-Webhook-Id"]
    assert webhook_connector().parse_webhook(headers, body).delivery_id == "98880550-7158-44d4-b7cd-2c97c8a091b5"
    del headers["X-Shopify-Event-Id"]
    first = webhook_connector().parse_webhook(headers, body).delivery_id
    assert first.startswith("sha256:") and first == webhook_connector().parse_webhook(headers, body).delivery_id


def test_webhook_that_is_not_json_is_rejected() -> None:
    with pytest.raises(Rejected):
        webhook_connector().parse_webhook(signed(b"<xml/>", "orders/create"), b"<xml/>")


async def test_register_webhooks_skips_compliance_topics_and_tolerates_existing(
    connector: ShopifyConnector, fake: ShopifyFake
) -> None:
    first = await connector.register_webhooks("https://app.example/webhooks/shopify")
    assert sorted(first) == ["app/uninstalled", "orders/cancelled", "orders/create", "orders/paid", "refunds/create"]
    assert all(v.startswith("gid://shopify/WebhookSubscription/") for v in first.values())
    assert {topic for topic, _ in fake.webhooks} == {
        "ORDERS_CREATE",
        "ORDERS_PAID",
        "ORDERS_CANCELLED",
        "REFUNDS_CREATE",
        "APP_UNINSTALLED",
    }
    again = await connector.register_webhooks("https://app.example/webhooks/shopify")
    assert set(again.values()) == {""}
    assert fake.route.call_count == 10


# --- install ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("my-shop.myshopify.com", "my-shop.myshopify.com"),
        ("  My-Shop.MyShopify.com ", "my-shop.myshopify.com"),
        ("https://my-shop.myshopify.com/admin", "my-shop.myshopify.com"),
        ("my-shop.myshopify.com.evil.com", None),
        ("evil.com/my-shop.myshopify.com", None),
        ("-shop.myshopify.com", None),
        ("my_shop.myshopify.com", None),
        ("myshopify.com", None),
        ("", None),
    ],
)
def test_shop_domain_validation(given: str, expected: str | None) -> None:
    assert ShopifyConnector.shop_domain(given) == expected


def test_oauth_query_hmac_matches_the_published_vector() -> None:
    connector = ShopifyConnector(NO_HTTP, CONFIG)
    params = {"code": "a94a110d86d2452eb3e2af4cfb8a3828", "shop": "some-shop.myshopify.com", "timestamp": "1337178173"}
    expected = "2cb1a277650a659f1b11e92a4a64275b128e037f2c3390e3c8fd2d8721dac9e2"
    assert connector.oauth_hmac(params) == expected
    assert connector.verify_oauth_query({**params, "hmac": expected}, now=1337178173 + 60) == "some-shop.myshopify.com"


def test_oauth_query_hmac_with_an_array_parameter() -> None:
    connector = ShopifyConnector(NO_HTTP, CONFIG)
    expected = "b93b9f82996f6f8bf9f1b7bbddec284c8fabacdc4e12dc80550b4705f3003b1e"
    assert connector.oauth_hmac({"shop": "some-shop.myshopify.com", "ids[]": ["2", "1"]}) == expected
    assert connector.oauth_hmac([("shop", "some-shop.myshopify.com"), ("ids[]", "2"), ("ids[]", "1")]) == expected


@pytest.mark.parametrize(
    ("change", "resign"),
    [
        ({"code": "tampered"}, False),
        ({"hmac": "0" * 64}, False),
        ({"timestamp": str(1337178173 - 2 * 24 * 3600)}, True),  # signed, but too old
        ({"shop": "evil.com"}, True),  # signed, but not a shop
    ],
)
def test_oauth_query_that_does_not_verify_is_refused(change: dict[str, str], resign: bool) -> None:
    connector = ShopifyConnector(NO_HTTP, CONFIG)
    params = {"code": "a94a110d86d2452eb3e2af4cfb8a3828", "shop": "some-shop.myshopify.com", "timestamp": "1337178173"}
    params["hmac"] = connector.oauth_hmac(params)
    params.update(change)
    if resign:
        params["hmac"] = connector.oauth_hmac(params)
    with pytest.raises(BadSignature):
        connector.verify_oauth_query(params, now=1337178173 + 60)


def test_callback_checks_the_state() -> None:
    connector = ShopifyConnector(NO_HTTP, CONFIG)
    params = {"code": "abc", "shop": "some-shop.myshopify.com", "state": "nonce-1", "timestamp": str(int(time.time()))}
    params["hmac"] = connector.oauth_hmac(params)
    assert connector.verify_callback(params, expected_state="nonce-1") == ("some-shop.myshopify.com", "abc")
    with pytest.raises(BadSignature):
        connector.verify_callback(params, expected_state="nonce-2")


def test_authorize_url() -> None:
    connector = ShopifyConnector(NO_HTTP, CONFIG)
    url = connector.authorize_url(
        "Some-Shop.myshopify.com", redirect_uri="https://app.example/install/shopify/callback", state="s1"
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "some-shop.myshopify.com", "/admin/oauth/authorize")
    assert parse_qs(parts.query) == {
        "client_id": ["api-key"],
        "scope": ["write_discounts,read_orders,write_app_proxy"],
        "redirect_uri": ["https://app.example/install/shopify/callback"],
        "state": ["s1"],
    }
    online = parse_qs(
        urlsplit(connector.authorize_url("some-shop.myshopify.com", redirect_uri="x", state="s", online=True)).query
    )
    assert online["grant_options[]"] == ["per-user"]
    with pytest.raises(Rejected):
        connector.authorize_url("evil.com", redirect_uri="x", state="s")


async def test_exchange_code_for_a_token(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    route = router.post(f"https://{SHOP}/admin/oauth/access_token").respond(200, json=fixture("oauth_access_token.json"))
    connector = ShopifyConnector(client, CONFIG)
    credentials = await connector.exchange_code(SHOP, "a94a110d86d2452eb3e2af4cfb8a3828")
    assert credentials == Credentials(
        shop_domain=SHOP,
        access_token="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",
        scopes=("write_discounts", "read_orders", "write_app_proxy"),
    )
    assert json.loads(route.calls.last.request.content) == {
        "client_id": "api-key",
        "client_secret": "hush",
        "code": "a94a110d86d2452eb3e2af4cfb8a3828",
    }
    assert connector.missing_scopes(credentials) == ()
    assert connector.missing_scopes(Credentials(shop_domain=SHOP, scopes=("write_discounts",))) == (
        "read_orders",
        "write_app_proxy",
    )


async def test_token_exchange_for_embedded_apps(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    route = router.post(f"https://{SHOP}/admin/oauth/access_token").respond(
        200,
        json={
            "access_token": "shpua_1",
            "scope": "write_discounts,read_orders,write_app_proxy",
            "expires_in": 86399,
            "associated_user": {"id": 902541635},
        },
    )
    credentials = await ShopifyConnector(client, CONFIG).exchange_session_token(SHOP, "session.jwt", online=True)
    assert credentials.access_token == "shpua_1" and credentials.extra == {
        "associated_user_id": "902541635",
        "expires_in": "86399",
    }
    sent = json.loads(route.calls.last.request.content)
    assert sent["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert sent["subject_token"] == "session.jwt"
    assert sent["requested_token_type"] == "urn:shopify:params:oauth:token-type:online-access-token"


async def test_refused_code_exchange(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    router.post(f"https://{SHOP}/admin/oauth/access_token").respond(
        400, json={"error": "invalid_request", "error_description": "The authorization code was not found or was already used"}
    )
    with pytest.raises(Rejected, match="already used"):
        await ShopifyConnector(client, CONFIG).exchange_code(SHOP, "used")


def test_base_url_points_everything_at_a_local_server() -> None:
    config = ConnectorConfig(
        client_id="k", client_secret="s", base_url="http://127.0.0.1:9000/shopify/{shop}/admin/api/{version}/graphql.json"
    )
    connector = ShopifyConnector(NO_HTTP, config, CREDENTIALS)
    assert connector.graphql_url == f"http://127.0.0.1:9000/shopify/{SHOP}/admin/api/2025-01/graphql.json"
    assert connector.authorize_url(SHOP, redirect_uri="r", state="s").startswith(
        f"http://127.0.0.1:9000/shopify/{SHOP}/admin/oauth/authorize?"
    )


# --- session tokens ------------------------------------------------------------------------------

# aud as in shopify_python_api's session_token_test; the secret is longer than its "API Secret"
# because PyJWT warns about HMAC keys under 32 bytes (real client secrets are 38).
SESSION_SECRET = "shpss_0123456789abcdef0123456789abcdef"
SESSION_CONFIG = ConnectorConfig(client_id="API key", client_secret=SESSION_SECRET)


def session_token(secret: str = SESSION_SECRET, **changes: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "https://test-shop.myshopify.com/admin",
        "dest": "https://test-shop.myshopify.com",
        "aud": "API key",
        "sub": "1",
        "exp": now + 60,
        "nbf": now - 1,
        "iat": now - 1,
        "jti": "4321",
        "sid": "abc123",
    }
    claims.update(changes)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm="HS256")


def test_session_token_is_verified() -> None:
    token = ShopifyConnector(NO_HTTP, SESSION_CONFIG).verify_session_token("Bearer " + session_token())
    assert (token.shop, token.user_id, token.session_id) == ("test-shop.myshopify.com", "1", "abc123")


def test_session_token_tolerates_a_slightly_future_nbf() -> None:
    ShopifyConnector(NO_HTTP, SESSION_CONFIG).verify_session_token(session_token(nbf=int(time.time()) + 5))


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(session_token(exp=int(time.time()) - 60), id="expired"),
        pytest.param(session_token(aud="another app"), id="wrong-aud"),
        pytest.param(session_token(secret="shpss_ffffffffffffffffffffffffffffffff"), id="bad-signature"),
        pytest.param(session_token(nbf=int(time.time()) + 120), id="not-yet-valid"),
        pytest.param(session_token(dest="https://other-shop.myshopify.com"), id="iss-dest-mismatch"),
        pytest.param(session_token(iss="https://evil.com/admin", dest="https://evil.com"), id="not-a-shop"),
        pytest.param(session_token(dest=None), id="no-dest"),
        pytest.param(
            jwt.encode(jwt.decode(session_token(), options={"verify_signature": False}), "", algorithm="none"), id="alg-none"
        ),
    ],
)
def test_session_token_refused(token: str) -> None:
    with pytest.raises(BadSignature):
        ShopifyConnector(NO_HTTP, SESSION_CONFIG).verify_session_token(token)


# --- discounts ----------------------------------------------------------------------------------


async def test_percentage_discount_maps_the_campaign_rules(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    spec = DiscountSpec(
        campaign_id=7,
        title="Welcome 15%",
        kind="percentage",
        value=15,
        starts_at=datetime(2025, 4, 1, tzinfo=UTC),
        ends_at=datetime(2025, 5, 1, 12, tzinfo=UTC),
        uses_per_code=1,
        once_per_customer=True,
        minimum_subtotal=5000,
        product_ids=("632910392", "gid://shopify/Product/921728736"),
    )
    discount = await connector.ensure_discount(spec)
    assert discount.startswith("gid://shopify/DiscountCodeNode/")
    sent = fake.calls[-1].variables["discount"]
    assert sent["code"].startswith("CPNRY") and len(sent["code"]) == 25  # a seed nobody can guess
    assert {k: v for k, v in sent.items() if k != "code"} == {
        "title": "Welcome 15%",
        "appliesOncePerCustomer": True,
        "usageLimit": 1,
        "customerSelection": {"all": True},
        "startsAt": "2025-04-01T00:00:00Z",
        "endsAt": "2025-05-01T12:00:00Z",
        "minimumRequirement": {"subtotal": {"greaterThanOrEqualToSubtotal": "50.00"}},
        "combinesWith": {"productDiscounts": False, "orderDiscounts": False, "shippingDiscounts": False},
        "customerGets": {
            "value": {"percentage": 0.15},
            "items": {"products": {"productsToAdd": ["gid://shopify/Product/632910392", "gid://shopify/Product/921728736"]}},
        },
    }
    assert fake.discounts[discount].kind == "DiscountCodeBasic"


@pytest.mark.parametrize(("currency", "value", "amount"), [("USD", 1050, "10.50"), ("JPY", 500, "500"), ("KWD", 1250, "1.250")])
async def test_fixed_amount_discount_uses_the_currency_exponent(
    connector: ShopifyConnector, fake: ShopifyFake, currency: str, value: int, amount: str
) -> None:
    spec = DiscountSpec(
        campaign_id=1,
        title="Off",
        kind="fixed_amount",
        value=value,
        currency=currency,
        collection_ids=("841564295",),
        combines_with_codes=True,
    )
    await connector.ensure_discount(spec)
    sent = fake.calls[-1].variables["discount"]
    assert sent["customerGets"] == {
        "value": {"discountAmount": {"amount": amount, "appliesOnEachItem": False}},
        "items": {"collections": {"add": ["gid://shopify/Collection/841564295"]}},
    }
    assert sent["combinesWith"] == {"productDiscounts": True, "orderDiscounts": True, "shippingDiscounts": True}


async def test_free_shipping_discount(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    spec = DiscountSpec(campaign_id=1, title="Ship free", kind="free_shipping", minimum_quantity=3, uses_per_code=None)
    discount = await connector.ensure_discount(spec)
    assert fake.calls[-1].operation == "discountCodeFreeShippingCreate"
    sent = fake.calls[-1].variables["discount"]
    assert sent["destination"] == {"all": True} and sent["usageLimit"] is None
    assert sent["minimumRequirement"] == {"quantity": {"greaterThanOrEqualToQuantity": "3"}}
    assert "customerGets" not in sent and fake.discounts[discount].kind == "DiscountCodeFreeShipping"


async def test_update_uses_the_existing_discount(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    existing = fake.add_discount()
    legacy = existing.rsplit("/", 1)[1]
    spec = DiscountSpec(campaign_id=1, title="Renamed", kind="percentage", value=20, platform_discount_id=legacy)
    assert await connector.ensure_discount(spec) == existing
    call = fake.calls[-1]
    assert call.operation == "discountCodeBasicUpdate" and call.variables["id"] == existing
    assert "code" not in call.variables["discount"]  # the seed code stays
    assert call.variables["discount"]["minimumRequirement"] == {
        "quantity": {"greaterThanOrEqualToQuantity": None},
        "subtotal": {"greaterThanOrEqualToSubtotal": None},
    }
    assert fake.discounts[existing].input["title"] == "Renamed"


async def test_update_of_a_missing_discount_is_rejected(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    spec = DiscountSpec(campaign_id=1, title="x", kind="percentage", value=5, platform_discount_id="404")
    with pytest.raises(Rejected, match="does not exist"):
        await connector.ensure_discount(spec)
    assert fake.route.call_count == 1


MARKER = "CPNRY0123456789ABCDEF0123"
LOST_ANSWERS = [
    pytest.param(httpx.Response(502, text="Bad Gateway"), id="502"),
    pytest.param(httpx.Response(503, text="Service Unavailable"), id="503"),
    pytest.param(httpx.ReadTimeout, id="timeout"),
    pytest.param(httpx.RemoteProtocolError, id="connection-lost"),
    pytest.param(httpx.Response(429, headers={"Retry-After": "1"}, json={"errors": "Throttled"}), id="429"),
]


@pytest.mark.parametrize("kind", ["percentage", "free_shipping"])
@pytest.mark.parametrize("lost", LOST_ANSWERS)
async def test_a_create_whose_answer_was_lost_is_found_by_its_marker_not_made_twice(
    connector: ShopifyConnector, fake: ShopifyFake, lost: httpx.Response | type[httpx.TransportError], kind: str
) -> None:
    fake.lose_answer(lost)  # Shopify commits the discount; we never hear of it
    spec = DiscountSpec(campaign_id=1, title="x", kind=kind, value=5, marker=MARKER)  # type: ignore[arg-type]
    discount = await connector.ensure_discount(spec)
    (only,) = fake.discounts
    assert discount == only and MARKER.casefold() in fake.discounts[only].codes
    create = "discountCodeFreeShippingCreate" if kind == "free_shipping" else "discountCodeBasicCreate"
    assert [c.operation for c in fake.calls] == [create, "codeDiscountNodeByCode"]
    assert fake.calls[0].variables["discount"]["code"] == MARKER and fake.calls[1].variables == {"code": MARKER}


@pytest.mark.parametrize("lost", LOST_ANSWERS)
async def test_a_create_that_did_not_happen_is_made_once_the_marker_is_provably_free(
    connector: ShopifyConnector, fake: ShopifyFake, lost: httpx.Response | type[httpx.TransportError]
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:  # refused before Shopify did anything
        if isinstance(lost, httpx.Response):
            return lost
        raise lost("no answer", request=request)

    fake.script(fail)
    discount = await connector.ensure_discount(DiscountSpec(campaign_id=1, title="x", kind="percentage", value=5, marker=MARKER))
    assert list(fake.discounts) == [discount] and set(fake.discounts[discount].codes) == {MARKER.casefold()}
    assert [c.operation for c in fake.calls] == ["discountCodeBasicCreate", "codeDiscountNodeByCode", "discountCodeBasicCreate"]
    assert fake.calls[2].variables["discount"]["code"] == MARKER  # the same marker, never a new one


async def test_every_attempt_of_a_create_uses_the_same_marker_and_each_retry_looks_first(
    connector: ShopifyConnector, fake: ShopifyFake
) -> None:
    nobody = {"data": {"codeDiscountNodeByCode": None}}  # each lookup: the marker is still free
    for _ in range(ShopifyConnector.MAX_ATTEMPTS - 1):
        fake.script(httpx.Response(502, text="Bad Gateway"), httpx.Response(200, json=nobody))
    fake.lose_answer(httpx.Response(502, text="Bad Gateway"))  # the last create commits, unheard
    spec = DiscountSpec(campaign_id=1, title="x", kind="percentage", value=5, marker=MARKER)
    with pytest.raises(UpstreamError):
        await connector.ensure_discount(spec)
    creates = [c for c in fake.calls if c.operation == "discountCodeBasicCreate"]
    lookups = [c for c in fake.calls if c.operation == "codeDiscountNodeByCode"]
    assert len(creates) == ShopifyConnector.MAX_ATTEMPTS and len(lookups) == ShopifyConnector.MAX_ATTEMPTS - 1
    assert {c.variables["discount"]["code"] for c in creates} == {MARKER}
    (committed,) = fake.discounts
    # the next run (the outbox retries the job) with the stored marker adopts it
    assert await connector.ensure_discount(spec) == committed
    assert [c.operation for c in fake.calls[-2:]] == ["discountCodeBasicCreate", "codeDiscountNodeByCode"]
    assert len(fake.discounts) == 1


async def test_a_create_refused_because_the_marker_is_taken_adopts_its_discount(
    connector: ShopifyConnector, fake: ShopifyFake
) -> None:
    earlier = fake.add_discount([MARKER])  # an earlier run committed it and died before storing the id
    spec = DiscountSpec(campaign_id=1, title="x", kind="percentage", value=5, marker=MARKER)
    assert await connector.ensure_discount(spec) == earlier
    assert [c.operation for c in fake.calls] == ["discountCodeBasicCreate", "codeDiscountNodeByCode"]
    assert len(fake.discounts) == 1


async def test_without_a_marker_each_create_draws_one(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    await connector.ensure_discount(DiscountSpec(campaign_id=1, title="x", kind="percentage", value=5))
    await connector.ensure_discount(DiscountSpec(campaign_id=2, title="y", kind="percentage", value=5))
    first, second = (c.variables["discount"]["code"] for c in fake.calls)
    assert first != second and first.startswith("CPNRY") and len(first) == 25


async def test_discount_create_is_retried_when_the_request_never_left(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fake.script(refuse)
    await connector.ensure_discount(DiscountSpec(campaign_id=1, title="x", kind="percentage", value=5))
    assert fake.route.call_count == 2 and len(fake.discounts) == 1


# --- pushing codes ------------------------------------------------------------------------------


async def test_push_codes_adds_then_polls_the_bulk_creation(
    connector: ShopifyConnector, fake: ShopifyFake, clock: FakeClock
) -> None:
    discount = fake.add_discount()
    results = await connector.push_codes(discount, codes("WELC-7KQ2-XM4P", "WELC-93TD-PL2K"))
    assert [(r.code, r.ok, r.error) for r in results] == [("WELC7KQ2XM4P", True, None), ("WELC93TDPL2K", True, None)]
    held = fake.discounts[discount].codes
    # each code's redeem-code id comes back, read from the finished bulk creation's codes
    assert [r.platform_id for r in results] == [held["welc-7kq2-xm4p"]["id"], held["welc-93td-pl2k"]["id"]]
    assert [c.operation for c in fake.calls] == [
        "discountRedeemCodeBulkAdd",
        "discountRedeemCodeBulkCreation",  # the poll: done, nothing failed
        "discountRedeemCodeBulkCreation",  # the codes' ids
    ]
    assert fake.calls[2].document == shopify.BULK_CREATION_IDS  # no errors to read: the lighter document
    assert fake.calls[0].variables == {"discountId": discount, "codes": [{"code": "WELC-7KQ2-XM4P"}, {"code": "WELC-93TD-PL2K"}]}
    assert fake.calls[0].request.headers["X-Shopify-Access-Token"] == "shpat_test_token"
    assert set(fake.discounts[discount].codes) == {"welc-7kq2-xm4p", "welc-93td-pl2k"}  # display form: what shoppers type
    assert clock.sleeps == [0.5]  # one poll interval, no throttling


async def test_push_codes_without_keeping_ids_skips_the_read(
    client: httpx.AsyncClient, fake: ShopifyFake, clock: FakeClock
) -> None:
    config = ConnectorConfig(client_id="api-key", client_secret="hush", extra={"redeem_code_ids": "off"})
    connector = ShopifyConnector(client, config, CREDENTIALS, wait=wait_none(), clock=clock, sleep=clock.sleep)
    results = await connector.push_codes(fake.add_discount(), codes("A-1", "A-2"))
    assert [(r.ok, r.platform_id) for r in results] == [(True, None), (True, None)]
    assert [c.operation for c in fake.calls] == ["discountRedeemCodeBulkAdd", "discountRedeemCodeBulkCreation"]


async def test_push_codes_polls_until_done(connector: ShopifyConnector, router: respx.MockRouter, clock: FakeClock) -> None:
    fake = ShopifyFake(router, bulk_polls=3)
    discount = fake.add_discount()
    await connector.push_codes(discount, codes("A-1"))
    assert [c.operation for c in fake.calls].count("discountRedeemCodeBulkCreation") == 3 + 1  # polls, then the ids
    assert clock.sleeps == [0.5, 1.0, 2.0]


async def test_push_codes_reports_shopify_errors_per_code(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    fake.add_discount(["OLD-0001"])  # another discount already holds this code
    discount = fake.add_discount()
    fake.fail_codes["BAD CODE"] = ("INVALID", "Code is invalid")
    results = await connector.push_codes(discount, codes("NEW-0001", "OLD-0001", "BAD CODE", "NEW-0002"))
    assert [(r.code, r.ok, r.error) for r in results] == [
        ("NEW0001", True, None),
        ("OLD0001", False, f"{TAKEN} (TAKEN)"),
        ("BADCODE", False, "Code is invalid (INVALID)"),
        ("NEW0002", True, None),
    ]
    assert results[0].platform_id == fake.discounts[discount].codes["new-0001"]["id"]
    assert [c.operation for c in fake.calls] == [
        "discountRedeemCodeBulkAdd",
        "discountRedeemCodeBulkCreation",  # done, failedCount 2
        "discountRedeemCodeBulkCreation",  # the per-code results
        "codeDiscountNodeByCode",  # is the taken code ours already?
    ]


async def test_push_codes_again_is_idempotent(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    discount = fake.add_discount()
    batch = codes("RETRY-01", "RETRY-02")
    first = await connector.push_codes(discount, batch)
    again = await connector.push_codes(discount, batch)  # e.g. the outbox retried after a timeout
    assert [(r.ok, r.error) for r in again] == [(True, None), (True, None)]
    # the codes already ours keep their ids: found by the search once their owner is confirmed
    assert [r.platform_id for r in again] == [r.platform_id for r in first] and all(r.platform_id for r in first)
    # first: add, poll, ids; again: add, poll, per-code results, then owner + search for each code
    assert fake.route.call_count == 3 + 3 + 2 * 2


async def test_push_codes_in_chunks_of_the_batch_size(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    discount = fake.add_discount()
    results = await connector.push_codes(discount, codes(*(f"CODE-{i:04d}" for i in range(250))))
    assert len(results) == 250 and all(r.ok for r in results)
    adds = [c for c in fake.calls if c.operation == "discountRedeemCodeBulkAdd"]
    assert [len(c.variables["codes"]) for c in adds] == [100, 100, 50]
    assert fake.route.call_count == 9  # add, poll and ids per batch
    assert len({r.platform_id for r in results}) == 250 and None not in {r.platform_id for r in results}


async def test_push_codes_resubmits_the_good_codes_of_a_refused_batch(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    discount = fake.add_discount()
    refused = {
        "data": {
            "discountRedeemCodeBulkAdd": {
                "bulkCreation": None,
                "userErrors": [
                    {
                        "code": "TOO_LONG",
                        "field": ["codes", "1", "code"],
                        "message": "Code is too long (maximum is 255 characters)",
                    }
                ],
            }
        },
        "extensions": {
            "cost": {
                "requestedQueryCost": 10,
                "actualQueryCost": 10,
                "throttleStatus": {"maximumAvailable": 1000, "currentlyAvailable": 990, "restoreRate": 100},
            }
        },
    }
    fake.script(httpx.Response(200, json=refused))
    results = await connector.push_codes(discount, codes("OK-1", "X" * 300, "OK-2"))
    assert [(r.ok, r.error) for r in results] == [
        (True, None),
        (False, "Code is too long (maximum is 255 characters)"),
        (True, None),
    ]
    assert [len(c.variables["codes"]) for c in fake.calls if c.operation == "discountRedeemCodeBulkAdd"] == [3, 2]


async def test_push_codes_to_a_missing_discount_is_rejected(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    with pytest.raises(Rejected, match="does not exist"):
        await connector.push_codes("gid://shopify/DiscountCodeNode/404", codes("A-1"))
    assert fake.route.call_count == 1


# --- throttling and failures ----------------------------------------------------------------------


async def test_throttled_with_http_200_then_success(connector: ShopifyConnector, fake: ShopifyFake, clock: FakeClock) -> None:
    discount = fake.add_discount()
    fake.throttle(requested=10, available=4, restore_rate=50)
    results = await connector.push_codes(discount, codes("T-1"))
    assert results[0].ok
    assert [c.operation for c in fake.calls] == [
        "discountRedeemCodeBulkAdd",
        "discountRedeemCodeBulkAdd",
        "discountRedeemCodeBulkCreation",
        "discountRedeemCodeBulkCreation",
    ]
    assert clock.sleeps[0] == pytest.approx((10 - 4) / 50)  # the deficit over the restore rate, then the poll


async def test_throttled_until_attempts_run_out(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    fake.throttle(times=ShopifyConnector.MAX_ATTEMPTS, requested=10, available=4, restore_rate=50)
    with pytest.raises(RateLimited) as caught:
        await connector.fetch_shop()
    assert caught.value.retry_after == pytest.approx(0.12)
    assert fake.route.call_count == ShopifyConnector.MAX_ATTEMPTS


async def test_http_429_honours_retry_after(connector: ShopifyConnector, fake: ShopifyFake, clock: FakeClock) -> None:
    fake.script(
        httpx.Response(429, headers={"Retry-After": "2.0"}, json={"errors": "Exceeded 2 calls per second for api client."})
    )
    assert (await connector.fetch_shop())["myshopifyDomain"] == SHOP
    assert fake.route.call_count == 2
    assert clock.sleeps == [2.0]


async def test_upstream_errors_are_retried_then_raised(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    fake.script(httpx.Response(503, text="Service Unavailable"), timeout)
    await connector.fetch_shop()
    assert fake.route.call_count == 3
    fake.script(*[httpx.Response(500, json={"errors": "Internal error"})] * ShopifyConnector.MAX_ATTEMPTS)
    with pytest.raises(UpstreamError):
        await connector.fetch_shop()
    assert fake.route.call_count == 3 + ShopifyConnector.MAX_ATTEMPTS


@pytest.mark.parametrize(("status", "error"), [(401, AuthError), (403, AuthError), (404, NotFound), (400, Rejected)])
async def test_client_errors_are_not_retried(
    connector: ShopifyConnector, fake: ShopifyFake, status: int, error: type[Exception]
) -> None:
    fake.script(
        httpx.Response(status, json={"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"})
    )
    with pytest.raises(error):
        await connector.fetch_shop()
    assert fake.route.call_count == 1


async def test_max_cost_exceeded_is_rejected(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    fake.script(httpx.Response(200, json=fixture("graphql_max_cost_exceeded.json")))
    with pytest.raises(Rejected, match="exceeds the single query max cost"):
        await connector.fetch_shop()
    assert fake.route.call_count == 1


async def test_access_denied_is_an_auth_error(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    denied = {
        "errors": [{"message": "Access denied for discountRedeemCodeBulkAdd field.", "extensions": {"code": "ACCESS_DENIED"}}]
    }
    fake.script(httpx.Response(200, json=denied))
    with pytest.raises(AuthError):
        await connector.push_codes(fake.add_discount(), codes("A-1"))


async def test_no_credentials_is_an_auth_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(AuthError):
        await ShopifyConnector(client, CONFIG).fetch_shop()


async def test_pacer_keeps_under_the_bucket_without_being_throttled(
    client: httpx.AsyncClient, router: respx.MockRouter, clock: FakeClock
) -> None:
    fake = shopify_fake(router, maximum=1000, restore_rate=100, clock=clock)
    connector = ShopifyConnector(client, CONFIG, CREDENTIALS, wait=wait_none(), clock=clock, sleep=clock.sleep, poll_interval=0)
    discount = fake.add_discount()
    start = clock.now
    results = await connector.push_codes(discount, codes(*(f"P-{i:03d}" for i in range(600))))
    assert all(r.ok for r in results)
    assert fake.throttled == 0
    # 6 x (add 10 + poll 1 + ids 203) = 1284 points; the bucket starts with 1000 and restores 100/s
    assert clock.now - start == pytest.approx((1284 - 1000) / 100, abs=0.11)


async def test_concurrent_pushes_share_the_bucket(client: httpx.AsyncClient, router: respx.MockRouter, clock: FakeClock) -> None:
    fake = shopify_fake(router, maximum=1000, restore_rate=100, clock=clock)
    bucket = CostBucket(clock, clock.sleep)
    pushers = [
        ShopifyConnector(
            client, CONFIG, CREDENTIALS, wait=wait_none(), clock=clock, sleep=clock.sleep, poll_interval=0, bucket=bucket
        )
        for _ in range(4)
    ]
    discount = fake.add_discount()
    batches = [codes(*(f"C{n}-{i:03d}" for i in range(200))) for n in range(4)]
    results = await asyncio.gather(*(p.push_codes(discount, b) for p, b in zip(pushers, batches, strict=True)))
    assert all(r.ok for rs in results for r in rs)
    assert fake.throttled == 0


async def test_bucket_lets_one_probe_out_until_shopify_answers(clock: FakeClock) -> None:
    bucket = CostBucket(clock, clock.sleep)
    await bucket.acquire(10)  # the probe
    waiting = asyncio.ensure_future(bucket.acquire(10))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()
    await bucket.settle(
        10,
        {
            "requestedQueryCost": 10,
            "actualQueryCost": 6,
            "throttleStatus": {"maximumAvailable": 100, "currentlyAvailable": 94, "restoreRate": 5},
        },
    )
    await waiting
    assert await bucket.available() == pytest.approx(84)
    await bucket.acquire(90)  # more than it holds: waits (90 - 84) / 5 s
    assert clock.sleeps == [pytest.approx(1.2)]
    await bucket.settle(90, None, charged=False)  # never sent: the points come back
    assert await bucket.available() == pytest.approx(90)


# --- deactivating, listing, counting -----------------------------------------------------------------


async def test_deactivate_codes_finds_and_deletes_them(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    discount = fake.add_discount(["GONE-0001", "GONE-0002", "KEEP-0003", "GONE-00011"])
    by_id = fake.discounts[discount].codes["gone-0002"]["id"]
    results = await connector.deactivate_codes(discount, ["gone-0001", by_id, "NEVER-PUSHED"])
    # a code the search does not find is not known to be gone: never reported done
    assert [(r.code, r.ok) for r in results] == [("gone-0001", True), (by_id, True), ("NEVER-PUSHED", False)]
    assert results[2].error == UNCONFIRMED
    assert set(fake.discounts[discount].codes) == {"keep-0003", "gone-00011"}  # the fuzzy search hit is spared
    assert [c.operation for c in fake.calls] == [
        "codeDiscountNode",
        "codeDiscountNode",
        "discountCodeRedeemCodeBulkDelete",
        "job",
    ]
    assert fake.calls[2].variables["ids"] == [results[0].platform_id, by_id]


async def test_a_code_the_search_does_not_find_is_never_reported_deactivated(
    connector: ShopifyConnector, fake: ShopifyFake
) -> None:
    """Shopify's codes(query:) search answers nothing (its index lags, or the match is fuzzy):
    the code stays on the platform and the answer says so, so nobody marks it deactivated."""
    discount = fake.add_discount(["LEAKED-0001", "KEEP-0002"])
    fake.search_blind = True
    (result,) = await connector.deactivate_codes(discount, ["LEAKED-0001"])
    assert (result.ok, result.error) == (False, UNCONFIRMED)
    assert "leaked-0001" in fake.discounts[discount].codes
    assert "discountCodeRedeemCodeBulkDelete" not in [c.operation for c in fake.calls]
    fake.search_blind = False  # found by a later attempt: deleted, and only then done
    (result,) = await connector.deactivate_codes(discount, ["LEAKED-0001"])
    assert result.ok and "leaked-0001" not in fake.discounts[discount].codes


async def test_list_codes_follows_the_cursor(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    discount = fake.add_discount(f"L-{i:04d}" for i in range(600))
    listed = [code async for code in connector.list_codes(discount)]
    assert listed == [f"L-{i:04d}" for i in range(600)]
    assert [c.variables.get("after") for c in fake.calls] == [None, "250", "500"]
    assert await connector.count_codes(discount) == 600


async def test_list_codes_of_a_missing_discount(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    with pytest.raises(NotFound):
        [code async for code in connector.list_codes("gid://shopify/DiscountCodeNode/404")]
    assert fake.route.call_count == 1


# --- orders --------------------------------------------------------------------------------------


async def test_fetch_order_sums_allocations_per_code(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    fake.orders["gid://shopify/Order/450789469"] = order_node(
        450789469, codes={"WELCOME-7KQ2": ["10.00", "11.50"], "SHIP-93TD": ["6.00"]}, subtotal="187.50", total="203.75"
    )
    event = await connector.fetch_order("450789469")
    assert (event.kind, event.order_id, event.shop, event.currency) == ("paid", "450789469", SHOP, "USD")
    assert [(c.code, c.amount) for c in event.codes] == [("WELCOME-7KQ2", 2150), ("SHIP-93TD", 600)]
    assert (event.subtotal, event.total, event.customer_id, event.email, event.channel) == (
        18750,
        20375,
        "207119551",
        "jon@example.com",
        "web",
    )
    assert fake.calls[0].variables == {"id": "gid://shopify/Order/450789469"}
    assert event.shipping_address is None  # the order ships nowhere (shippingAddress null)


async def test_fetch_order_carries_the_shipping_address(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    # MailingAddress fields of the pinned schema (the fake checks the query against it)
    address = {"address1": "Chestnut Street 92", "address2": "", "zip": "40202", "countryCodeV2": "US"}
    fake.orders["gid://shopify/Order/7"] = order_node(7, codes={"A": ["1.00"]}, shipping_address=address)
    event = await connector.fetch_order("7")
    assert event.shipping_address == ShippingAddress("Chestnut Street 92", "", "40202", "US")


@pytest.mark.parametrize(
    ("status", "cancelled_at", "kind"),
    [
        ("PENDING", None, "created"),
        ("PARTIALLY_REFUNDED", None, "paid"),
        ("REFUNDED", None, "refunded"),
        ("PAID", "2025-03-15T00:00:00Z", "cancelled"),
    ],
)
async def test_fetch_order_kind(
    connector: ShopifyConnector, fake: ShopifyFake, status: str, cancelled_at: str | None, kind: str
) -> None:
    fake.orders["gid://shopify/Order/1"] = order_node(
        1, codes={"A": ["1000"]}, currency="JPY", status=status, cancelled_at=cancelled_at
    )
    event = await connector.fetch_order("gid://shopify/Order/1")
    assert event.kind == kind and event.codes[0].amount == 1000


async def test_fetch_order_states_its_refunded_sum(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    """A partially refunded order stays "paid"; the money refunded so far goes to the ledger."""
    fake.orders["gid://shopify/Order/2"] = order_node(
        2, codes={"A": ["10.00"]}, total="203.75", refunded="102.38", status="PARTIALLY_REFUNDED"
    )
    event = await connector.fetch_order("2")
    assert (event.kind, event.total, event.refunded_total) == ("paid", 20375, 10238)
    fake.orders["gid://shopify/Order/3"] = order_node(3, codes={"A": ["10.00"]}, total="203.75")
    assert (await connector.fetch_order("3")).refunded_total is None


async def test_recent_orders_are_listed_by_update_and_those_with_codes_fetched(
    connector: ShopifyConnector, fake: ShopifyFake
) -> None:
    """The gap-filling poll: 150 orders updated since the cut (two pages of the cheap listing),
    three of them with a code; older orders and orders without codes are never fetched whole."""
    for n in range(1, 201):
        updated = "2025-03-09T12:00:00Z" if n <= 50 else f"2025-03-11T{n // 60:02d}:{n % 60:02d}:00Z"
        codes = {f"CODE-{n}": ["1.00"]} if n in (10, 60, 120, 160) else {}
        fake.orders[f"gid://shopify/Order/{n}"] = order_node(n, codes=codes, updated_at=updated)
    since = datetime(2025, 3, 10, 23, 59, 59, tzinfo=UTC)
    polled = [event async for event in connector.list_recent_orders(since)]
    assert [(e.order_id, [c.code for c in e.codes]) for e in polled] == [
        ("60", ["CODE-60"]),
        ("120", ["CODE-120"]),
        ("160", ["CODE-160"]),
    ]
    # stamped with the update time: a later change of the same order is a new polled state
    assert polled[0].occurred_at == datetime(2025, 3, 11, 1, 0, tzinfo=UTC)
    operations = [c.operation for c in fake.calls]
    assert operations.count("orders") == 2 and operations.count("order") == 3
    assert {c.variables["query"] for c in fake.calls if c.operation == "orders"} == {"updated_at:>'2025-03-10T23:59:59Z'"}


async def test_fetch_missing_order(connector: ShopifyConnector, fake: ShopifyFake) -> None:
    with pytest.raises(NotFound):
        await connector.fetch_order("404")
    assert fake.route.call_count == 1


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        ("customers/data_request", "customers_data_request.json"),
        ("customers/redact", "customers_redact.json"),
        ("shop/redact", "shop_redact.json"),
        ("app/uninstalled", "app_uninstalled.json"),  # the Shop object: its myshopify_domain
    ],
)
def test_the_signed_body_names_the_shop_not_the_unsigned_header(topic: str, name: str) -> None:
    """The HMAC covers the body only: a header naming another shop must not move the delivery
    (a redaction, an uninstall) onto that shop."""
    body = json.dumps(fixture(name)).encode()
    headers = signed(body, topic) | {"X-Shopify-Shop-Domain": "victim-shop.myshopify.com"}
    assert webhook_connector().identify_webhook(headers, body).shop == SHOP
    assert webhook_connector().parse_webhook(headers, body).shop == SHOP
