"""POST /webhooks/{platform}: signatures, storage, deduplication; listing and redaction."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func
from sqlmodel import col, select

from plugin import shared_secrets as keys
from plugin.jobs.worker import default_sweeps
from plugin.orders import retention, webhooks
from plugin.sandbox.deliverer import sign
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.jobstore import aware
from plugin.store.models import WebhookEvent, utcnow
from tests.ingest import SHOP, campaign_codes, make_campaign, running_app, sandbox_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def order_body(order_id: int, codes: list[str], *, email: str = "ann@example.com", subtotal: str = "80.00") -> bytes:
    return json.dumps(
        {
            "id": order_id,
            "status": "paid",
            "email": email,
            "customer_id": "c1",
            "currency": "USD",
            "subtotal": subtotal,
            "total": subtotal,
            "channel": "web",
            "discount_codes": [{"code": c, "amount": "8.00"} for c in codes],
            "created_at": "2025-01-01T00:00:00+00:00",
        }
    ).encode()


def headers(settings: Settings, body: bytes, *, delivery_id: str = "d-1", topic: str = "orders/create") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Sandbox-Topic": topic,
        "X-Sandbox-Shop-Domain": SHOP,
        "X-Sandbox-Delivery-Id": delivery_id,
        "X-Sandbox-Hmac-Sha256": sign(keys.webhook_secret(settings), body),
    }


def count_events(engine: Engine) -> int:
    with session_scope(engine) as session:
        return int(session.exec(select(func.count()).select_from(WebhookEvent)).one())


async def test_a_signed_delivery_is_stored_and_processed(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=3)
    code = campaign_codes(engine, campaign_id)[0].code
    body = order_body(1001, [code])
    async with running_app(settings, engine) as (_, client):
        response = await client.post("/webhooks/sandbox", content=body, headers=headers(settings, body))
    assert response.status_code == 200
    with session_scope(engine) as session:
        event = session.exec(select(WebhookEvent)).one()
        assert (event.status, event.order_id, event.campaign_id) == ("processed", "1001", campaign_id)
        assert event.payload == body.decode()
        assert "x-sandbox-hmac-sha256" not in event.headers and event.headers["x-sandbox-topic"] == "orders/create"


@pytest.mark.parametrize("tamper", ["wrong", "missing", "body"])
async def test_a_bad_or_missing_signature_is_refused_and_nothing_is_stored(
    engine: Engine, shop_id: int, settings: Settings, tamper: str
) -> None:
    settings = sandbox_settings(settings)
    body = order_body(1, ["X"])
    h = headers(settings, body)
    if tamper == "wrong":
        h["X-Sandbox-Hmac-Sha256"] = sign("not-the-secret", body)
    elif tamper == "missing":
        del h["X-Sandbox-Hmac-Sha256"]
    else:
        body = body.replace(b"80.00", b"8000.00")
    async with running_app(settings, engine) as (_, client):
        response = await client.post("/webhooks/sandbox", content=body, headers=h)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["reason"] == "bad_signature"
    assert count_events(engine) == 0


async def test_an_unknown_platform_is_404(engine: Engine, settings: Settings) -> None:
    async with running_app(sandbox_settings(settings), engine) as (_, client):
        response = await client.post("/webhooks/nosuch", content=b"{}")
    assert response.status_code == 404


async def test_a_repeated_delivery_is_stored_once(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    body = order_body(7, ["GENERIC10"])
    async with running_app(settings, engine) as (_, client):
        for _ in range(3):
            response = await client.post("/webhooks/sandbox", content=body, headers=headers(settings, body, delivery_id="same"))
            assert response.status_code == 200
    assert count_events(engine) == 1


async def test_a_delivery_for_an_unknown_shop_is_kept_as_ignored(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    body = order_body(7, ["X"])
    h = headers(settings, body) | {"X-Sandbox-Shop-Domain": "someone-else.test"}
    async with running_app(settings, engine) as (_, client):
        assert (await client.post("/webhooks/sandbox", content=body, headers=h)).status_code == 200
    with session_scope(engine) as session:
        event = session.exec(select(WebhookEvent)).one()
        assert event.status == "ignored" and event.shop_id is None and "someone-else.test" in (event.error or "")


def _store(engine: Engine, shop_id: int, n: int, **values: object) -> list[int]:
    ids = []
    with session_scope(engine) as session:
        for i in range(n):
            event_id, _ = webhooks.store_delivery(
                session, platform="sandbox", delivery_id=f"x{i}-{values}", topic="t", shop_id=shop_id, payload="{}", headers={}
            )
            event = session.get_one(WebhookEvent, event_id)
            for key, value in values.items():
                setattr(event, key, value)
            ids.append(event_id)
    return ids


def test_list_deliveries_filters_and_pages(engine: Engine, shop_id: int) -> None:
    processed = _store(engine, shop_id, 3, status="processed", campaign_id=5)
    flagged = _store(engine, shop_id, 2, status="processed", flagged=True, campaign_id=6)
    failed = _store(engine, shop_id, 1, status="failed")
    with session_scope(engine) as session:

        def ids(**filters: object) -> list[int | None]:
            return [e.id for e in webhooks.list_deliveries(session, shop_id, **filters).items]  # type: ignore[arg-type]

        assert ids(status="failed") == failed
        assert ids(flagged=True) == flagged[::-1]
        assert ids(campaign_id=5) == processed[::-1]
        assert ids(platform="shopify") == []
        first = webhooks.list_deliveries(session, shop_id, limit=4)
        assert first.next_cursor is not None
        rest = webhooks.list_deliveries(session, shop_id, limit=4, cursor=first.next_cursor)
        assert [e.id for e in first.items + list(rest.items)] == sorted(processed + flagged + failed, reverse=True)
        assert rest.next_cursor is None
        assert webhooks.list_deliveries(session, shop_id + 1).items == []  # another shop sees nothing


async def test_redaction_removes_the_payloads_of_a_customer(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=2)
    a, b = (c.code for c in campaign_codes(engine, campaign_id))
    async with running_app(settings, engine) as (_, client):
        for n, (code, email) in enumerate([(a, "ann@example.com"), (b, "bob@example.com")]):
            body = order_body(n + 1, [code], email=email)
            await client.post("/webhooks/sandbox", content=body, headers=headers(settings, body, delivery_id=f"d{n}"))
    with session_scope(engine) as session:
        # a customer known by id only, who never ordered: nothing names them, nothing goes
        assert webhooks.redact_customer(session, shop_id, customer_id="never-ordered", actor="gdpr") == 0
        assert webhooks.redact_customer(session, shop_id, email="Ann@Example.com", actor="gdpr") == 1
    with session_scope(engine) as session:
        events = {e.order_id: e for e in session.exec(select(WebhookEvent)).all()}
        assert events["1"].payload == "" and events["1"].redacted_at is not None
        assert events["1"].status == "processed"  # the outcome stays for the records
        assert "bob@example.com" in events["2"].payload


async def test_a_repeated_header_is_read_as_its_first_value(engine: Engine, shop_id: int, settings: Settings) -> None:
    """As Starlette's `request.headers.get` reads it: the route reads the headers once, into a dict."""
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=1)
    body = order_body(1003, [campaign_codes(engine, campaign_id)[0].code])
    signed = headers(settings, body)
    repeated = [*signed.items(), ("X-Sandbox-Hmac-Sha256", "not-the-signature"), ("X-Sandbox-Delivery-Id", "d-other")]
    async with running_app(settings, engine) as (_, client):
        response = await client.post("/webhooks/sandbox", content=body, headers=repeated)
    assert response.status_code == 200
    with session_scope(engine) as session:
        assert session.exec(select(WebhookEvent.delivery_id)).one() == "d-1"


# --- retention of the deliveries nothing acts on --------------------------------------------------


def _remaining(engine: Engine) -> list[tuple[str, bool]]:
    cutoff = utcnow() - timedelta(days=30)
    with session_scope(engine) as session:
        rows = session.exec(select(WebhookEvent.status, WebhookEvent.received_at).order_by(col(WebhookEvent.id))).all()
        return [(status, aware(received) < cutoff) for status, received in rows]


def test_old_ignored_and_failed_deliveries_are_deleted_in_batches(engine: Engine, shop_id: int) -> None:
    old = utcnow() - timedelta(days=31)
    _store(engine, shop_id, 3, status="ignored", received_at=old)
    _store(engine, shop_id, 2, status="failed", received_at=old)
    _store(engine, shop_id, 1, status="processed", received_at=old)  # kept: it recorded something
    _store(engine, shop_id, 1, status="received", received_at=old)  # kept: not processed yet
    _store(engine, shop_id, 1, status="ignored")  # kept: recent
    assert webhooks.purge_unused(engine, older_than=timedelta(days=30), batch=2) == 5
    assert _remaining(engine) == [("processed", True), ("received", True), ("ignored", False)]
    assert webhooks.purge_unused(engine, older_than=timedelta(days=30)) == 0


async def test_the_worker_sweep_applies_the_retention_setting_at_most_hourly(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    import httpx

    from plugin.store.jobcontext import JobContext

    old = utcnow() - timedelta(days=8)
    _store(engine, shop_id, 2, status="failed", received_at=old)
    async with httpx.AsyncClient() as http:
        off = retention.RetentionSweep()
        assert await off(JobContext(engine, replace(settings, webhook_retention_days=0), http)) == 0
        sweep = retention.RetentionSweep()
        week = JobContext(engine, replace(settings, webhook_retention_days=7), http)
        assert await sweep(week) == 2
        _store(engine, shop_id, 1, status="failed", received_at=old)
        assert await sweep(week) == 0  # not again within the hour
    assert len(_remaining(engine)) == 1
    assert any(isinstance(s, retention.RetentionSweep) for s in default_sweeps())
