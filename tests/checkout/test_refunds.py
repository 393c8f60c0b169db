"""Refunds exactly once, whatever the order of their deliveries (issue 13, "Exactly once, under faults").

Only a cancellation or a whole-order refund (the platform says so, every unit refunded, or the
money refunded reaching the order's total) rolls a redemption back; a partial refund reduces its
attributed revenue; a refund that comes before its order waits for it (COUPONRY_EARLY_REFUND_DAYS).
Shopify deliveries go through the real webhook route, signed, with the documented payloads of
tests/connectors/fixtures/shopify (refunds_create_partial.json and refunds_create_rest.json are the
two halves of orders_create.json's refund)."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import itertools
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, update
from sqlmodel import col, select

from connectors.base import CodeUse, ConnectorConfig, Delivery, OrderEvent, Refund
from connectors.bigcommerce import BigCommerceConnector
from connectors.woocommerce import WooCommerceConnector
from plugin.checkout.refunds import refunded_share
from plugin.distribution import partners
from plugin.orders import ingest, webhooks
from plugin.orders.orders import Outcome, Processor, apply_order_event, polled_delivery, polled_payload
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.models import AuditEvent, Code, OrderRefund, Redemption, Shop, WebhookEvent, utcnow
from tests.connectors.fakes import shopify as shopify_fakes
from tests.connectors.fakes.bigcommerce import fixture as bc_fixture
from tests.connectors.fakes.woocommerce import fixture as woo_fixture
from tests.ingest import campaign_codes, make_campaign, running_app

pytestmark = pytest.mark.anyio

SECRET = "hush"
ORDER = shopify_fakes.fixture("orders_create.json")
PARTIAL = shopify_fakes.fixture("refunds_create_partial.json")  # one mug of two: 102.38 of 203.75
REST = shopify_fakes.fixture("refunds_create_rest.json")  # the other mug: 101.37, the order is whole
SUBTOTAL, TOTAL = 18750, 20375


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def shopify(engine: Engine, settings: Settings) -> Iterator[tuple[int, Settings]]:
    """A Shopify shop, and settings whose Shopify app secret signs its webhooks."""
    with session_scope(engine) as session:
        shop = Shop(platform="shopify", domain=shopify_fakes.SHOP, name="Refunds")
        session.add(shop)
        session.flush()
        assert shop.id is not None
        shop_id = shop.id
    yield (
        shop_id,
        replace(
            settings,
            sandbox_enabled=False,
            run_worker_in_process=False,
            public_url="http://app.test",
            connector_config={"shopify": {"client_id": "api-key", "client_secret": SECRET}},
        ),
    )


def order(order_id: int, code: str, **changes: Any) -> dict[str, Any]:
    """orders_create.json as order `order_id`, with our code."""
    payload = copy.deepcopy(ORDER) | {"id": order_id, **changes}
    payload["discount_codes"] = [{"code": code, "amount": "21.50", "type": "percentage"}]
    return payload


def refund(base: dict[str, Any], order_id: int, **changes: Any) -> dict[str, Any]:
    return copy.deepcopy(base) | {"order_id": order_id, **changes}


def signed(topic: str, body: bytes, webhook_id: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": shopify_fakes.SHOP,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Hmac-Sha256": base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode(),
    }


async def post(client: httpx.AsyncClient, topic: str, payload: dict[str, Any], webhook_id: str) -> None:
    body = json.dumps(payload).encode()
    answer = await client.post("/webhooks/shopify", content=body, headers=signed(topic, body, webhook_id))
    assert answer.status_code == 200, answer.text


def the_redemption(engine: Engine, order_id: int | str) -> Redemption:
    with session_scope(engine) as session:
        row = session.exec(select(Redemption).where(col(Redemption.order_id) == str(order_id))).one()
        session.expunge(row)
        return row


def delivery(engine: Engine, webhook_id: str) -> WebhookEvent:
    with session_scope(engine) as session:
        row = session.exec(select(WebhookEvent).where(col(WebhookEvent.delivery_id) == webhook_id)).one()
        session.expunge(row)
        return row


def uses(engine: Engine, code_id: int | None) -> int:
    with session_scope(engine) as session:
        return session.get_one(Code, code_id).uses


# --- partial and whole refunds --------------------------------------------------------------------


async def test_one_item_of_three_refunded_keeps_the_code_and_reduces_the_revenue(
    engine: Engine, shopify: tuple[int, Settings]
) -> None:
    shop_id, settings = shopify
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    three = order(501, code.code)
    three["line_items"][0]["quantity"] = 3
    async with running_app(settings, engine) as (_, client):
        await post(client, "orders/create", three, "create")
        await post(client, "refunds/create", refund(PARTIAL, 501), "refund")
    redemption = the_redemption(engine, 501)
    assert redemption.status == "active" and uses(engine, code.id) == 1  # the code stays used
    assert (redemption.order_total, redemption.order_items) == (TOTAL, 3)
    assert redemption.refunded == refunded_share(SUBTOTAL, 10238, TOTAL) == SUBTOTAL * 10238 // TOTAL
    seen = delivery(engine, "refund")
    assert seen.status == "processed"
    assert (seen.outcome["refunds"], seen.outcome["refund_adjusted"], seen.outcome["rolled_back"]) == (1, 1, 0)
    with session_scope(engine) as session:
        result = partners.results(session, shop_id=shop_id, campaign_id=campaign_id, partner_id=None)
        assert (result.redemptions, result.revenue) == (1, SUBTOTAL - redemption.refunded)
        (audit,) = session.exec(select(AuditEvent).where(col(AuditEvent.action) == "redemption.refund_adjusted")).all()
        assert audit.details["order_refunded"] == 10238 and audit.actor == "webhook:shopify"


async def test_the_refund_that_completes_the_total_rolls_the_redemption_back(
    engine: Engine, shopify: tuple[int, Settings]
) -> None:
    shop_id, settings = shopify
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    async with running_app(settings, engine) as (_, client):
        await post(client, "orders/create", order(502, code.code), "create")
        await post(client, "refunds/create", refund(PARTIAL, 502), "first")
        assert the_redemption(engine, 502).status == "active"
        await post(client, "refunds/create", refund(REST, 502), "second")
    redemption = the_redemption(engine, 502)
    assert (redemption.status, redemption.refunded) == ("rolled_back", SUBTOTAL)
    assert uses(engine, code.id) == 0  # restored: the default policy
    assert delivery(engine, "second").outcome["rolled_back"] == 1
    with session_scope(engine) as session:
        (audit,) = session.exec(select(AuditEvent).where(col(AuditEvent.action) == "redemption.rolled_back")).all()
        assert audit.details["reason"] == "order wholly refunded"


async def test_every_unit_refunded_rolls_back_though_the_money_falls_short(engine: Engine, shopify: tuple[int, Settings]) -> None:
    """Shipping kept, every line refunded: a whole refund all the same."""
    shop_id, settings = shopify
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    short = refund(REST, 503)
    short["transactions"][0]["amount"] = "50.00"
    async with running_app(settings, engine) as (_, client):
        await post(client, "orders/create", order(503, code.code), "create")
        await post(client, "refunds/create", refund(PARTIAL, 503), "first")
        await post(client, "refunds/create", short, "second")
    assert the_redemption(engine, 503).status == "rolled_back"


async def test_the_same_refund_delivered_again_counts_once(engine: Engine, shopify: tuple[int, Settings]) -> None:
    """Another webhook id, the same refund id: nothing more is refunded."""
    shop_id, settings = shopify
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    async with running_app(settings, engine) as (_, client):
        await post(client, "orders/create", order(504, code.code), "create")
        await post(client, "refunds/create", refund(PARTIAL, 504), "first")
        await post(client, "refunds/create", refund(PARTIAL, 504), "again")
        listed = order(504, code.code, refunds=[refund(PARTIAL, 504)], financial_status="partially_refunded")
        await post(client, "orders/updated", listed, "updated")  # the order lists the same refund
    redemption = the_redemption(engine, 504)
    assert (redemption.status, redemption.refunded) == ("active", refunded_share(SUBTOTAL, 10238, TOTAL))
    assert delivery(engine, "again").outcome["duplicates"] == 1
    assert delivery(engine, "again").outcome.get("refunds", 0) == 0
    with session_scope(engine) as session:
        assert len(session.exec(select(OrderRefund).where(col(OrderRefund.order_id) == "504")).all()) == 1


async def test_a_cancellation_still_rolls_back_and_a_later_partial_refund_only_notes_revenue(
    engine: Engine, shopify: tuple[int, Settings]
) -> None:
    shop_id, settings = shopify
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    async with running_app(settings, engine) as (_, client):
        await post(client, "orders/create", order(505, code.code), "create")
        await post(client, "orders/cancelled", order(505, code.code, cancelled_at="2025-03-15T10:00:00-04:00"), "cancel")
        await post(client, "refunds/create", refund(PARTIAL, 505), "refund")
    redemption = the_redemption(engine, 505)
    assert redemption.status == "rolled_back" and uses(engine, code.id) == 0
    assert redemption.refunded == refunded_share(SUBTOTAL, 10238, TOTAL)
    assert delivery(engine, "refund").outcome["rolled_back"] == 0


async def test_an_order_first_seen_with_its_refunds_is_recorded_with_them(engine: Engine, shopify: tuple[int, Settings]) -> None:
    """orders/updated listing a refund, the first we hear of the order: the set-based path (which
    only redeems) must leave it to the processor, which records the use and then the refund."""
    shop_id, settings = shopify
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    listed = order(506, code.code, refunds=[refund(PARTIAL, 506)], financial_status="partially_refunded")
    async with running_app(settings, engine) as (_, client):
        await post(client, "orders/updated", listed, "updated")
    redemption = the_redemption(engine, 506)
    assert (redemption.status, redemption.refunded) == ("active", refunded_share(SUBTOTAL, 10238, TOTAL))
    assert delivery(engine, "updated").outcome["redeemed"] == 1


# --- the same deliveries in any order -------------------------------------------------------------


def _final(engine: Engine, order_id: int, code_id: int | None) -> tuple[str, int, int, list[str]]:
    redemption = the_redemption(engine, order_id)
    with session_scope(engine) as session:
        statuses = session.exec(select(WebhookEvent.status).where(col(WebhookEvent.delivery_id).like(f"{order_id}-%"))).all()
    return redemption.status, redemption.refunded, uses(engine, code_id), sorted(statuses)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # the order, a partial refund, the refund completing the total, the first one again
        ("whole", ("rolled_back", SUBTOTAL, 0)),
        # the order, a partial refund, the same refund again, the order listing it (orders/updated)
        ("partial", ("active", SUBTOTAL * 10238 // TOTAL, 1)),
    ],
)
async def test_the_same_deliveries_in_any_order_end_in_the_same_state(
    engine: Engine, shopify: tuple[int, Settings], name: str, expected: tuple[str, int, int]
) -> None:
    """Every permutation of four deliveries, each on its own order and code, through the route:
    the same redemption status, refunded revenue and code uses; no delivery left waiting."""
    shop_id, settings = shopify
    orders = list(itertools.permutations(range(4)))
    campaign_id = make_campaign(engine, shop_id, count=len(orders))
    codes = campaign_codes(engine, campaign_id)
    finals = set()
    async with running_app(settings, engine) as (_, client):
        for n, (permutation, code) in enumerate(zip(orders, codes, strict=True)):
            order_id = 7000 + n
            created = ("orders/create", order(order_id, code.code))
            first = ("refunds/create", refund(PARTIAL, order_id))
            if name == "whole":
                fourth = ("refunds/create", refund(REST, order_id))
            else:
                listed = order(order_id, code.code, refunds=[refund(PARTIAL, order_id)], financial_status="partially_refunded")
                fourth = ("orders/updated", listed)
            deliveries = [created, first, first, fourth]
            for step in permutation:
                topic, payload = deliveries[step]
                await post(client, topic, payload, f"{order_id}-{step}")
            status, refunded, used, statuses = _final(engine, order_id, code.id)
            assert "deferred" not in statuses and "failed" not in statuses, (permutation, statuses)
            finals.add((status, refunded, used))
    assert finals == {expected}


async def test_two_refunds_of_one_order_processed_side_by_side_both_count(engine: Engine, shopify: tuple[int, Settings]) -> None:
    """On PostgreSQL each runs in its own thread and transaction: the order's rows are locked
    while a refund is written and settled, so neither settles without the other."""
    shop_id, settings = shopify
    campaign_id = make_campaign(engine, shop_id, count=5)
    codes = campaign_codes(engine, campaign_id)
    async with running_app(settings, engine) as (_, client):
        for n, code in enumerate(codes):
            await post(client, "orders/create", order(800 + n, code.code), f"create-{n}")
    ids: list[tuple[int, int]] = []
    with session_scope(engine) as session:
        for n in range(len(codes)):
            pair = []
            for half, name in ((PARTIAL, "a"), (REST, "b")):
                body = json.dumps(refund(half, 800 + n)).encode()
                event_id, _ = webhooks.store_delivery(
                    session,
                    platform="shopify",
                    delivery_id=f"race-{n}-{name}",
                    topic="refunds/create",
                    shop_id=shop_id,
                    payload=body.decode(),
                    headers={k.lower(): v for k, v in signed("refunds/create", body, f"race-{n}-{name}").items()},
                )
                pair.append(event_id)
            ids.append((pair[0], pair[1]))
    async with httpx.AsyncClient() as http:
        processor = Processor(engine, settings, http)
        for first, second in ids:
            assert await asyncio.gather(processor.process(first), processor.process(second)) == ["processed", "processed"]
    assert {the_redemption(engine, 800 + n).status for n in range(len(codes))} == {"rolled_back"}


# --- a refund before its order --------------------------------------------------------------------


async def test_a_refund_before_its_order_waits_for_it(engine: Engine, shopify: tuple[int, Settings]) -> None:
    shop_id, settings = shopify
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    async with running_app(settings, engine) as (_, client):
        await post(client, "refunds/create", refund(PARTIAL, 601), "refund")
        early = delivery(engine, "refund")
        assert (early.status, early.order_id, early.outcome.get("early_refund")) == ("deferred", "601", True)
        await post(client, "orders/create", order(601, code.code), "create")
    assert delivery(engine, "refund").status == "processed"
    assert delivery(engine, "create").outcome["applied_deferred"] == [early.id]
    redemption = the_redemption(engine, 601)
    assert (redemption.status, redemption.refunded) == ("active", refunded_share(SUBTOTAL, 10238, TOTAL))


async def test_a_refund_whose_order_never_comes_is_ignored_after_the_window(
    engine: Engine, shopify: tuple[int, Settings]
) -> None:
    shop_id, settings = shopify
    settings = replace(settings, early_refund_days=7)
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    async with running_app(settings, engine) as (app, client):
        await post(client, "refunds/create", refund(PARTIAL, 602), "old")
        await post(client, "refunds/create", refund(PARTIAL, 603), "recent")
        with session_scope(engine) as session:
            session.execute(
                update(WebhookEvent)
                .where(col(WebhookEvent.delivery_id) == "old")
                .values(received_at=utcnow() - timedelta(days=7, minutes=1))
            )
        processor: Processor = app.state.processor
        await processor.sweep()
        old = delivery(engine, "old")
        assert old.status == "ignored" and old.error is not None and "7 days" in old.error
        assert old.outcome["ignored"] == "order_not_seen"
        assert delivery(engine, "recent").status == "deferred"  # still within its week
        await post(client, "orders/create", order(602, code.code), "create")  # too late
    assert the_redemption(engine, 602).refunded == 0


async def test_an_order_arriving_after_the_window_does_not_apply_the_old_refund(
    engine: Engine, shopify: tuple[int, Settings]
) -> None:
    """Before any sweep ran: the window is checked when the order comes, too."""
    shop_id, settings = shopify
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    async with running_app(replace(settings, early_refund_days=1), engine) as (_, client):
        await post(client, "refunds/create", refund(PARTIAL, 604), "old")
        with session_scope(engine) as session:
            session.execute(
                update(WebhookEvent)
                .where(col(WebhookEvent.delivery_id) == "old")
                .values(received_at=utcnow() - timedelta(days=2))
            )
        await post(client, "orders/create", order(604, code.code), "create")
    assert delivery(engine, "old").status == "ignored"
    assert the_redemption(engine, 604).refunded == 0


def test_the_early_refund_window_is_a_setting() -> None:
    assert Settings().early_refund_days == 7
    assert Settings.from_env({"COUPONRY_EARLY_REFUND_DAYS": "3"}).early_refund_days == 3


# --- other platforms' refunds, through the processor ----------------------------------------------


def _apply(engine: Engine, shop_id: int, event: OrderEvent) -> Outcome:
    outcome = Outcome()
    with session_scope(engine) as session:
        apply_order_event(session, shop_id, event, outcome, now=utcnow(), actor="test")
    return outcome


def test_woocommerce_refunds_listed_on_the_order(engine: Engine, shop_id: int) -> None:
    """A partial refund leaves the order `processing` with `refunds[]`; status `refunded` is whole."""
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    woo = WooCommerceConnector(httpx.AsyncClient(), ConnectorConfig())
    ours = (CodeUse(code=code.code, amount=200),)

    def parsed(name: str) -> OrderEvent:
        headers = {"X-WC-Webhook-Topic": "order.updated", "X-WC-Webhook-Source": "https://example.com/"}
        (event,) = woo.parse_webhook(headers, json.dumps(woo_fixture(name)).encode()).events
        return replace(event, codes=ours)

    paid, partial = parsed("order.json"), parsed("order_partially_refunded.json")
    _apply(engine, shop_id, paid)
    outcome = _apply(engine, shop_id, partial)
    assert (outcome.refunds, outcome.refund_adjusted) == (1, 1)
    redemption = the_redemption(engine, 727)
    assert (redemption.status, redemption.refunded) == ("active", refunded_share(1800, 1000, 2735))
    assert _apply(engine, shop_id, partial).refunds == 0  # the same state again
    whole = replace(partial, kind="refunded")
    assert _apply(engine, shop_id, whole).rolled_back == 1
    assert the_redemption(engine, 727).status == "rolled_back"


def test_bigcommerce_refunded_amount_grows_to_the_total(engine: Engine, shop_id: int) -> None:
    campaign_id = make_campaign(engine, shop_id, count=1)
    (code,) = campaign_codes(engine, campaign_id)
    bc = BigCommerceConnector(httpx.AsyncClient(), ConnectorConfig())
    ours = [{"code": code.code, "discount": "5.0000"}]
    paid = bc._order_event(bc_fixture("order.json"), ours)
    partial = bc._order_event(bc_fixture("order_partially_refunded.json"), ours)
    assert (partial.kind, partial.refunded_total) == ("paid", 2000)
    _apply(engine, shop_id, paid)
    assert _apply(engine, shop_id, partial).refund_adjusted == 1
    assert _apply(engine, shop_id, paid).refunds == 0  # an older state says nothing new
    assert the_redemption(engine, 218).refunded == refunded_share(6268, 2000, 6984)
    assert _apply(engine, shop_id, replace(partial, refunded_total=6984)).rolled_back == 1  # the whole total


def test_a_polled_order_keeps_its_refunds() -> None:
    event = OrderEvent(
        platform="woocommerce", shop="s", kind="paid", order_id="9", refunds=(Refund("731", 1000),), refunded_total=1000, items=3
    )
    (back,) = polled_delivery("woocommerce", polled_payload(event)).events
    assert (back.refunds, back.refunded_total, back.items) == (event.refunds, 1000, 3)


def test_the_set_based_path_never_takes_refunds() -> None:
    """The batched fast path only redeems: an order state reporting refunds, a refund, a
    cancellation go to the processor."""

    def batchable(event: OrderEvent) -> bool:
        return ingest._batchable(Delivery(delivery_id="d", topic="t", shop="s", kind="order", events=(event,)))

    created = OrderEvent(platform="shopify", shop="s", kind="created", order_id="1", codes=(CodeUse("A"),))
    assert batchable(created)
    assert not batchable(replace(created, refunds=(Refund("r1", 100),)))
    assert not batchable(replace(created, refunded_total=100))
    assert not batchable(replace(created, kind="refund"))
    assert not batchable(replace(created, kind="refunded"))
