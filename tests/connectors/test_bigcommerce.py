"""BigCommerce quirks: the signed_payload_jwt, the code exchange, the promotion mapping, one POST per
code under the 30-second quota, thin webhooks resolved by fetching the order, and hook upkeep."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
import respx
from tenacity import wait_none

from connectors.base import REMOVAL_UNCONFIRMED, CodeSpec, CodeUse, ConnectorConfig, DiscountSpec, ShippingAddress, ShopConnector
from connectors.bigcommerce import ORDER_STATUS_KINDS, BigCommerceConnector
from connectors.errors import AuthError, BadSignature, NotFound, RateLimited, UpstreamError
from tests.connectors.fakes.bigcommerce import FakeBigCommerce, FakeClock, fixture

CLIENT_ID = "U8RphZeDjQc4kLVSzNjePo0CMjq7yOg"
CLIENT_SECRET = "bc-client-secret-0123456789abcdef-0123456789abcdef"
HOOK_SECRET = "bc-hook-secret-0123456789"
CONFIG = ConnectorConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, webhook_secret=HOOK_SECRET)
HEADER = BigCommerceConnector.WEBHOOK_HEADER

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> FakeBigCommerce:
    return FakeBigCommerce()


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=True) as mock:  # every installed route must be used
        yield mock


@pytest.fixture(scope="module")
def client() -> httpx.AsyncClient:
    # Shared: it never opens a connection (respx answers at the transport), and building one is slow.
    return httpx.AsyncClient()


def connect(client: httpx.AsyncClient, fake: FakeBigCommerce, **options: Any) -> BigCommerceConnector:
    return BigCommerceConnector(
        client, CONFIG, fake.credentials(), wait=wait_none(), sleep=fake.clock.sleep, clock=fake.clock, **options
    )


def campaign(**fields: Any) -> DiscountSpec:
    defaults: dict[str, Any] = {"campaign_id": 7, "title": "Welcome", "kind": "percentage", "value": 10}
    return DiscountSpec(**(defaults | fields))


def codes(*values: str) -> list[CodeSpec]:
    return [CodeSpec(code=value.replace("-", ""), display=value) for value in values]


def test_implements_the_shop_protocol(client: httpx.AsyncClient) -> None:
    assert isinstance(BigCommerceConnector(client, CONFIG), ShopConnector)
    assert BigCommerceConnector.CONCURRENCY < 40


# --- signed_payload_jwt (load, uninstall, remove_user) ----------------------------------------


def signed_payload(key: str = CLIENT_SECRET, algorithm: str = "HS256", **changes: Any) -> str:
    now = int(time.time())
    claims = fixture("signed_payload_claims.json") | {"aud": CLIENT_ID, "iat": now, "nbf": now, "exp": now + 86_400} | changes
    return jwt.encode({k: v for k, v in claims.items() if v is not None or k == "channel_id"}, key, algorithm=algorithm)


def test_load_payload_verified(client: httpx.AsyncClient) -> None:
    payload = BigCommerceConnector(client, CONFIG).parse_callback({"signed_payload_jwt": signed_payload()})
    assert (payload.store_hash, payload.user_id, payload.owner_id, payload.owner_email) == (
        "abc123",
        "9876543",
        "7654321",
        "owner@example.com",
    )
    assert (payload.user_email, payload.locale, payload.url, payload.channel_id) == (
        "authorized_user@example.com",
        "en-US",
        "/",
        None,
    )
    assert not payload.is_owner


@pytest.mark.parametrize(
    "token",
    [
        signed_payload(exp=int(time.time()) - 3600, iat=int(time.time()) - 90_000, nbf=int(time.time()) - 90_000),
        signed_payload(aud="someone-elses-client-id"),
        signed_payload(key="another-app-secret-0123456789abcdef-0123456789"),
        signed_payload(iss="not-bc"),
        signed_payload(nbf=int(time.time()) + 3600),
        signed_payload(exp=None),
        signed_payload(sub="customers/1"),
        jwt.encode({"aud": CLIENT_ID, "iss": "bc", "sub": "stores/abc123"}, "", algorithm="none"),
        "not.a.jwt",
    ],
    ids=["expired", "wrong-aud", "bad-signature", "wrong-iss", "not-yet-valid", "no-exp", "no-store", "alg-none", "garbage"],
)
def test_load_payload_rejected(client: httpx.AsyncClient, token: str) -> None:
    with pytest.raises(BadSignature):
        BigCommerceConnector(client, CONFIG).verify_signed_payload(token)


def test_callback_without_payload_rejected(client: httpx.AsyncClient) -> None:
    with pytest.raises(BadSignature):
        BigCommerceConnector(client, CONFIG).parse_callback({})
    with pytest.raises(BadSignature):  # no client secret configured: nothing verifies
        BigCommerceConnector(client, ConnectorConfig(client_id=CLIENT_ID)).verify_signed_payload(signed_payload())


# --- install: the code exchange ---------------------------------------------------------------


async def test_code_exchange(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "token")
    credentials = await connect(client, fake).exchange_code(
        code="qr6h3thvbvag2ffq",
        scope="store_v2_marketing store_v2_orders_read_only",
        context="stores/abc123",
        redirect_uri="https://couponry.example/bigcommerce/auth",
    )
    assert (credentials.shop_domain, credentials.access_token) == ("abc123", fake.access_token)
    assert credentials.scopes == ("store_v2_marketing", "store_v2_orders_read_only")
    assert credentials.extra["owner_email"] == "owner@example.com"
    assert json.loads(fake.routes["token"].calls.last.request.content) == {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": "qr6h3thvbvag2ffq",
        "context": "stores/abc123",
        "scope": "store_v2_marketing store_v2_orders_read_only",
        "grant_type": "authorization_code",
        "redirect_uri": "https://couponry.example/bigcommerce/auth",
    }


async def test_code_exchange_refused(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "token")
    with pytest.raises(AuthError):
        await connect(client, fake).exchange_code(
            code="bad-code", scope="store_v2_marketing store_v2_orders", context="stores/abc123", redirect_uri="https://x/auth"
        )
    assert fake.routes["token"].call_count == 1  # a code works once: never retried


async def test_code_exchange_needs_our_scopes(client: httpx.AsyncClient, fake: FakeBigCommerce) -> None:
    with pytest.raises(AuthError, match="store_v2_orders_read_only"):
        await connect(client, fake).exchange_code(
            code="c", scope="store_v2_marketing", context="stores/abc123", redirect_uri="https://x/auth"
        )


# --- the promotion ----------------------------------------------------------------------------


async def test_percentage_campaign_creates_a_bulk_coupon_promotion(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "promotions", "promotion_create")
    discount_id = await connect(client, fake).ensure_discount(
        campaign(uses_per_code=1, once_per_customer=True, ends_at=datetime(2030, 1, 31, 23, tzinfo=UTC))
    )
    (promotion,) = fake.promotions.values()
    assert discount_id == f"{promotion['id']}:1:1"
    sent = json.loads(fake.routes["promotion_create"].calls.last.request.content)
    assert {k: sent[k] for k in ("name", "redemption_type", "coupon_type", "status", "currency_code", "end_date")} == {
        "name": "Welcome (Couponry #7)",
        "redemption_type": "COUPON",
        "coupon_type": "BULK",
        "status": "ENABLED",
        "currency_code": "*",
        "end_date": "2030-01-31T23:00:00+00:00",
    }
    assert sent["rules"] == [
        {"action": {"cart_value": {"discount": {"percentage_amount": "10"}}}, "apply_once": True, "stop": False}
    ]
    assert sent["can_be_used_with_other_promotions"] is False
    assert "max_uses" not in sent  # a promotion-level max_uses would cap every code together


async def test_fixed_amount_on_products_with_a_minimum_spend(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "promotions", "promotion_create")
    spec = campaign(
        kind="fixed_amount", value=500, currency="EUR", product_ids=("118",), collection_ids=("3",), minimum_subtotal=5000
    )
    await connect(client, fake).ensure_discount(spec)
    sent = json.loads(fake.routes["promotion_create"].calls.last.request.content)
    assert sent["rules"][0]["action"] == {
        "cart_items": {
            "discount": {"fixed_amount": "5.00"},
            "items": {"or": [{"products": [118]}, {"categories": [3]}]},
            "as_total": True,
        }
    }
    assert sent["rules"][0]["condition"] == {"cart": {"minimum_spend": "50.00"}}
    assert sent["currency_code"] == "EUR"


async def test_free_shipping_campaign(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "promotions", "promotion_create")
    await connect(client, fake).ensure_discount(campaign(kind="free_shipping", value=0, uses_per_code=None))
    sent = json.loads(fake.routes["promotion_create"].calls.last.request.content)
    assert sent["rules"][0]["action"] == {"shipping": {"free_shipping": True, "zone_ids": "*"}}


async def test_promotion_of_ours_with_the_same_name_is_reused(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "promotions", "promotion_update")
    existing = fake.add_promotion(name="Welcome (Couponry #7)")  # created by a run that crashed before saving the id
    assert await connect(client, fake).ensure_discount(campaign()) == f"{existing['id']}:1:0"
    assert len(fake.promotions) == 1


async def test_update_puts_the_promotion(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "promotion_update")
    promotion = fake.add_promotion()
    discount_id = await connect(client, fake).ensure_discount(
        campaign(value=15, uses_per_code=3, platform_discount_id=f"{promotion['id']}:1:0")
    )
    assert discount_id == f"{promotion['id']}:3:0"
    assert fake.promotions[promotion["id"]]["rules"][0]["action"]["cart_value"]["discount"] == {"percentage_amount": "15"}


# --- pushing codes ----------------------------------------------------------------------------


async def test_one_post_per_code_with_the_per_code_limits(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "code_create")
    promotion = fake.add_promotion()
    results = await connect(client, fake).push_codes(f"{promotion['id']}:1:1", codes("ABCD-0001", "ABCD-0002"))
    assert [(r.code, r.ok) for r in results] == [("ABCD0001", True), ("ABCD0002", True)]
    assert sorted(fake.all_codes(promotion["id"])) == ["ABCD-0001", "ABCD-0002"]
    bodies = sorted((json.loads(c.request.content) for c in fake.routes["code_create"].calls), key=lambda b: b["code"])
    assert bodies[0] == {"code": "ABCD-0001", "max_uses": 1, "max_uses_per_customer": 1}
    assert fake.routes["code_create"].calls.last.request.headers["X-Auth-Token"] == fake.access_token


@pytest.mark.parametrize("duplicate_status", [409, 422])
async def test_duplicate_in_our_promotion_counts_as_synced(
    client: httpx.AsyncClient, router: respx.MockRouter, duplicate_status: int
) -> None:
    fake = FakeBigCommerce(duplicate_status=duplicate_status)
    fake.install(router, "code_create", "codes")
    promotion = fake.add_promotion()
    existing = fake.add_code(promotion["id"], "ABCD-0001")
    (result,) = await connect(client, fake).push_codes(str(promotion["id"]), codes("ABCD-0001"))
    assert (result.ok, result.platform_id) == (True, str(existing["id"]))
    assert (fake.routes["code_create"].call_count, fake.routes["codes"].call_count) == (1, 1)
    assert fake.routes["codes"].calls.last.request.url.params["code"] == "ABCD-0001"


async def test_duplicate_in_another_promotion_fails(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "code_create", "codes", "code_lookup")
    ours, theirs = fake.add_promotion(), fake.add_promotion()
    fake.add_code(theirs["id"], "ABCD-0001")
    (result,) = await connect(client, fake).push_codes(str(ours["id"]), codes("ABCD-0001"))
    assert (result.ok, result.error) == (False, "code already used by another promotion on the store")


async def test_invalid_code_fails_with_the_platform_message(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "code_create", "codes", "code_lookup")
    promotion = fake.add_promotion()
    good, bad = await connect(client, fake).push_codes(str(promotion["id"]), codes("GOOD-0001", "BAD.0002"))
    assert good.ok and not bad.ok
    assert bad.error is not None and "only letters, numbers" in bad.error


async def test_quota_headers_pace_the_pushes(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    clock = FakeClock()
    fake = FakeBigCommerce(quota=3, window_ms=30_000, clock=clock)
    fake.install(router, "code_create")
    promotion = fake.add_promotion()
    connector = connect(client, fake, concurrency=1)
    results = await connector.push_codes(str(promotion["id"]), codes(*(f"CODE-{n}" for n in range(7))))
    assert all(r.ok for r in results)
    assert fake.routes["code_create"].call_count == 7  # no 429: the connector waited for the window instead
    assert fake.rate_limited == 0
    assert clock.sleeps == [30.0, 30.0]  # after requests 3 and 6 left the quota at 0
    assert connector.quota.requests_quota == 3


async def test_429_waits_for_the_reset_then_succeeds(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "code_create")
    limited = {"X-Rate-Limit-Time-Reset-Ms": "1500", "X-Rate-Limit-Requests-Left": "0", "X-Rate-Limit-Requests-Quota": "150"}
    fake.script("code_create", httpx.Response(429, headers=limited), httpx.Response(429, headers=limited))
    promotion = fake.add_promotion()
    (result,) = await connect(client, fake).push_codes(str(promotion["id"]), codes("ABCD-0001"))
    assert result.ok
    assert fake.routes["code_create"].call_count == 3
    assert fake.clock.sleeps == [1.5, 1.5]


async def test_429_without_headers_is_retried_with_backoff(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "code_create")
    fake.script("code_create", httpx.Response(429), httpx.Response(429))  # the platform under load
    promotion = fake.add_promotion()
    assert (await connect(client, fake).push_codes(str(promotion["id"]), codes("ABCD-0001")))[0].ok
    assert fake.routes["code_create"].call_count == 3
    assert fake.clock.sleeps == []  # the (injected, zero) backoff, not a quota pause


async def test_429_retries_are_bounded(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "code_create")
    limited = {"X-Rate-Limit-Time-Reset-Ms": "2000", "X-Rate-Limit-Requests-Left": "0"}
    fake.script("code_create", *[httpx.Response(429, headers=limited)] * 4)
    promotion = fake.add_promotion()
    with pytest.raises(RateLimited) as raised:
        await connect(client, fake).push_codes(str(promotion["id"]), codes("ABCD-0001"))
    assert raised.value.retry_after == 2.0
    assert fake.routes["code_create"].call_count == 4


async def test_concurrency_is_bounded(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "code_create")
    promotion = fake.add_promotion()
    results = await connect(client, fake, concurrency=5).push_codes(
        str(promotion["id"]), codes(*(f"C-{n:02d}" for n in range(30)))
    )
    assert [r.code for r in results] == [f"C{n:02d}" for n in range(30)]  # in order, whatever the completion order
    assert 1 < fake.max_in_flight <= 5


async def test_server_errors_raise_for_the_whole_call_after_retries(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "code_create")
    fake.script("code_create", *[httpx.Response(503, json={"status": 503, "title": "Service Unavailable"})] * 4)
    promotion = fake.add_promotion()
    with pytest.raises(UpstreamError, match="Service Unavailable"):
        await connect(client, fake, concurrency=1).push_codes(str(promotion["id"]), codes("ABCD-0001"))
    assert fake.routes["code_create"].call_count == 4


async def test_revoked_token_is_an_auth_error(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "code_create")
    promotion = fake.add_promotion()
    connector = BigCommerceConnector(client, CONFIG, FakeBigCommerce(access_token="revoked").credentials(), wait=wait_none())
    with pytest.raises(AuthError):
        await connector.push_codes(str(promotion["id"]), codes("ABCD-0001"))
    assert fake.routes["code_create"].call_count == 1


async def test_deleted_promotion_is_not_found(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "code_create")
    with pytest.raises(NotFound):
        await connect(client, fake).push_codes("999", codes("ABCD-0001"))


# --- deactivating and listing -----------------------------------------------------------------


async def test_deactivate_deletes_by_id_in_batches_of_50(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "codes", "codes_delete")
    promotion = fake.add_promotion()
    for n in range(60):
        fake.add_code(promotion["id"], f"C-{n:02d}")
    wanted = [f"C-{n:02d}" for n in range(60)] + ["GONE-01"]
    results = await connect(client, fake).deactivate_codes(str(promotion["id"]), wanted)
    assert all(r.ok for r in results[:60]) and len(results) == 61
    # a code the lookup does not find is not known to be gone: unconfirmed, never done
    assert (results[60].ok, results[60].error) == (False, REMOVAL_UNCONFIRMED)
    assert fake.all_codes(promotion["id"]) == []
    assert fake.routes["codes_delete"].call_count == 2  # 50 + 10
    assert "id:in=" in str(fake.routes["codes_delete"].calls[0].request.url)


async def test_deactivate_reports_per_item_failures(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "codes", "codes_delete")
    promotion = fake.add_promotion()
    for code in ("A-1", "B-2", "C-3"):
        fake.add_code(promotion["id"], code)
    fake.script("codes_delete", httpx.Response(422, json=fixture("bulk_delete_error.json")))
    results = await connect(client, fake).deactivate_codes(str(promotion["id"]), ["A-1", "B-2", "C-3"])
    assert [r.ok for r in results] == [False, True, False]
    assert results[0].error == "Failed for id=12. Error: constraint reference error."


async def test_list_codes_follows_the_cursor(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "codes")
    promotion = fake.add_promotion()
    for n in range(600):
        fake.add_code(promotion["id"], f"C-{n:03d}")
    listed = [code async for code in connect(client, fake).list_codes(f"{promotion['id']}:1:0")]
    assert listed == [f"C-{n:03d}" for n in range(600)]
    assert fake.routes["codes"].call_count == 3
    assert "after" in fake.routes["codes"].calls.last.request.url.params


# --- webhooks ---------------------------------------------------------------------------------


def standard_headers(body: bytes, *, secret: str = CLIENT_SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    signed = f"msg_2Lh9K.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    return {"webhook-id": "msg_2Lh9K", "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature}"}


def test_secret_header_accepted(client: httpx.AsyncClient) -> None:
    BigCommerceConnector(client, CONFIG).verify_webhook({HEADER.lower(): HOOK_SECRET}, b"{}")


def test_standard_webhooks_signature_accepted(client: httpx.AsyncClient) -> None:
    body = json.dumps(fixture("webhook_order_created.json")).encode()
    BigCommerceConnector(client, CONFIG).verify_webhook(standard_headers(body), body)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {HEADER: "wrong"},
        {HEADER: ""},
        standard_headers(b"{}", secret="another-secret"),
        standard_headers(b"{}", at=time.time() - 3600),  # replayed an hour later
        {HEADER: "wrong"} | standard_headers(b"{}"),  # every proof present must verify
        {"webhook-signature": "v1,abc"},
    ],
    ids=["missing", "wrong-token", "empty-token", "wrong-key", "stale", "one-bad-proof", "incomplete"],
)
def test_webhook_rejected(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    with pytest.raises(BadSignature):
        BigCommerceConnector(client, CONFIG).verify_webhook(headers, b"{}")


async def test_thin_webhook_then_fetch_order_gives_the_codes(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "order", "order_coupons", "order_shipping_addresses")
    connector = connect(client, fake)
    body = json.dumps(fixture("webhook_order_created.json")).encode()
    connector.verify_webhook({HEADER: HOOK_SECRET}, body)
    delivery = connector.parse_webhook({HEADER: HOOK_SECRET}, body)
    assert (delivery.kind, delivery.topic, delivery.shop) == ("order", "store/order/created", "abc123")
    assert delivery.delivery_id == "dd70c0976e06b67aaf671e73f49dcb79230ebf9d"  # the payload hash
    (thin,) = delivery.events
    assert (thin.order_id, thin.kind, thin.needs_fetch, thin.codes) == ("250", "updated", True, ())

    fake.add_order(id=250, status_id=11)
    event = await connector.fetch_order(thin.order_id)
    assert (event.kind, event.order_id, event.needs_fetch) == ("paid", "250", False)
    assert event.codes == (CodeUse(code="S2549JM0Y", amount=500),)
    assert (event.subtotal, event.total, event.currency) == (6268, 6984, "USD")
    assert (event.email, event.customer_id, event.channel) == ("janedoe@example.com", "11", "1")
    assert event.occurred_at == datetime(2019, 3, 11, 15, 17, 25, tzinfo=UTC)
    # the documented shipping address (street_1, street_2, zip, country_iso2), fetched since a coupon was used
    assert event.shipping_address == ShippingAddress("street 1", "street 2", "2000", "AU")
    assert fake.routes["order_shipping_addresses"].call_count == 1


async def test_a_partially_refunded_order_states_its_refunded_sum(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    """Status 14 (Partially Refunded) leaves the order paid; its `refunded_amount` goes to the ledger."""
    fake.install(router, "order", "order_coupons", "order_shipping_addresses")
    refunded = fixture("order_partially_refunded.json")
    order = fake.add_order(**{k: refunded[k] for k in ("status_id", "status", "refunded_amount", "date_modified")})
    event = await connect(client, fake).fetch_order(str(order["id"]))
    assert (event.kind, event.total, event.refunded_total) == ("paid", 6984, 2000)
    assert event.refunds == () and event.reports_refunds
    whole = fake.add_order(status_id=4, refunded_amount="69.8400")
    event = await connect(client, fake).fetch_order(str(whole["id"]))
    assert (event.kind, event.refunded_total) == ("refunded", 6984)
    untouched = await connect(client, fake).fetch_order(str(fake.add_order()["id"]))
    assert untouched.refunded_total is None and not untouched.reports_refunds


async def test_order_without_coupons(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "order", "order_coupons")
    order = fake.add_order(coupons=[])  # /coupons answers 204 No Content
    event = await connect(client, fake).fetch_order(str(order["id"]))
    assert (event.codes, event.shipping_address) == ((), None)  # no coupon: its address is not asked for


@pytest.mark.parametrize(("count", "addresses"), [(0, None), (1, [])])
async def test_order_that_ships_nowhere_has_no_address(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter, count: int, addresses: list[Any] | None
) -> None:
    fake.install(router, "order", "order_coupons", *(("order_shipping_addresses",) if count else ()))
    order = fake.add_order(addresses=addresses, shipping_address_count=count)  # [] answers 204 No Content
    event = await connect(client, fake).fetch_order(str(order["id"]))
    assert event.codes and event.shipping_address is None


def test_status_updated_webhook_carries_the_new_status(client: httpx.AsyncClient) -> None:
    body = json.dumps(fixture("webhook_order_status_updated.json")).encode()
    (event,) = BigCommerceConnector(client, CONFIG).parse_webhook({}, body).events
    assert (event.kind, event.order_id, event.needs_fetch, event.delivery_id) == (
        "paid",
        "173331",
        True,
        "3f9ea420af83450d7ef9f78b08c8af25b2213637",
    )


@pytest.mark.parametrize(
    ("status_id", "kind"),
    [
        (0, "failed"),  # incomplete: abandoned at the payment page
        (1, "created"),
        (2, "paid"),
        (3, "paid"),
        (4, "refunded"),
        (5, "cancelled"),
        (6, "failed"),
        (7, "paid"),
        (8, "paid"),
        (9, "paid"),
        (10, "paid"),
        (11, "paid"),
        (12, "created"),
        (13, "paid"),
        (14, "paid"),
        (99, "updated"),
    ],
)
def test_status_mapping(client: httpx.AsyncClient, status_id: int, kind: str) -> None:
    payload = fixture("webhook_order_status_updated.json")
    payload["data"]["status"]["new_status_id"] = status_id
    (event,) = BigCommerceConnector(client, CONFIG).parse_webhook({}, json.dumps(payload).encode()).events
    assert event.kind == kind == ORDER_STATUS_KINDS.get(status_id, "updated")


def test_other_scopes_are_other(client: httpx.AsyncClient) -> None:
    body = json.dumps(
        {"scope": "store/cart/created", "producer": "stores/abc123", "data": {"type": "cart", "id": "x"}, "hash": "h"}
    )
    assert BigCommerceConnector(client, CONFIG).parse_webhook({}, body.encode()).kind == "other"


async def test_recent_orders_for_the_poll(client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "orders", "order_coupons", "order_shipping_addresses")
    fake.add_order(date_modified="Mon, 11 Mar 2019 15:17:25 +0000")
    recent = fake.add_order(date_modified="Tue, 12 Mar 2019 09:00:00 +0000", status_id=5)
    events = [e async for e in connect(client, fake).list_recent_orders(datetime(2019, 3, 12, tzinfo=UTC))]
    assert [(e.order_id, e.kind, e.codes) for e in events] == [(str(recent["id"]), "cancelled", (CodeUse("S2549JM0Y", 500),))]
    assert events[0].shipping_address == ShippingAddress("street 1", "street 2", "2000", "AU")
    params = fake.routes["orders"].calls[0].request.url.params
    assert (params["min_date_modified"], params["sort"]) == ("2019-03-12T00:00:00+00:00", "date_modified:asc")


async def test_register_webhooks_creates_and_reactivates(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "hooks", "hook_create", "hook_update")
    url = "https://couponry.example/hooks/bigcommerce"
    dead = fake.add_hook(scope="store/order/created", destination=url, is_active=False, headers={HEADER: HOOK_SECRET})
    registrations = await connect(client, fake).register_webhooks(url, HOOK_SECRET)
    assert [(r.topic, r.action) for r in registrations] == [
        ("store/order/created", "reactivated"),
        ("store/order/statusUpdated", "created"),
    ]
    assert fake.hooks[dead["id"]]["is_active"] is True
    created = json.loads(fake.routes["hook_create"].calls.last.request.content)
    assert created == {
        "scope": "store/order/statusUpdated",
        "destination": url,
        "is_active": True,
        "headers": {HEADER: HOOK_SECRET},
    }

    again = await connect(client, fake).register_webhooks(url, HOOK_SECRET)
    assert [r.action for r in again] == ["active", "active"]
    assert (fake.routes["hook_create"].call_count, fake.routes["hook_update"].call_count) == (1, 1)


# Get Store Information (developer.bigcommerce.com/docs/rest-management/store-information): the
# documented example's fields that matter here, its `timezone` object as documented
STORE_INFORMATION = {
    "id": "abc123",
    "domain": "my-awesome.store",
    "name": "BigCommerce",
    "timezone": {"name": "America/Chicago", "raw_offset": -21600, "dst_offset": -18000, "dst_correction": True},
    "currency": "USD",
}


async def test_store_timezone_is_the_documented_timezone_name(
    client: httpx.AsyncClient, fake: FakeBigCommerce, router: respx.MockRouter
) -> None:
    route = router.get(f"{fake.API_URL}/stores/{fake.store_hash}/v2/store").mock(
        side_effect=[httpx.Response(500, json={"status": 500, "title": "Internal"}), httpx.Response(200, json=STORE_INFORMATION)]
    )
    assert await connect(client, fake).store_timezone() == "America/Chicago"
    assert route.call_count == 2  # a 5xx is retried: the call only reads
    assert route.calls[-1].request.headers["X-Auth-Token"] == fake.access_token
    route.mock(return_value=httpx.Response(200, json={**STORE_INFORMATION, "timezone": None}))
    assert await connect(client, fake).store_timezone() is None
