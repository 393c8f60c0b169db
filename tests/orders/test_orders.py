"""Order webhooks into redemptions exactly once: attribution, rollbacks, cancel-before-order,
unknown codes, misuse flags, the sweep, and 1,000 sandbox orders delivered badly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine, func, update
from sqlmodel import col, select

from connectors.base import CodeUse, Delivery, OrderEvent, ShippingAddress
from plugin.orders import webhooks
from plugin.orders.orders import Processor, polled_delivery, polled_payload
from plugin.sandbox import store
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.models import AuditEvent, Campaign, Code, Redemption, WebhookEvent
from plugin.store.sandbox_models import SandboxDelivery
from tests.ingest import RULES, SHOP, campaign_codes, make_campaign, running_app, sandbox_settings
from tests.orders.test_webhooks import headers, order_body

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def send(
    client: httpx.AsyncClient, settings: Settings, body: bytes, delivery_id: str, topic: str = "orders/create"
) -> None:
    response = await client.post(
        "/webhooks/sandbox", content=body, headers=headers(settings, body, delivery_id=delivery_id, topic=topic)
    )
    assert response.status_code == 200


def event(engine: Engine, delivery_id: str) -> WebhookEvent:
    with session_scope(engine) as session:
        return session.exec(select(WebhookEvent).where(col(WebhookEvent.delivery_id) == delivery_id)).one()


def redemptions(engine: Engine) -> list[Redemption]:
    with session_scope(engine) as session:
        return list(session.exec(select(Redemption).order_by(col(Redemption.id))).all())


async def test_an_order_becomes_one_attributed_redemption(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=2)
    code = campaign_codes(engine, campaign_id)[0]
    with session_scope(engine) as session:
        session.execute(update(Code).where(col(Code.id) == code.id).values(partner_id=9, recipient="ann@example.com"))
    body = order_body(1001, [code.code.lower()], subtotal="80.00")  # platforms echo codes in their own case
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, body, "create-1")
        await send(client, settings, body, "paid-1", topic="orders/paid")  # another topic, same order
    (r,) = redemptions(engine)
    assert (r.order_id, r.code, r.campaign_id, r.batch_id, r.partner_id) == ("1001", code.code, campaign_id, code.batch_id, 9)
    assert (r.recipient, r.channel, r.subtotal, r.amount, r.currency, r.source) == (
        "ann@example.com",
        "web",
        8000,
        800,
        "USD",
        "webhook",
    )
    assert event(engine, "create-1").outcome["redeemed"] == 1
    assert event(engine, "paid-1").outcome == {"redeemed": 0, "duplicates": 1, "rolled_back": 0}
    with session_scope(engine) as session:
        assert session.get_one(Code, code.id).uses == 1
        assert session.get_one(Campaign, campaign_id).redemption_count == 1


@pytest.mark.parametrize("topic", ["orders/cancelled", "orders/refunded", "orders/failed"])
async def test_cancellation_refund_and_failed_payment_roll_back_with_an_audit_trail(
    engine: Engine, shop_id: int, settings: Settings, topic: str
) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=1)
    code = campaign_codes(engine, campaign_id)[0]
    body = order_body(5, [code.code])
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, body, "c")
        await send(client, settings, body, "x", topic=topic)
        await send(client, settings, body, "x2", topic=topic)  # the platform says it twice
    (r,) = redemptions(engine)
    assert r.status == "rolled_back"
    assert event(engine, "x").outcome["rolled_back"] == 1 and event(engine, "x2").outcome["rolled_back"] == 0
    with session_scope(engine) as session:
        assert session.get_one(Code, code.id).uses == 0  # restored: the default policy
        assert session.get_one(Campaign, campaign_id).redemption_count == 0
        audit = session.exec(select(AuditEvent).where(col(AuditEvent.action) == "redemption.rolled_back")).one()
        assert audit.actor == "webhook:sandbox" and audit.details["policy"] == "restore"


async def test_the_campaign_policy_can_reissue_a_fresh_code(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=1, rules={**RULES, "on_cancel": "reissue"})
    code = campaign_codes(engine, campaign_id)[0]
    with session_scope(engine) as session:
        session.execute(update(Code).where(col(Code.id) == code.id).values(recipient="ann@example.com"))
    body = order_body(5, [code.code])
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, body, "c")
        await send(client, settings, body, "x", topic="orders/cancelled")
    codes = campaign_codes(engine, campaign_id)
    assert len(codes) == 2 and codes[1].recipient == "ann@example.com" and codes[0].uses == 1


async def test_a_cancellation_before_its_order_is_kept_and_applied_when_it_comes(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=1)
    code = campaign_codes(engine, campaign_id)[0]
    body = order_body(77, [code.code])
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, body, "cancel", topic="orders/cancelled")
        assert event(engine, "cancel").status == "deferred"
        assert redemptions(engine) == []
        await send(client, settings, body, "create")
    (r,) = redemptions(engine)
    assert r.status == "rolled_back"
    assert event(engine, "cancel").status == "processed"
    assert event(engine, "create").outcome["applied_deferred"] == [event(engine, "cancel").id]
    with session_scope(engine) as session:
        assert session.get_one(Code, code.id).uses == 0


async def test_unknown_codes_are_counted_not_errors(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=1)
    code = campaign_codes(engine, campaign_id)[0]
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, order_body(1, ["SUMMER10", code.code]), "mixed")
        await send(client, settings, order_body(2, ["SUMMER10"]), "generic")
        await send(client, settings, order_body(2, ["SUMMER10"]), "generic-cancel", topic="orders/cancelled")
    mixed, generic = event(engine, "mixed"), event(engine, "generic")
    assert (mixed.status, mixed.unknown_codes, mixed.outcome["unknown_codes"], mixed.outcome["redeemed"]) == (
        "processed",
        1,
        ["SUMMER10"],
        1,
    )
    assert (generic.status, generic.unknown_codes, generic.error) == ("processed", 1, None)
    assert event(engine, "generic-cancel").status == "processed"  # not deferred forever: none of ours


async def test_misuse_is_recorded_and_flagged_with_its_reason(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    rules = {**RULES, "allowed_channels": ["web"]}
    campaign_id = make_campaign(engine, shop_id, count=3, rules=rules)
    bound, elsewhere, fine = campaign_codes(engine, campaign_id)
    with session_scope(engine) as session:
        session.execute(update(Code).where(col(Code.id) == bound.id).values(customer_id="someone-else"))
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, order_body(1, [bound.code]), "bound")
        pos = order_body(2, [elsewhere.code]).replace(b'"channel": "web"', b'"channel": "pos"')
        await send(client, settings, pos, "pos")
        await send(client, settings, order_body(3, [fine.code]), "fine")
    reasons = {r.order_id: r.flagged_reason for r in redemptions(engine)}
    assert reasons["1"] is not None and reasons["2"] is not None and reasons["3"] is None
    assert event(engine, "bound").flagged and event(engine, "pos").flagged and not event(engine, "fine").flagged
    with session_scope(engine) as session:
        flagged = webhooks.list_deliveries(session, shop_id, flagged=True).items
    assert {e.delivery_id for e in flagged} == {"bound", "pos"}


async def test_the_sweep_processes_a_delivery_whose_process_died_after_answering(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=1)
    code = campaign_codes(engine, campaign_id)[0]
    body = order_body(9, [code.code])
    with session_scope(engine) as session:  # stored and answered, then the process died
        webhooks.store_delivery(
            session,
            platform="sandbox",
            delivery_id="orphan",
            topic="orders/create",
            shop_id=shop_id,
            payload=body.decode(),
            headers=headers(settings, body, delivery_id="orphan"),
        )
    async with httpx.AsyncClient() as http:
        processor = Processor(engine, settings, http)
        assert await processor.sweep(older_than=timedelta(hours=1)) == 0  # too fresh: its own task may run it
        assert await processor.sweep(older_than=timedelta(0)) == 1
        assert await processor.sweep(older_than=timedelta(0)) == 0
    assert event(engine, "orphan").status == "processed" and len(redemptions(engine)) == 1


async def test_concurrent_processing_of_one_delivery_applies_it_once(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=1)
    code = campaign_codes(engine, campaign_id)[0]
    body = order_body(9, [code.code])
    with session_scope(engine) as session:
        event_id, _ = webhooks.store_delivery(
            session,
            platform="sandbox",
            delivery_id="d",
            topic="orders/create",
            shop_id=shop_id,
            payload=body.decode(),
            headers=headers(settings, body, delivery_id="d"),
        )
    async with httpx.AsyncClient() as http:
        processor = Processor(engine, settings, http)
        statuses = await asyncio.gather(*(processor.process(event_id) for _ in range(5)))
    assert sorted(statuses, key=str).count("processed") == 1
    with session_scope(engine) as session:
        assert session.get_one(Code, code.id).uses == 1


@pytest.mark.slow
async def test_a_thousand_sandbox_orders_delivered_badly_count_exactly_once(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    """1,000 orders through the sandbox store's own deliverer with duplicates (sent at once),
    random order and delays, failed attempts and lost answers; 100 of them cancelled, often
    before their order arrives."""
    settings = sandbox_settings(settings)
    n, cancelled = 1000, 100
    campaign_id = make_campaign(engine, shop_id, count=n)
    ours = campaign_codes(engine, campaign_id)
    with session_scope(engine) as session:
        discount, _ = store.save_discount(session, SHOP, {"kind": "percentage", "value": 10})
        assert discount.id is not None
        for start in range(0, n, 250):
            store.add_codes(session, SHOP, discount.id, [{"code": c.code} for c in ours[start : start + 250]], 250)
        store.set_knobs(
            session,
            SHOP,
            {
                "duplicate": 0.3,
                "reorder": True,
                "delay_ms": 300,
                "webhook_fail_rate": 0.2,
                "retry_base_seconds": 0.01,
                "max_retries": 50,
            },
        )
        order_ids = []
        for i, code in enumerate(ours):
            order = store.place_order(session, SHOP, codes=[code.code], subtotal=5000 + i, email=f"s{i}@example.com")
            order_ids.append(order.id)
        for order_id in order_ids[:cancelled]:
            assert order_id is not None
            store.change_order(session, SHOP, order_id, "cancel")
    async with running_app(settings, engine) as (app, _):
        deliverer = app.state.background.deliverer
        for _ in range(2000):
            await deliverer.deliver_due(limit=300)
            with session_scope(engine) as session:
                pending = session.exec(select(func.count()).where(col(SandboxDelivery.status) == "pending")).one()
            if not pending:
                break
            await asyncio.sleep(0.02)
    with session_scope(engine) as session:
        deliveries = session.exec(select(SandboxDelivery)).all()
        assert {d.status for d in deliveries} == {"delivered"}
        assert sum(d.sends for d in deliveries) > len(deliveries)  # duplicates and lost answers did happen
        events = session.exec(select(WebhookEvent)).all()
        assert len(events) == n + cancelled  # one row per delivery id, however often it came
        assert {e.status for e in events} == {"processed"}
        rows = session.exec(select(Redemption)).all()
        assert len(rows) == n and len({(r.order_id, r.code) for r in rows}) == n
        rolled_back = {r.order_id for r in rows if r.status == "rolled_back"}
        assert rolled_back == {str(o) for o in order_ids[:cancelled]}
        assert session.get_one(Campaign, campaign_id).redemption_count == n - cancelled
        uses = session.exec(select(func.sum(Code.uses)).where(col(Code.campaign_id) == campaign_id)).one()
        assert uses == n - cancelled


class _ThinShop:
    """A platform whose webhooks carry only order ids (as BigCommerce's): fetch_order answers."""

    def __init__(self, fetched: dict[str, OrderEvent]) -> None:
        self.fetched = fetched

    async def fetch_order(self, order_id: str) -> OrderEvent:
        return self.fetched[order_id]


@pytest.mark.parametrize(
    ("webhook_kind", "fetched_kind", "redeems"),
    [
        ("updated", "failed", False),  # an incomplete checkout (BigCommerce status 0): never holds a code
        ("updated", "paid", True),  # the order changed and is paid now
        ("paid", "created", True),  # statusUpdated said what happened: that wins
    ],
)
async def test_a_thin_webhook_takes_the_fetched_orders_kind_when_it_only_says_updated(
    engine: Engine,
    shop_id: int,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    webhook_kind: str,
    fetched_kind: str,
    redeems: bool,
) -> None:
    campaign_id = make_campaign(engine, shop_id, count=1)
    code = campaign_codes(engine, campaign_id)[0]
    fetched = OrderEvent(
        platform="sandbox", shop=SHOP, kind=fetched_kind, order_id="250", codes=(CodeUse(code.code, 800),), subtotal=8000
    )  # type: ignore[arg-type]
    monkeypatch.setattr("plugin.orders.orders.shop_connector", lambda *a, **k: _ThinShop({"250": fetched}))
    thin = OrderEvent(platform="sandbox", shop=SHOP, kind=webhook_kind, order_id="250", delivery_id="t1", needs_fetch=True)  # type: ignore[arg-type]
    delivery = Delivery(delivery_id="t1", topic="store/order/updated", shop=SHOP, kind="order", events=(thin,))
    with session_scope(engine) as session:
        event_id, _ = webhooks.store_delivery(
            session, platform="sandbox", delivery_id="t1", topic="store/order/updated", shop_id=shop_id, payload="{}", headers={}
        )
    async with httpx.AsyncClient() as http:
        status = await Processor(engine, settings, http).process(event_id, delivery=delivery, shop_id=shop_id)
    # an incomplete order is a state, not a cancellation overtaking its order: nothing is kept
    assert status == ("processed" if redeems else "ignored")
    assert len(redemptions(engine)) == (1 if redeems else 0)
    with session_scope(engine) as session:
        assert session.get_one(Code, code.id).uses == (1 if redeems else 0)


def test_a_polled_order_keeps_its_shipping_address_until_processed() -> None:
    event = OrderEvent(
        platform="woocommerce",
        shop="shop.example",
        kind="paid",
        order_id="727",
        codes=(CodeUse("ABCD-EFGH", 200),),
        occurred_at=datetime(2017, 3, 22, 19, 28, 8, tzinfo=UTC),
        shipping_address=ShippingAddress("969 Market", "", "94103", "US"),
    )
    (again,) = polled_delivery("woocommerce", polled_payload(event)).events
    assert again == event
    (bare,) = polled_delivery("woocommerce", polled_payload(OrderEvent("woocommerce", "s", "paid", "1"))).events
    assert bare.shipping_address is None
