"""Per-code operations through the API and the sandbox loop: a voided code is refused by
validation and, once the worker ran, by the platform's checkout; an extended expiry reaches the
platform; a code's story tells what our records hold (claim, sync, hold, use, rollback)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import col, select

from plugin import shared_secrets as keys
from plugin.jobs.worker import Worker
from plugin.platforms import sync
from plugin.settings import Settings
from plugin.shops import apikeys
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.jobstore import aware
from plugin.store.models import AuditEvent, Code, Job, utcnow
from tests.ingest import SHOP, campaign_codes, make_campaign, running_app, sandbox_settings
from tests.platforms.test_sync import drain, platform_codes

pytestmark = pytest.mark.anyio
BASKET = {"currency": "USD", "lines": [{"product_id": "p1", "quantity": 1, "unit_price": 5000}]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _admin(engine: Engine, shop_id: int) -> dict[str, str]:
    with session_scope(engine) as session:
        _, key = apikeys.create_key(session, shop_id=shop_id, name="admin", scopes=["admin"])
    return {"Authorization": f"Bearer {key}"}


def _sandbox(settings: Settings) -> dict[str, str]:
    return {"X-Sandbox-Shop": SHOP, "X-Sandbox-Access-Token": keys.access_token(settings, SHOP)}


async def _synced(engine: Engine, shop_id: int, settings: Settings, client: httpx.AsyncClient, count: int) -> tuple[int, Worker]:
    campaign_id = make_campaign(engine, shop_id, count=count)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    worker = Worker(JobContext(engine, settings, client), sweeps=())
    await drain(worker)
    return campaign_id, worker


async def _order(client: httpx.AsyncClient, settings: Settings, code: str) -> httpx.Response:
    return await client.post("/sandbox/api/orders", json={"codes": [code], "subtotal": "50.00"}, headers=_sandbox(settings))


async def test_a_voided_code_is_refused_by_validation_and_the_platform(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    async with running_app(settings, engine) as (_, client):
        admin = _admin(engine, shop_id)
        campaign_id, worker = await _synced(engine, shop_id, settings, client, 3)
        leaked, kept, _ = (c.code for c in campaign_codes(engine, campaign_id))
        typed = f" {leaked[:4].lower()} {leaked[4:]} "  # as a shopper might type it
        first = await client.post(f"/api/v1/codes/{typed}/void", json={"reason": "leaked on a forum"}, headers=admin)
        again = await client.post(f"/api/v1/codes/{leaked}/void", json={}, headers=admin)
        assert first.status_code == again.status_code == 200
        assert first.json()["status"] == "voided" and first.json()["code"] == leaked
        refused = await client.post("/api/v1/validate", json={"code": leaked, "basket": BASKET}, headers=admin)
        assert refused.json()["valid"] is False and refused.json()["reason"] == "voided"
        with session_scope(engine) as session:  # one void, one deactivation job, in the same transaction
            audits = session.exec(select(AuditEvent).where(col(AuditEvent.action) == "code.voided")).all()
            assert [(a.actor.startswith("api-key:"), a.details["reason"]) for a in audits] == [(True, "leaked on a forum")]
            jobs = session.exec(select(Job.kind).where(col(Job.status) == "queued")).all()
            assert jobs == [sync.DEACTIVATE]
        assert (await _order(client, settings, leaked)).status_code == 201  # the platform still takes it...
        await drain(worker)
        assert (await _order(client, settings, leaked)).status_code == 422  # ...until the worker ran
        assert (await _order(client, settings, kept)).status_code == 201
        shown = (await client.get(f"/api/v1/codes/{leaked}", headers=admin)).json()
    assert shown["platform"] == {**shown["platform"], "platform": "sandbox", "sync_status": "deactivated", "error": None}
    events = [e["event"] for e in shown["events"]]
    assert events.index("voided") < events.index("deactivated")
    assert platform_codes(engine)[leaked].active is False


async def test_an_extended_expiry_reaches_the_platform(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    async with running_app(settings, engine) as (_, client):
        admin = _admin(engine, shop_id)
        campaign_id, worker = await _synced(engine, shop_id, settings, client, 2)
        live, lapsed = (c.code for c in campaign_codes(engine, campaign_id))
        # one code lapsed and the sync took it off the platform
        with session_scope(engine) as session:
            row = session.exec(select(Code).where(col(Code.code) == lapsed)).one()
            row.expires_at = utcnow() - timedelta(hours=1)
            session.add(row)
            sync.enqueue_deactivate(session, shop_id=shop_id, campaign_id=campaign_id)
        await drain(worker)
        assert (await _order(client, settings, lapsed)).status_code == 422
        later = utcnow() + timedelta(days=30)
        # the held code's new end is sent as such (sync.ends); the one taken off is pushed again
        for code, status in ((live, "synced"), (lapsed, "pending")):
            answer = await client.post(f"/api/v1/codes/{code}/extend", json={"expires_at": later.isoformat()}, headers=admin)
            assert answer.status_code == 200 and answer.json()["platform"]["sync_status"] == status
        await drain(worker)
        held = platform_codes(engine)
        for code in (live, lapsed):
            stated = held[code].expires_at
            assert held[code].active and stated is not None and abs(aware(stated) - later) < timedelta(seconds=1)
        assert (await _order(client, settings, lapsed)).status_code == 201  # live again at the checkout
        shown = (await client.get(f"/api/v1/codes/{live}", headers=admin)).json()
    assert shown["platform"]["sync_status"] == "synced"
    assert {c.code: c.sync_status for c in campaign_codes(engine, campaign_id)} == {live: "synced", lapsed: "synced"}
    extended = [e for e in shown["events"] if e["event"] == "extended"]
    assert len(extended) == 1 and extended[0]["details"]["previous"] is None


async def test_the_story_of_a_code(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    async with running_app(settings, engine) as (_, client):
        admin = _admin(engine, shop_id)
        campaign_id = make_campaign(engine, shop_id, count=2)
        claimed = await client.post(f"/api/v1/campaigns/{campaign_id}/claims", json={"email": "Ann@Example.com"}, headers=admin)
        code = claimed.json()["code"]
        with session_scope(engine) as session:
            sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
        await drain(Worker(JobContext(engine, settings, client), sweeps=()))
        calls: list[tuple[str, dict[str, Any]]] = [
            ("/api/v1/reservations", {"code": code, "checkout_id": "co-1"}),
            ("/api/v1/redemptions", {"code": code, "order_id": "order-7", "basket": BASKET, "checkout_id": "co-1"}),
        ]
        for path, body in calls:
            assert (await client.post(path, json=body, headers=admin)).status_code == 201
        listed = (await client.get("/api/v1/redemptions", headers=admin)).json()["data"]
        redemption_id = listed[0]["id"]
        back = await client.post(f"/api/v1/redemptions/{redemption_id}/rollback", json={"reason": "cancelled"}, headers=admin)
        assert back.status_code == 200
        story = await client.get(f"/api/v1/codes/{code.lower()}", headers=admin)
    assert story.status_code == 200
    body = story.json()
    assert body["recipient"] == "ann@example.com" and body["typed"] == code.lower()
    events = [e["event"] for e in body["events"]]
    for step in ("issued", "assigned", "synced", "reserved", "redeemed", "rolled_back"):
        assert step in events, (step, events)
    assert events.index("issued") < events.index("assigned") < events.index("redeemed") < events.index("rolled_back")
    by_event = {e["event"]: e["details"] for e in body["events"]}
    assert by_event["assigned"]["recipient"] == "ann@example.com"
    assert by_event["synced"]["platform"] == "sandbox"
    assert by_event["reserved"]["checkout_id"] == "co-1"
    assert by_event["redeemed"]["order_id"] == "order-7"
    assert by_event["rolled_back"]["order_id"] == "order-7" and by_event["rolled_back"]["actor"].startswith("api-key:")
    times = [e["at"] for e in body["events"]]
    assert times == sorted(times)
