"""The sandbox store's API: auth, batch and rate limits, idempotent creates, orders, signed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from connectors.base import ConnectorConfig, ShippingAddress
from connectors.sandbox import SandboxConnector
from plugin import shared_secrets as keys
from plugin.sandbox import store
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.sandbox_models import SandboxDelivery
from tests.ingest import SHOP, running_app, sandbox_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def auth(settings: Settings) -> dict[str, str]:
    return {"X-Sandbox-Shop": SHOP, "X-Sandbox-Access-Token": keys.access_token(settings, SHOP)}


async def test_requests_need_the_shops_token(engine: Engine, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    async with running_app(settings, engine) as (_, client):
        bad = await client.post(
            "/sandbox/api/discounts", json={}, headers={"X-Sandbox-Shop": SHOP, "X-Sandbox-Access-Token": "x"}
        )
        good = await client.post("/sandbox/api/discounts", json={"reference": "r1"}, headers=auth(settings))
        again = await client.post("/sandbox/api/discounts", json={"reference": "r1"}, headers=auth(settings))
    assert bad.status_code == 401
    assert (good.status_code, again.status_code) == (201, 200) and good.json()["id"] == again.json()["id"]


async def test_batch_limit_and_existing_codes(engine: Engine, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    async with running_app(settings, engine) as (_, client):
        d = (await client.post("/sandbox/api/discounts", json={}, headers=auth(settings))).json()["id"]
        url = f"/sandbox/api/discounts/{d}/codes"
        too_many = await client.post(url, json={"codes": [{"code": f"C{i}"} for i in range(251)]}, headers=auth(settings))
        first = await client.post(url, json={"codes": [{"code": "AB-1"}]}, headers=auth(settings))
        repeat = await client.post(url, json={"codes": [{"code": "ab-1"}]}, headers=auth(settings))
        listed = await client.get(url, headers=auth(settings))
    assert too_many.status_code == 422
    assert first.json()["results"][0]["existing"] is False
    assert repeat.json()["results"][0] == {
        "code": "ab-1",
        "ok": True,
        "id": first.json()["results"][0]["id"],
        "existing": True,
        "reactivated": False,
    }
    assert [c["code"] for c in listed.json()["codes"]] == ["AB-1"]


async def test_the_rate_limit_answers_429_with_retry_after(engine: Engine, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    with session_scope(engine) as session:
        store.set_knobs(session, SHOP, {"rate_limit": 3})
    async with running_app(settings, engine) as (_, client):
        answers = [await client.get("/sandbox/api/config", headers=auth(settings)) for _ in range(5)]
    assert [a.status_code for a in answers].count(429) >= 2
    limited = next(a for a in answers if a.status_code == 429)
    assert float(limited.headers["Retry-After"]) > 0


async def test_orders_check_codes_and_queue_signed_webhooks(engine: Engine, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    async with running_app(settings, engine) as (_, client):
        d = (await client.post("/sandbox/api/discounts", json={"value": 10}, headers=auth(settings))).json()["id"]
        await client.post(f"/sandbox/api/discounts/{d}/codes", json={"codes": [{"code": "SAVE-1"}]}, headers=auth(settings))
        unknown = await client.post("/sandbox/api/orders", json={"codes": ["NOPE"], "subtotal": "10.00"}, headers=auth(settings))
        order = await client.post("/sandbox/api/orders", json={"codes": ["save-1"], "subtotal": "80.00"}, headers=auth(settings))
        used = await client.post("/sandbox/api/orders", json={"codes": ["SAVE-1"], "subtotal": "80.00"}, headers=auth(settings))
        cancelled = await client.post(f"/sandbox/api/orders/{order.json()['id']}/cancel", headers=auth(settings))
    assert unknown.status_code == 422 and used.status_code == 422  # one use per code, enforced by the platform
    assert order.json()["discount_codes"] == [{"code": "SAVE-1", "amount": "8.00"}]
    assert cancelled.json()["status"] == "cancelled"
    with session_scope(engine) as session:
        deliveries = session.exec(select(SandboxDelivery).order_by(SandboxDelivery.id)).all()  # type: ignore[arg-type]
        assert [d.topic for d in deliveries] == ["orders/create", "orders/cancelled"]
        body, delivery_id = deliveries[0].body.encode(), deliveries[0].delivery_id
    # what the deliverer sends verifies with the connector's check
    from plugin.sandbox.deliverer import sign

    connector = SandboxConnector.__new__(SandboxConnector)
    connector.config = ConnectorConfig(webhook_secret=keys.webhook_secret(settings))
    connector.verify_webhook({"X-Sandbox-Hmac-Sha256": sign(keys.webhook_secret(settings), body)}, body)
    parsed = connector.parse_webhook({"X-Sandbox-Topic": "orders/create", "X-Sandbox-Delivery-Id": delivery_id}, body)
    assert parsed.events[0].codes[0].amount == 800 and parsed.events[0].subtotal == 8000


async def test_orders_carry_a_shipping_address_to_the_webhook(engine: Engine, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    ship_to = {"address1": "12 Main Street", "address2": "Apt 4", "zip": "SW1A 1AA", "country_code": "GB"}
    async with running_app(settings, engine) as (_, client):
        placed = await client.post(
            "/sandbox/api/orders", json={"subtotal": "10.00", "shipping_address": ship_to}, headers=auth(settings)
        )
        bare = await client.post("/sandbox/api/orders", json={"subtotal": "10.00"}, headers=auth(settings))
        wrong = await client.post(
            "/sandbox/api/orders", json={"subtotal": "1.00", "shipping_address": {"street": "x"}}, headers=auth(settings)
        )
    assert placed.status_code == 201 and placed.json()["shipping_address"] == ship_to
    assert bare.json()["shipping_address"] is None
    assert wrong.status_code == 422
    with session_scope(engine) as session:
        deliveries = session.exec(select(SandboxDelivery).order_by(SandboxDelivery.id)).all()  # type: ignore[arg-type]
        bodies = [(d.body.encode(), d.delivery_id) for d in deliveries]
    connector = SandboxConnector.__new__(SandboxConnector)
    connector.config = ConnectorConfig(webhook_secret=keys.webhook_secret(settings))
    events = [
        connector.parse_webhook({"X-Sandbox-Topic": "orders/create", "X-Sandbox-Delivery-Id": d}, b).events[0] for b, d in bodies
    ]
    assert [e.shipping_address for e in events] == [ShippingAddress("12 Main Street", "Apt 4", "SW1A 1AA", "GB"), None]
