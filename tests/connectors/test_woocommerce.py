"""WooCommerce quirks: batches with per-item errors, case, signatures and the ping, status mapping,
the coupon template carried onto every code, webhook upkeep and the install flow."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
from tenacity import wait_none

from connectors.base import (
    CODE_GONE,
    REMOVAL_UNCONFIRMED,
    CodeSpec,
    CodeStatusControl,
    CodeUse,
    ConnectorConfig,
    DiscountSpec,
    ShippingAddress,
    ShopConnector,
)
from connectors.errors import AuthError, BadSignature, ConnectorError, NotFound, RateLimited, Rejected, UpstreamError
from connectors.woocommerce import ORDER_STATUS_KINDS, WooAuthKeys, WooCommerceConnector
from tests.connectors.fakes.woocommerce import FakeWooCommerce, fixture, sign

SECRET = "whsec-woo-test-0123456789"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> FakeWooCommerce:
    return FakeWooCommerce()


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=True) as mock:  # every installed route must be used
        yield mock


@pytest.fixture(scope="module")
def client() -> httpx.AsyncClient:
    # Shared: it never opens a connection (respx answers at the transport), and building one is slow.
    return httpx.AsyncClient()


def connect(client: httpx.AsyncClient, fake: FakeWooCommerce, **extra: str) -> WooCommerceConnector:
    return WooCommerceConnector(client, ConnectorConfig(webhook_secret=SECRET), fake.credentials(**extra), wait=wait_none())


def campaign(**fields: Any) -> DiscountSpec:
    defaults: dict[str, Any] = {"campaign_id": 7, "title": "Welcome", "kind": "percentage", "value": 10}
    return DiscountSpec(**(defaults | fields))


def codes(*values: str) -> list[CodeSpec]:
    return [CodeSpec(code=value.replace("-", ""), display=value) for value in values]


def sent_batches(fake: FakeWooCommerce) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in fake.routes["batch"].calls]


def test_implements_the_shop_protocol(client: httpx.AsyncClient) -> None:
    assert isinstance(WooCommerceConnector(client, ConnectorConfig()), ShopConnector)
    assert WooCommerceConnector.BATCH_SIZE == 100
    assert "order.updated" in WooCommerceConnector.WEBHOOK_TOPICS


# --- signatures and the creation ping ---------------------------------------------------------


def test_signature_accepted(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    headers, body = fake.delivery(fixture("order.json"), SECRET)
    connect(client, fake).verify_webhook(headers, body)


def test_signature_checked_case_insensitively(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    headers, body = fake.delivery(fixture("order.json"), SECRET)
    connect(client, fake).verify_webhook({k.lower(): v for k, v in headers.items()}, body)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),  # body changed after signing
        lambda h, b: (h | {"X-WC-Webhook-Signature": sign(b, "another-secret")}, b),  # wrong secret
        lambda h, b: ({k: v for k, v in h.items() if k != "X-WC-Webhook-Signature"}, b),  # missing
        lambda h, b: (h | {"X-WC-Webhook-Signature": "not base64 at all"}, b),
    ],
    ids=["tampered-body", "wrong-secret", "missing", "garbage"],
)
def test_signature_rejected(client: httpx.AsyncClient, fake: FakeWooCommerce, tamper: Any) -> None:
    headers, body = tamper(*fake.delivery(fixture("order.json"), SECRET))
    with pytest.raises(BadSignature):
        connect(client, fake).verify_webhook(headers, body)


def test_signature_rejected_without_a_configured_secret(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    headers, body = fake.delivery(fixture("order.json"), SECRET)
    connector = WooCommerceConnector(client, ConnectorConfig(), fake.credentials())
    with pytest.raises(BadSignature):
        connector.verify_webhook(headers, body)


def test_per_store_secret_wins_over_app_secret(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    headers, body = fake.delivery(fixture("order.json"), "store-secret")
    connect(client, fake, webhook_secret="store-secret").verify_webhook(headers, body)


def test_creation_ping_is_accepted_unsigned_and_answered_200(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    connector = connect(client, fake)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    connector.verify_webhook(headers, b"webhook_id=142")
    delivery = connector.parse_webhook(headers, b"webhook_id=142")
    assert (delivery.kind, delivery.response_status, delivery.events) == ("ping", 200, ())
    assert delivery.shop == fake.store_url


def test_unsigned_body_that_only_starts_like_a_ping_is_rejected(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    with pytest.raises(BadSignature):
        connect(client, fake).verify_webhook({}, b'webhook_id=142&{"id":1}')


# --- order payloads ---------------------------------------------------------------------------


def test_order_webhook_becomes_an_order_event(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    headers, body = fake.delivery(fixture("order.json"), SECRET, delivery_id="a1b2")
    delivery = connect(client, fake).parse_webhook(headers, body)
    assert (delivery.kind, delivery.topic, delivery.shop) == ("order", "order.updated", fake.store_url)
    assert delivery.delivery_id == "order:727:2017-03-22T19:28:08:processing"
    (event,) = delivery.events
    assert event.kind == "paid"
    assert event.order_id == "727"
    assert event.codes == (CodeUse(code="abcd-efgh", amount=200),)
    assert (event.subtotal, event.total, event.currency) == (1800, 2735, "USD")
    assert event.net_subtotal == 1600  # the lines' totals after the coupon's 2.00, before tax and shipping
    assert (event.email, event.customer_id, event.channel) == ("john.doe@example.com", None, "checkout")
    assert event.occurred_at == datetime(2017, 3, 22, 19, 28, 8, tzinfo=UTC)
    assert event.delivery_id == "a1b2"
    assert not event.needs_fetch
    # the documented `shipping` object: address_1, address_2, postcode, country (names and city left out)
    assert event.shipping_address == ShippingAddress("969 Market", "", "94103", "US")


def test_an_order_lists_its_refunds(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    """A refund arrives as order.updated: the order's `refunds[]` ({id, reason, total}, total
    negative); a partial one leaves the status as it was."""
    headers, body = fake.delivery(fixture("order_partially_refunded.json"), SECRET)
    delivery = connect(client, fake).parse_webhook(headers, body)
    (event,) = delivery.events
    assert (event.kind, event.total) == ("paid", 2735)
    assert [(r.refund_id, r.amount, r.items) for r in event.refunds] == [("731", 1000, 0)]
    assert delivery.delivery_id == "order:727:2017-03-23T10:02:44:processing"  # a new state of the order
    headers, body = fake.delivery(fixture("order.json"), SECRET)
    assert connect(client, fake).parse_webhook(headers, body).events[0].refunds == ()


def test_a_virtual_order_ships_nowhere(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    blank = dict.fromkeys(fixture("order.json")["shipping"], "")
    headers, body = fake.delivery(fixture("order.json") | {"shipping": blank}, SECRET)
    (event,) = connect(client, fake).parse_webhook(headers, body).events
    assert event.shipping_address is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("pending", "created"),
        ("on-hold", "created"),
        ("processing", "paid"),
        ("completed", "paid"),
        ("cancelled", "cancelled"),
        ("refunded", "refunded"),
        ("failed", "failed"),
        ("trash", "cancelled"),
        ("some-custom-status", "updated"),
    ],
)
def test_status_mapping(client: httpx.AsyncClient, fake: FakeWooCommerce, status: str, kind: str) -> None:
    headers, body = fake.delivery(fixture("order.json") | {"status": status}, SECRET)
    assert connect(client, fake).parse_webhook(headers, body).events[0].kind == kind
    assert ORDER_STATUS_KINDS.get(status, "updated") == kind


def test_same_order_state_dedupes_and_a_new_state_does_not(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    connector = connect(client, fake)
    order = fixture("order.json")
    first = connector.parse_webhook(*fake.delivery(order, SECRET, topic="order.created", delivery_id="x1"))
    again = connector.parse_webhook(*fake.delivery(order, SECRET, delivery_id="x2"))  # fired twice (#28329)
    later = connector.parse_webhook(
        *fake.delivery(order | {"status": "cancelled", "date_modified_gmt": "2017-03-23T10:00:00"}, SECRET, delivery_id="x1")
    )
    assert first.delivery_id == again.delivery_id != later.delivery_id


def test_deleted_order_is_a_cancellation(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    delivery = connect(client, fake).parse_webhook(*fake.delivery({"id": 727}, SECRET, topic="order.deleted", delivery_id="d9"))
    (event,) = delivery.events
    assert (event.kind, event.order_id, event.codes, event.needs_fetch) == ("cancelled", "727", (), False)
    assert delivery.delivery_id == "order:727:deleted:d9"


def test_other_topics_are_other(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    delivery = connect(client, fake).parse_webhook(*fake.delivery(fixture("coupon.json"), SECRET, topic="coupon.updated"))
    assert (delivery.kind, delivery.events) == ("other", ())


def test_malformed_body_is_a_connector_error(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    with pytest.raises(ConnectorError):
        connect(client, fake).parse_webhook({"X-WC-Webhook-Topic": "order.updated"}, b"{not json")


# --- pushing codes ----------------------------------------------------------------------------


async def test_batch_with_per_item_errors_inside_a_200(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch", "coupons")
    connector = connect(client, fake)
    discount_id = await connector.ensure_discount(campaign())
    ours = fake.add_coupon("KEEP-0002", campaign_id=7)  # pushed before, by a run that crashed
    fake.fail_codes["bad!-0003"] = ("woocommerce_rest_invalid_coupon", "Coupon code is invalid.")

    results = await connector.push_codes(discount_id, codes("GOOD-0001", "KEEP-0002", "BAD!-0003", "GOOD-0004"))

    assert [(r.code, r.ok) for r in results] == [("GOOD0001", True), ("KEEP0002", True), ("BAD!0003", False), ("GOOD0004", True)]
    assert results[1].platform_id == str(ours["id"])
    assert results[2].error == "Coupon code is invalid. [woocommerce_rest_invalid_coupon]"
    assert results[0].platform_id == str(fake.coupon_by_code("good-0001")["id"])  # type: ignore[index]
    assert fake.routes["batch"].call_count == 1
    assert fake.routes["coupons"].call_count == 1  # only the duplicate is looked up
    assert fake.routes["coupons"].calls.last.request.url.params["code"] == "keep-0002"


async def test_a_code_pushed_again_with_a_new_end_updates_its_coupon(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    """An extended expiry (plugin.codes.percode) pushes the code again: WooCommerce holds a per-code
    end, so the coupon we already hold gets the new end (`date_expires`) by a batch update."""
    fake.install(router, "batch", "coupons")
    connector = connect(client, fake)
    discount_id = await connector.ensure_discount(campaign())
    ours = fake.add_coupon("KEEP-0002", campaign_id=7)
    later = datetime(2030, 1, 31, 23, 59, 59, tzinfo=UTC)
    extended = [CodeSpec(code="KEEP0002", display="KEEP-0002", expires_at=later)]

    (result,) = await connector.push_codes(discount_id, extended)
    (again,) = await connector.push_codes(discount_id, extended)

    assert result.ok and again.ok and result.platform_id == str(ours["id"])
    assert fake.coupons[ours["id"]]["date_expires_gmt"] == "2030-01-31T23:59:59"
    updates = [b["update"] for b in sent_batches(fake) if "update" in b]
    assert updates == [[{"id": ours["id"], "date_expires": "2030-01-31T23:59:59Z"}]]  # the same end again: no update


async def test_existing_coupon_of_someone_else_is_not_taken_as_synced(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch", "coupons")
    fake.add_coupon("SUMMER-2020")  # the merchant's own coupon, no campaign tag
    connector = connect(client, fake)
    (result,) = await connector.push_codes(await connector.ensure_discount(campaign()), codes("SUMMER-2020"))
    assert not result.ok
    assert result.error == "code already used by another coupon on the store"


async def test_250_codes_go_in_batches_of_at_most_100(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch")
    connector = connect(client, fake)
    specs = codes(*(f"CODE-{n:04d}" for n in range(250)))
    results = await connector.push_codes(await connector.ensure_discount(campaign()), specs)
    assert [len(batch["create"]) for batch in sent_batches(fake)] == [100, 100, 50]
    assert [r.code for r in results] == [s.code for s in specs]
    assert all(r.ok for r in results)
    assert len(fake.coupons) == 250


async def test_codes_are_sent_in_the_case_woocommerce_stores(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch")
    connector = connect(client, fake)
    await connector.push_codes(await connector.ensure_discount(campaign()), codes("AbCD-2345"))
    (coupon,) = sent_batches(fake)[0]["create"]
    assert coupon["code"] == "abcd-2345"  # the display form, lower-cased like wc_strtolower
    assert coupon["meta_data"] == [{"key": "couponry_campaign_id", "value": "7"}]


async def test_case_is_preserved_for_stores_that_removed_the_lowercase_filter(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    fake = FakeWooCommerce(lowercase=False)
    fake.install(router, "batch")
    connector = connect(client, fake, code_case="preserve")
    await connector.push_codes(await connector.ensure_discount(campaign()), codes("AbCD-2345"))
    assert sent_batches(fake)[0]["create"][0]["code"] == "AbCD-2345"


async def test_server_errors_are_retried_then_succeed(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch")
    fake.script("batch", httpx.Response(503), httpx.Response(502, text="Bad Gateway"))
    connector = connect(client, fake)
    results = await connector.push_codes(await connector.ensure_discount(campaign()), codes("ABCD-0001"))
    assert results[0].ok
    assert fake.routes["batch"].call_count == 3


async def test_retries_are_bounded_then_the_error_is_raised(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch")
    fake.script("batch", *[httpx.Response(500, json={"code": "internal", "message": "Boom"})] * 4)
    connector = connect(client, fake)
    with pytest.raises(UpstreamError, match="Boom"):
        await connector.push_codes(await connector.ensure_discount(campaign()), codes("ABCD-0001"))
    assert fake.routes["batch"].call_count == 4


async def test_timeouts_are_retried(client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "batch")
    connector = connect(client, fake)
    fake.script("batch", httpx.ReadTimeout("slow"))
    assert (await connector.push_codes(await connector.ensure_discount(campaign()), codes("ABCD-0001")))[0].ok
    assert fake.routes["batch"].call_count == 2


async def test_rate_limit_is_retried_with_retry_after(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch")
    fake.script("batch", httpx.Response(429, headers={"Retry-After": "7"}))
    connector = connect(client, fake)
    assert (await connector.push_codes(await connector.ensure_discount(campaign()), codes("ABCD-0001")))[0].ok
    assert fake.routes["batch"].call_count == 2

    fake.script("batch", *[httpx.Response(429, headers={"Retry-After": "7"})] * 4)
    with pytest.raises(RateLimited) as raised:
        await connector.push_codes(await connector.ensure_discount(campaign()), codes("ABCD-0002"))
    assert raised.value.retry_after == 7.0
    assert fake.routes["batch"].call_count == 6


async def test_refused_keys_are_an_auth_error_without_retry(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    fake = FakeWooCommerce()
    fake.install(router, "batch")
    connector = WooCommerceConnector(
        client, ConnectorConfig(), FakeWooCommerce(consumer_secret="cs_wrong").credentials(), wait=wait_none()
    )
    with pytest.raises(AuthError) as raised:
        await connector.push_codes(await connector.ensure_discount(campaign()), codes("ABCD-0001"))
    assert raised.value.status == 401
    assert fake.routes["batch"].call_count == 1


async def test_a_batch_over_the_store_limit_is_rejected(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    fake = FakeWooCommerce(batch_limit=50)  # a store that lowered woocommerce_rest_batch_items_limit
    fake.install(router, "batch")
    connector = connect(client, fake)
    with pytest.raises(Rejected) as raised:
        await connector.push_codes(await connector.ensure_discount(campaign()), codes(*(f"C-{n}" for n in range(60))))
    assert raised.value.status == 413
    assert fake.routes["batch"].call_count == 1


async def test_query_string_auth_for_servers_that_drop_the_header(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch")
    connector = connect(client, fake, auth="query")
    assert (await connector.push_codes(await connector.ensure_discount(campaign()), codes("ABCD-0001")))[0].ok
    request = fake.routes["batch"].calls.last.request
    assert request.url.params["consumer_key"] == fake.consumer_key
    assert "Authorization" not in request.headers


async def test_basic_auth_by_default(client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "batch")
    connector = connect(client, fake)
    await connector.push_codes(await connector.ensure_discount(campaign()), codes("ABCD-0001"))
    request = fake.routes["batch"].calls.last.request
    user, _, password = base64.b64decode(request.headers["Authorization"].removeprefix("Basic ")).decode().partition(":")
    assert (user, password) == (fake.consumer_key, fake.consumer_secret)
    assert "consumer_secret" not in request.url.params


# --- the campaign template --------------------------------------------------------------------


async def test_campaign_rules_are_carried_onto_each_coupon(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch")
    connector = connect(client, fake)
    ends = datetime(2030, 1, 31, 23, 0, tzinfo=UTC)
    discount_id = await connector.ensure_discount(
        campaign(
            kind="fixed_amount",
            value=500,
            currency="USD",
            uses_per_code=1,
            once_per_customer=True,
            minimum_subtotal=5000,
            product_ids=("93",),
            collection_ids=("12",),
            ends_at=ends,
        )
    )
    early = CodeSpec(code="EARLY01", display="EARLY-01", expires_at=datetime(2029, 6, 1, 12, tzinfo=UTC))
    await connector.push_codes(discount_id, [early, *codes("LATE-01")])
    first, second = sent_batches(fake)[0]["create"]
    assert first | {"code": None, "date_expires": None} == second | {"code": None, "date_expires": None}
    assert {k: first[k] for k in ("discount_type", "amount", "usage_limit", "usage_limit_per_user", "minimum_amount")} == {
        "discount_type": "fixed_cart",
        "amount": "5.00",
        "usage_limit": 1,
        "usage_limit_per_user": 1,
        "minimum_amount": "50.00",
    }
    assert (first["product_ids"], first["product_categories"], first["individual_use"]) == ([93], [12], True)
    assert (first["date_expires"], second["date_expires"]) == ("2029-06-01T12:00:00Z", "2030-01-31T23:00:00Z")


async def test_percentage_and_free_shipping_templates(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch")
    connector = connect(client, fake)
    await connector.push_codes(
        await connector.ensure_discount(campaign(uses_per_code=None, combines_with_codes=True)), codes("P-1")
    )
    await connector.push_codes(await connector.ensure_discount(campaign(kind="free_shipping", value=0)), codes("F-1"))
    percent, free = (batch["create"][0] for batch in sent_batches(fake))
    assert (percent["discount_type"], percent["amount"], percent["individual_use"]) == ("percent", "10", False)
    assert "usage_limit" not in percent
    assert (free["discount_type"], free["amount"], free["free_shipping"]) == ("fixed_cart", "0", True)


async def test_ensure_discount_makes_no_call_and_is_deterministic(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    connector = connect(client, fake)
    assert await connector.ensure_discount(campaign()) == await connector.ensure_discount(campaign())
    assert (await connector.ensure_discount(campaign())).startswith("woo1.")


async def test_a_foreign_discount_id_is_rejected(client: httpx.AsyncClient, fake: FakeWooCommerce) -> None:
    with pytest.raises(Rejected):
        await connect(client, fake).push_codes("gid://shopify/DiscountCodeNode/1", codes("A-1"))
    with pytest.raises(Rejected):
        await connect(client, fake).push_codes("woo1.!!!", codes("A-1"))


# --- deactivating and listing -----------------------------------------------------------------


async def test_deactivate_deletes_only_our_coupons(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch", "coupons")
    connector = connect(client, fake)
    ours = fake.add_coupon("OURS-0001", campaign_id=7)
    fake.add_coupon("THEIRS-01", campaign_id=99)
    results = await connector.deactivate_codes(
        await connector.ensure_discount(campaign()), ["OURS-0001", "THEIRS-01", "GONE-0001"]
    )
    # a code the lookup does not find is not known to be gone: unconfirmed, never done
    assert [(r.code, r.ok) for r in results] == [("OURS-0001", True), ("THEIRS-01", False), ("GONE-0001", False)]
    assert results[2].error == REMOVAL_UNCONFIRMED
    assert sent_batches(fake) == [{"delete": [ours["id"]]}]
    assert fake.coupon_by_code("ours-0001") is None and fake.coupon_by_code("theirs-01") is not None
    assert fake.routes["coupons"].call_count == 3


async def test_list_codes_walks_every_page(client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "coupons")
    for n in range(230):
        fake.add_coupon(f"C-{n:03d}", campaign_id=7 if n % 2 == 0 else 8)
    connector = connect(client, fake)
    listed = [code async for code in connector.list_codes(await connector.ensure_discount(campaign()))]
    assert listed == [f"c-{n:03d}" for n in range(0, 230, 2)]
    assert fake.routes["coupons"].call_count == 3  # X-WP-TotalPages: 3 at per_page=100
    assert [call.request.url.params["page"] for call in fake.routes["coupons"].calls] == ["1", "2", "3"]


# --- orders -----------------------------------------------------------------------------------


async def test_fetch_order(client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "order")
    order = fake.add_order(status="completed")
    event = await connect(client, fake).fetch_order(str(order["id"]))
    assert (event.kind, event.order_id, event.codes) == ("paid", str(order["id"]), (CodeUse("abcd-efgh", 200),))
    with pytest.raises(NotFound):
        await connect(client, fake).fetch_order("1")


async def test_recent_orders_for_the_poll(client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "orders")
    base = datetime(2025, 5, 1, 12, 0)
    for n in range(150):
        fake.add_order(date_modified_gmt=(base + timedelta(minutes=n)).isoformat(timespec="seconds"))
    since = datetime(2025, 5, 1, 16, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # 14:00 UTC
    events = [event async for event in connect(client, fake).list_recent_orders(since)]
    assert len(events) == 150 - 121  # modified strictly after 14:00 UTC
    first = fake.routes["orders"].calls[0].request.url.params
    assert (first["modified_after"], first["dates_are_gmt"], first["per_page"]) == ("2025-05-01T14:00:00", "true", "100")


# --- webhook upkeep ---------------------------------------------------------------------------


async def test_register_webhooks_creates_reenables_and_respects_pauses(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "webhooks", "webhook_create", "webhook_update")
    url = "https://couponry.example/hooks/woocommerce/5"
    disabled = fake.add_webhook(topic="order.updated", delivery_url=url, status="disabled")  # after 5 failed deliveries
    paused = fake.add_webhook(topic="order.deleted", delivery_url=url, status="paused")
    fake.add_webhook(topic="order.created", delivery_url="https://elsewhere.example/", status="active")
    registrations = await connect(client, fake).register_webhooks(url, SECRET)
    assert [(r.topic, r.action) for r in registrations] == [
        ("order.created", "created"),
        ("order.updated", "reactivated"),
        ("order.deleted", "paused"),
        ("order.restored", "created"),
    ]
    assert json.loads(fake.routes["webhook_update"].calls.last.request.content) == {"status": "active", "secret": SECRET}
    assert fake.webhooks[disabled["id"]]["status"] == "active" and fake.webhooks[paused["id"]]["status"] == "paused"
    created = [json.loads(call.request.content) for call in fake.routes["webhook_create"].calls]
    assert [(c["topic"], c["delivery_url"], c["secret"], c["status"]) for c in created] == [
        ("order.created", url, SECRET, "active"),
        ("order.restored", url, SECRET, "active"),
    ]

    again = await connect(client, fake).register_webhooks(url, SECRET)
    assert [r.action for r in again] == ["active", "active", "paused", "active"]
    assert fake.routes["webhook_create"].call_count == 2 and fake.routes["webhook_update"].call_count == 1


# --- install ----------------------------------------------------------------------------------


def test_authorize_url(client: httpx.AsyncClient) -> None:
    url = WooCommerceConnector(client, ConnectorConfig()).authorize_url(
        "shop.example/",
        app_name="Couponry",
        user_id="signed-tenant-ref",
        return_url="https://couponry.example/woocommerce/done",
        callback_url="https://couponry.example/woocommerce/keys",
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "shop.example", "/wc-auth/v1/authorize")
    assert {k: v[0] for k, v in parse_qs(parts.query).items()} == {
        "app_name": "Couponry",
        "scope": "read_write",
        "user_id": "signed-tenant-ref",
        "return_url": "https://couponry.example/woocommerce/done",
        "callback_url": "https://couponry.example/woocommerce/keys",
    }
    with pytest.raises(ValueError, match="HTTPS"):
        WooCommerceConnector(client, ConnectorConfig()).authorize_url(
            "shop.example", app_name="C", user_id="u", return_url="https://x/", callback_url="http://x/keys"
        )


def test_auth_callback_gives_credentials() -> None:
    body = json.dumps(fixture("auth_callback.json")).encode()
    keys = WooCommerceConnector.parse_auth_callback(body)
    assert keys == WooAuthKeys(
        user_id="tenant-123",
        consumer_key="ck_0123456789abcdef0123456789abcdef01234567",
        consumer_secret="cs_0123456789abcdef0123456789abcdef01234567",
        key_permissions="read_write",
        key_id="1",
    )
    credentials = WooCommerceConnector.credentials("https://shop.example", keys, webhook_secret="s")
    assert credentials.access_token == keys.consumer_secret
    assert credentials.extra == {"consumer_key": keys.consumer_key, "auth": "basic", "webhook_secret": "s"}
    with pytest.raises(ConnectorError):
        WooCommerceConnector.parse_auth_callback(b"consumer_key=ck_x")  # form data is not what Woo sends


async def test_verify_credentials(client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter) -> None:
    fake.install(router, "coupons")
    await connect(client, fake).verify_credentials()
    bad = WooCommerceConnector(
        client, ConnectorConfig(), FakeWooCommerce(consumer_key="ck_wrong").credentials(), wait=wait_none()
    )
    with pytest.raises(AuthError):
        await bad.verify_credentials()
    assert fake.routes["coupons"].call_count == 2


# --- following the campaign coupon by coupon (CodeStatusControl) ------------------------------


def stored(coupon: dict[str, Any], value: str) -> CodeSpec:
    return CodeSpec(code=value.replace("-", ""), display=value, platform_id=str(coupon["id"]))


def test_implements_per_code_status_control(client: httpx.AsyncClient) -> None:
    assert isinstance(WooCommerceConnector(client, ConnectorConfig()), CodeStatusControl)


async def test_update_codes_goes_by_the_stored_ids_and_looks_up_only_a_missing_one(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch", "coupons")
    connector = connect(client, fake)
    kept = fake.add_coupon("KEPT-0001", campaign_id=7, minimum_amount="50.00", usage_limit_per_user=1)
    legacy = fake.add_coupon("LEGACY-01", campaign_id=7)
    deleted = fake.add_coupon("GONE-0001", campaign_id=7)
    del fake.coupons[deleted["id"]]
    specs = [stored(kept, "KEPT-0001"), *codes("LEGACY-01"), stored(deleted, "GONE-0001")]

    results = await connector.update_codes(await connector.ensure_discount(campaign(value=15)), specs, "paused")

    assert [(r.code, r.ok, r.error) for r in results] == [
        ("KEPT0001", True, None),
        ("LEGACY01", True, None),
        ("GONE0001", False, CODE_GONE),  # the store's per-item woocommerce_rest_shop_coupon_invalid_id
    ]
    assert results[1].platform_id == str(legacy["id"])
    (batch,) = sent_batches(fake)
    assert [item["id"] for item in batch["update"]] == [kept["id"], legacy["id"], deleted["id"]]
    assert {item["status"] for item in batch["update"]} == {"draft"}
    assert fake.routes["coupons"].call_count == 1  # the code without a stored id only
    assert (kept["status"], kept["amount"], kept["minimum_amount"], kept["usage_limit_per_user"]) == ("draft", "15", "0", 0)


async def test_a_draft_is_pushed_again_by_its_id_never_created_twice(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    """WooCommerce's duplicate check sees published coupons only: a create would make a second
    coupon beside a draft. A code with a stored id is updated (published) instead."""
    fake.install(router, "batch")
    connector = connect(client, fake)
    draft = fake.add_coupon("DRAFT-001", campaign_id=7, status="draft")
    (result,) = await connector.push_codes(await connector.ensure_discount(campaign()), [stored(draft, "DRAFT-001")])
    assert result.ok and result.platform_id == str(draft["id"])
    assert [c["id"] for c in fake.coupons_with_code("draft-001")] == [draft["id"]] and draft["status"] == "publish"
    assert ["create" in batch for batch in sent_batches(fake)] == [False]


async def test_delete_codes_by_id_counts_an_id_the_store_no_longer_knows_as_gone(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "batch")
    connector = connect(client, fake)
    draft = fake.add_coupon("DRAFT-001", campaign_id=7, status="draft")
    gone = fake.add_coupon("GONE-0001", campaign_id=7)
    del fake.coupons[gone["id"]]
    results = await connector.delete_codes(
        await connector.ensure_discount(campaign()), [stored(draft, "DRAFT-001"), stored(gone, "GONE-0001")]
    )
    assert [(r.ok, r.error) for r in results] == [(True, None), (True, None)]
    assert fake.coupons == {} and sent_batches(fake) == [{"delete": [draft["id"], gone["id"]]}]


async def test_listing_tells_live_from_paused_and_leaves_trash_out(
    client: httpx.AsyncClient, fake: FakeWooCommerce, router: respx.MockRouter
) -> None:
    fake.install(router, "coupons")
    for code, status in (("LIVE-1", "publish"), ("DRAFT-1", "draft"), ("PEND-1", "pending"), ("TRASH-1", "trash")):
        fake.add_coupon(code, campaign_id=7, status=status)
    connector = connect(client, fake)
    discount_id = await connector.ensure_discount(campaign())
    states = [pair async for pair in connector.list_code_states(discount_id)]
    assert states == [("live-1", "active"), ("draft-1", "paused"), ("pend-1", "paused")]
    assert [code async for code in connector.list_codes(discount_id)] == ["live-1"]  # only a published coupon takes orders
