"""Reconciliation: drift between the platform's codes and ours repaired; orders the webhooks
missed found by the poll and recorded once; the periodic scheduling."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import respx
from sqlalchemy import Engine, func, update
from sqlmodel import col, select

from connectors.base import Credentials
from plugin.jobs.worker import Worker
from plugin.platforms import installs, sync
from plugin.reconciliation import reconcile
from plugin.sandbox import store
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import Alert, AuditEvent, Campaign, Code, Job, Redemption, WebhookEvent, utcnow
from plugin.store.sandbox_models import SandboxCode
from tests.connectors.fakes import shopify as shopify_fakes
from tests.connectors.fakes.woocommerce import FakeWooCommerce
from tests.ingest import SHOP, campaign_codes, make_campaign, running_app, sandbox_settings
from tests.platforms.test_sync import drain, platform_codes

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    config = {"shopify": {"client_id": "api-key", "client_secret": "hush"}}
    return replace(settings, public_url="https://app.test", sandbox_enabled=False, connector_config=config)


@asynccontextmanager
async def worker_for(settings: Settings, engine: Engine) -> AsyncIterator[Worker]:
    async with httpx.AsyncClient() as http:
        yield Worker(JobContext(engine, settings, http), sweeps=())


def installed(engine: Engine, settings: Settings, platform: str, credentials: Credentials) -> int:
    with session_scope(engine) as session:
        shop = installs.save_install(session, settings, platform=platform, credentials=credentials)
        assert shop.id is not None
        return shop.id


def run_reconcile(engine: Engine, shop_id: int) -> None:
    with session_scope(engine) as session:
        assert reconcile.enqueue(session, shop_id) is not None


def last_report(engine: Engine, shop_id: int) -> AuditEvent:
    with session_scope(engine) as session:
        report = session.exec(
            select(AuditEvent)
            .where(col(AuditEvent.shop_id) == shop_id, col(AuditEvent.action) == "reconcile.report")
            .order_by(col(AuditEvent.id).desc())
        ).first()
        assert report is not None
        session.expunge(report)
        return report


async def test_drift_on_shopify_is_repaired_and_capacity_reported(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = shopify_fakes.shopify_fake(router)
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_x", scopes=("write_discounts", "read_orders"))
    shop_id = installed(engine, app_settings, "shopify", credentials)
    campaign_id = make_campaign(engine, shop_id, count=4)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        lost, kept, stale, _ = campaign_codes(engine, campaign_id)
        (discount,) = fake.discounts.values()
        del discount.codes[lost.code.casefold()]  # the merchant deleted it in the Shopify admin
        with session_scope(engine) as session:  # voided, and we believed it deactivated: it is not
            row = session.get_one(Code, stale.id)
            row.status, row.sync_status = "voided", "deactivated"
            session.add(row)

        run_reconcile(engine, shop_id)
        await drain(worker)

    assert lost.code.casefold() in discount.codes and kept.code.casefold() in discount.codes
    assert stale.code.casefold() not in discount.codes
    by_id = {c.id: c for c in campaign_codes(engine, campaign_id)}
    assert by_id[lost.id].sync_status == "synced" and by_id[stale.id].sync_status == "deactivated"
    report = last_report(engine, shop_id).details
    figures = report["campaigns"][str(campaign_id)]
    assert (figures["missing"], figures["extra"], figures["unknown"]) == (1, 1, 1)  # unknown: Shopify's first code
    assert report["capacity"]["store_limit"] == 20_000_000 and report["capacity"]["codes_on_platform"] == 4


async def test_the_woocommerce_poll_records_missed_orders_once(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = FakeWooCommerce()
    fake.install(router)
    shop_id = installed(engine, app_settings, "woocommerce", fake.credentials(webhook_secret="s3cret"))
    campaign_id = make_campaign(engine, shop_id, count=2)
    code = campaign_codes(engine, campaign_id)[0].code
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    line = {"id": 1, "code": code.lower(), "discount": "2.00", "discount_tax": "0.00"}
    order = fake.add_order(coupon_lines=[line], date_modified_gmt=now.isoformat())
    fake.add_order(coupon_lines=[], date_modified_gmt=now.isoformat())  # no codes: not stored
    async with worker_for(app_settings, engine) as worker:
        for _ in range(2):  # a second poll finds the same state: nothing new
            run_reconcile(engine, shop_id)
            await drain(worker)
        with session_scope(engine) as session:
            (redemption,) = session.exec(select(Redemption).where(col(Redemption.shop_id) == shop_id)).all()
            assert (redemption.order_id, redemption.amount, redemption.status) == (str(order["id"]), 200, "active")
            events = session.exec(select(WebhookEvent).where(col(WebhookEvent.shop_id) == shop_id)).all()
            assert [(e.topic, e.status) for e in events] == [("poll", "processed")]
        assert last_report(engine, shop_id).details["orders"] == {"orders_with_codes": 1, "new": 0}

        order.update(status="cancelled", date_modified_gmt=(now + timedelta(minutes=5)).isoformat())
        run_reconcile(engine, shop_id)
        await drain(worker)
    with session_scope(engine) as session:
        assert session.exec(select(Redemption.status).where(col(Redemption.shop_id) == shop_id)).all() == ["rolled_back"]


async def test_an_order_whose_webhook_was_refused_for_size_is_recorded_by_the_poll(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    from plugin.store.models import Alert
    from tests.web.test_body_limits import call, running

    fake = FakeWooCommerce()
    fake.install(router)
    shop_id = installed(engine, app_settings, "woocommerce", fake.credentials(webhook_secret="s3cret"))
    campaign_id = make_campaign(engine, shop_id, count=1)
    code = campaign_codes(engine, campaign_id)[0].code
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    order = fake.add_order(coupon_lines=[{"id": 1, "code": code.lower(), "discount": "2.00"}], date_modified_gmt=now.isoformat())
    headers = {
        "X-WC-Webhook-Source": fake.store_url + "/",
        "X-WC-Webhook-Topic": "order.updated",
        "X-WC-Webhook-Delivery-ID": "hash-1",
    }
    async with running(app_settings, engine) as app:  # a large order: refused unread
        answer = await call(app, "POST", "/webhooks/woocommerce", [], headers, declared=6 * 1024 * 1024)
    assert answer.status == 413
    with session_scope(engine) as session:
        (alert,) = session.exec(select(Alert)).all()
        assert (alert.shop_id, alert.kind, alert.details["recent"][0]["delivery_id"]) == (shop_id, "webhook_too_large", "hash-1")
        assert "fetched by the next reconciliation" in alert.message
        assert session.exec(select(func.count()).select_from(WebhookEvent)).one() == 0
    async with worker_for(app_settings, engine) as worker:
        run_reconcile(engine, shop_id)
        await drain(worker)
    with session_scope(engine) as session:
        (redemption,) = session.exec(select(Redemption).where(col(Redemption.shop_id) == shop_id)).all()
        assert redemption.order_id == str(order["id"])


async def test_a_shopify_order_whose_webhook_was_refused_for_size_is_recorded_by_the_poll(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    """Shopify's order webhooks carry no order id in their headers: the poll finds the order by
    its update time, and only orders with a code are fetched whole."""
    from plugin.store.models import Alert
    from tests.web.test_body_limits import call, running

    fake = shopify_fakes.shopify_fake(router)
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_x", scopes=("write_discounts", "read_orders"))
    shop_id = installed(engine, app_settings, "shopify", credentials)
    campaign_id = make_campaign(engine, shop_id, count=1)
    code = campaign_codes(engine, campaign_id)[0].code
    updated = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    fake.orders["gid://shopify/Order/5001"] = shopify_fakes.order_node(5001, codes={code: ["2.00"]}, updated_at=updated)
    fake.orders["gid://shopify/Order/5002"] = shopify_fakes.order_node(5002, codes={}, updated_at=updated)
    headers = {
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Shop-Domain": shopify_fakes.SHOP,
        "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    }
    async with running(app_settings, engine) as app:  # an order with many lines: refused unread
        answer = await call(app, "POST", "/webhooks/shopify", [], headers, declared=6 * 1024 * 1024)
    assert answer.status == 413
    with session_scope(engine) as session:
        (alert,) = session.exec(select(Alert)).all()
        assert (alert.shop_id, alert.kind) == (shop_id, "webhook_too_large")
        assert "fetched by the next reconciliation" in alert.message
    async with worker_for(app_settings, engine) as worker:
        run_reconcile(engine, shop_id)
        await drain(worker)
    with session_scope(engine) as session:
        (redemption,) = session.exec(select(Redemption).where(col(Redemption.shop_id) == shop_id)).all()
        assert (redemption.order_id, redemption.code) == ("5001", code)
    assert last_report(engine, shop_id).details["orders"] == {"orders_with_codes": 1, "new": 1}
    assert [c.operation for c in fake.calls].count("order") == 1  # the order without a code was not fetched


async def test_the_sweep_queues_one_reconcile_per_installed_shop_per_interval(
    engine: Engine, app_settings: Settings, shop_id: int
) -> None:
    woo = FakeWooCommerce()
    other = installed(engine, app_settings, "woocommerce", woo.credentials(webhook_secret="s"))
    gone = installed(engine, app_settings, "woocommerce", FakeWooCommerce("https://gone.example").credentials(webhook_secret="s"))
    with session_scope(engine) as session:
        installs.mark_uninstalled(session, gone, actor="test")
        # the installs' own registrations have run
        session.execute(
            Job.__table__.update()  # type: ignore[attr-defined]
            .where(Job.__table__.c.kind == installs.REGISTER_WEBHOOKS)  # type: ignore[attr-defined]
            .values(status="done", dedupe_key=None)
        )
    async with worker_for(app_settings, engine) as worker:
        assert await reconcile.schedule(worker.ctx) == 2  # the local sandbox shop and the installed store
        assert await reconcile.schedule(worker.ctx) == 0
        off = Worker(JobContext(engine, replace(app_settings, reconcile_interval_hours=0), worker.ctx.http), sweeps=())
        assert await reconcile.schedule(off.ctx) == 0
    with session_scope(engine) as session:
        shops = session.exec(select(Job.shop_id).where(col(Job.kind) == reconcile.RECONCILE).order_by(col(Job.shop_id))).all()
        assert shops == sorted([shop_id, other])
        # the installed store's hooks are registered again (re-enabling any the platform disabled);
        # the sandbox shop has none to keep alive
        registrations = session.exec(
            select(Job.shop_id).where(col(Job.kind) == installs.REGISTER_WEBHOOKS, col(Job.status) == "queued")
        ).all()
        assert registrations == [other]
        # a day later they are due again
        session.execute(
            Job.__table__.update().values(created_at=utcnow() - timedelta(days=1))  # type: ignore[attr-defined]
        )
        assert sorted(reconcile.due_shops(session, interval=timedelta(hours=6), now=utcnow())) == sorted([shop_id, other])
        assert session.exec(select(func.count()).select_from(Job)).one() >= 2


@pytest.mark.parametrize("page", [3, 20_000])
def test_the_comparison_pages_through_our_codes_with_the_same_result(
    engine: Engine, shop_id: int, page: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign is compared page by page (bounded memory, short write transactions); the
    figures and repairs are those of one pass over every code, whatever the page size."""
    monkeypatch.setattr(reconcile, "_PAGE", page)
    campaign_id = make_campaign(engine, shop_id, count=10)
    other_campaign = make_campaign(engine, shop_id, count=2, name="Other")  # never compared
    rows = campaign_codes(engine, campaign_id)
    now = utcnow()
    with session_scope(engine) as session:
        for n, row in enumerate(rows):
            code = session.get_one(Code, row.id)
            code.sync_status = "synced"
            if n in (1, 2):  # voided, yet still on the platform: extra
                code.status = "voided"
            if n == 3:  # expired, still on the platform: extra
                code.expires_at = now - timedelta(hours=1)
            if n == 4:  # waiting for its first push: pending
                code.sync_status = "pending"
            session.add(code)
    untouched = [(c.id, c.sync_status) for c in campaign_codes(engine, other_campaign)]
    lost = {rows[n].code for n in (5, 6, 7)}  # live, synced, gone from the platform: missing
    on_platform = {r.code for r in rows if r.code not in lost} | {"PLACEHOLDER", "SOMEONE-ELSES"}

    with session_scope(engine) as session:  # voided, believed on the platform, absent from its listing
        gone = session.get_one(Code, rows[8].id)
        gone.status = "voided"
        session.add(gone)
    on_platform.discard(rows[8].code)

    figures = reconcile._repair(engine, shop_id, campaign_id, on_platform, now)

    assert figures == {"ours": 10, "on_platform": 8, "missing": 3, "extra": 3, "gone": 1, "pending": 1, "unknown": 2}
    statuses = {c.code: c.sync_status for c in campaign_codes(engine, campaign_id)}
    assert {c for c, s in statuses.items() if s == "pending"} == lost | {rows[4].code}
    assert statuses[rows[8].code] == "deactivated"  # the full listing confirms it is gone
    assert [(c.id, c.sync_status) for c in campaign_codes(engine, other_campaign)] == untouched


# --- repairs in both directions, recorded, alerted ---------------------------------------------


def open_alerts(engine: Engine, shop_id: int) -> dict[str, Alert]:
    with session_scope(engine) as session:
        alerts = session.exec(select(Alert).where(col(Alert.shop_id) == shop_id, col(Alert.open_key).is_not(None))).all()
        for alert in alerts:
            session.expunge(alert)
        return {a.kind: a for a in alerts}


async def test_a_code_deactivated_on_the_sandbox_behind_our_back_is_live_again_after_one_run(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    """The bug: the push answered `existing` for the deactivated code, which was marked synced
    but stayed inactive, and every run reported it missing again. Now the first run makes it
    live at the sandbox's checkout, and the second finds nothing to repair."""
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=3)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    lost, kept, leaked = campaign_codes(engine, campaign_id)
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=())
        await drain(worker)
        with session_scope(engine) as session:  # the merchant deactivates one in the sandbox admin
            session.execute(update(SandboxCode).where(col(SandboxCode.code_key) == lost.code).values(active=False))
            row = session.get_one(Code, leaked.id)  # and we voided one whose removal never ran
            row.status = "voided"
            session.add(row)
        for _ in range(2):
            run_reconcile(engine, shop_id)
            await drain(worker)
            if _ == 0:
                first = last_report(engine, shop_id).details["campaigns"][str(campaign_id)]
        second = last_report(engine, shop_id).details["campaigns"][str(campaign_id)]
    assert (first["missing"], first["extra"]) == (1, 1)
    assert first["repaired"] == {"pushed": 1, "push_failed": 0, "deactivated": 1, "unconfirmed": 0}
    assert (second["missing"], second["extra"], second["gone"]) == (0, 0, 0)
    held = platform_codes(engine)
    assert held[lost.code].active and held[kept.code].active and not held[leaked.code].active
    with session_scope(engine) as session:  # the sandbox's checkout takes it again
        store.place_order(session, SHOP, codes=[lost.code], subtotal=5000)
        with pytest.raises(store.SandboxError):
            store.place_order(session, SHOP, codes=[leaked.code], subtotal=5000)
    statuses = {c.id: c.sync_status for c in campaign_codes(engine, campaign_id)}
    assert (statuses[lost.id], statuses[leaked.id]) == ("synced", "deactivated")
    assert open_alerts(engine, shop_id) == {}


async def test_a_code_deleted_on_shopify_behind_our_back_is_added_again_and_not_missing_twice(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = shopify_fakes.shopify_fake(router)
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_x", scopes=("write_discounts", "read_orders"))
    shop_id = installed(engine, app_settings, "shopify", credentials)
    campaign_id = make_campaign(engine, shop_id, count=3)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        lost = campaign_codes(engine, campaign_id)[0]
        (discount,) = fake.discounts.values()
        del discount.codes[lost.code.casefold()]
        reports = []
        for _ in range(2):
            run_reconcile(engine, shop_id)
            await drain(worker)
            reports.append(last_report(engine, shop_id).details["campaigns"][str(campaign_id)])
    assert lost.code.casefold() in discount.codes
    assert (reports[0]["missing"], reports[0]["repaired"]["pushed"]) == (1, 1)
    assert (reports[1]["missing"], reports[1]["extra"]) == (0, 0)


async def test_a_removal_shopify_does_not_confirm_is_left_synced_alerted_and_retried(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    """Voided with us, still listed on Shopify, but its search finds nothing: never marked
    deactivated; the run reports it unconfirmed and opens `reconcile_failed`; once Shopify
    confirms the removal, the next run resolves the alert."""
    fake = shopify_fakes.shopify_fake(router)
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_x", scopes=("write_discounts", "read_orders"))
    shop_id = installed(engine, app_settings, "shopify", credentials)
    campaign_id = make_campaign(engine, shop_id, count=2)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        leaked = campaign_codes(engine, campaign_id)[0]
        with session_scope(engine) as session:
            row = session.get_one(Code, leaked.id)
            row.status, row.sync_status = "voided", "deactivated"  # believed gone: it is not
            row.platform_id = None  # pushed before ids were kept: its removal needs the search
            session.add(row)
        fake.search_blind = True
        run_reconcile(engine, shop_id)
        await drain(worker)
        report = last_report(engine, shop_id).details["campaigns"][str(campaign_id)]
        assert report["repaired"]["unconfirmed"] == 1 and report["repaired"]["deactivated"] == 0
        (discount,) = fake.discounts.values()
        assert leaked.code.casefold() in discount.codes
        (row,) = [c for c in campaign_codes(engine, campaign_id) if c.id == leaked.id]
        assert row.sync_status == "synced" and "unconfirmed" in (row.sync_error or "")
        alert = open_alerts(engine, shop_id)["reconcile_failed"]
        assert alert.details["campaigns"][str(campaign_id)]["unconfirmed"] == 1
        run_reconcile(engine, shop_id)  # still blind: the same alert counts a second sighting
        await drain(worker)
        assert open_alerts(engine, shop_id)["reconcile_failed"].count == 2

        fake.search_blind = False
        run_reconcile(engine, shop_id)
        await drain(worker)
    assert leaked.code.casefold() not in discount.codes
    assert [c.sync_status for c in campaign_codes(engine, campaign_id) if c.id == leaked.id] == ["deactivated"]
    assert "reconcile_failed" not in open_alerts(engine, shop_id)


async def test_the_deactivate_job_retries_codes_whose_removal_is_unconfirmed(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = shopify_fakes.shopify_fake(router)
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_x", scopes=("write_discounts", "read_orders"))
    shop_id = installed(engine, app_settings, "shopify", credentials)
    campaign_id = make_campaign(engine, shop_id, count=2)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        leaked = campaign_codes(engine, campaign_id)[0]
        fake.search_blind = True
        with session_scope(engine) as session:
            row = session.get_one(Code, leaked.id)
            row.status = "voided"
            row.platform_id = None  # pushed before ids were kept: its removal needs the search
            session.add(row)
            job_id = sync.enqueue_deactivate(session, shop_id=shop_id, campaign_id=campaign_id)
        assert await worker.run_once()
        with session_scope(engine) as session:
            job = session.get_one(Job, job_id)
            assert job.status == "queued" and "not confirmed" in (job.last_error or "")
            assert session.get_one(Code, leaked.id).sync_status == "synced"
        fake.search_blind = False
        await drain(worker)
    assert [c.sync_status for c in campaign_codes(engine, campaign_id) if c.id == leaked.id] == ["deactivated"]


async def test_a_platform_that_cannot_be_reached_leaves_the_repairs_queued_and_alerted(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    """The listing works, the re-add answers 5xx on every attempt: the report says so, the
    `reconcile_failed` alert opens, and the push job is queued to retry the repair."""
    fake = shopify_fakes.shopify_fake(router)
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_x", scopes=("write_discounts", "read_orders"))
    shop_id = installed(engine, app_settings, "shopify", credentials)
    campaign_id = make_campaign(engine, shop_id, count=2)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        lost = campaign_codes(engine, campaign_id)[0]
        (discount,) = fake.discounts.values()
        del discount.codes[lost.code.casefold()]
        real = fake.route.side_effect

        def down_for_adds(request: httpx.Request) -> httpx.Response:
            if b"discountRedeemCodeBulkAdd" in request.content:
                return httpx.Response(503, json={"errors": "Service unavailable"})
            return real(request)  # type: ignore[misc,operator,no-any-return]

        fake.route.side_effect = down_for_adds
        with session_scope(engine) as session:
            assert reconcile.enqueue(session, shop_id) is not None
        job_ids = []
        while await worker.run_once():  # the reconcile job only: what it queued stays queued
            with session_scope(engine) as session:
                job_ids = list(session.exec(select(Job.kind).where(col(Job.status) == "queued")).all())
            if sync.PUSH in job_ids:
                break
        report = last_report(engine, shop_id).details["campaigns"][str(campaign_id)]
        assert "Service unavailable" in report["repaired"]["error"] or "503" in report["repaired"]["error"]
        assert "reconcile_failed" in open_alerts(engine, shop_id)
        assert sync.PUSH in job_ids
        fake.route.side_effect = real
        await drain(worker)  # the queued push repairs it; the next run resolves the alert
        run_reconcile(engine, shop_id)
        await drain(worker)
    assert lost.code.casefold() in discount.codes
    assert open_alerts(engine, shop_id) == {}


async def test_shopify_capacity_past_the_threshold_opens_an_alert_resolved_when_under_it(
    engine: Engine, app_settings: Settings, router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.shopify import ShopifyConnector

    fake = shopify_fakes.shopify_fake(router)
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_x", scopes=("write_discounts", "read_orders"))
    shop_id = installed(engine, app_settings, "shopify", credentials)
    campaign_id = make_campaign(engine, shop_id, count=3)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    monkeypatch.setattr(ShopifyConnector, "MAX_CODES_PER_STORE", 5)  # 4 codes held (3 + the marker): 80 %
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        run_reconcile(engine, shop_id)
        await drain(worker)
        alert = open_alerts(engine, shop_id)["platform_capacity"]
        assert (alert.details["codes_on_platform"], alert.details["store_limit"]) == (4, 5)
        assert "4 of the platform's 5 codes (80%)" in alert.message
        assert last_report(engine, shop_id).details["capacity"]["used"] == 0.8  # the audit row too
        (discount,) = fake.discounts.values()
        for code in campaign_codes(engine, campaign_id)[:2]:  # ended with us, removed by the next run
            with session_scope(engine) as session:
                row = session.get_one(Code, code.id)
                row.status = "voided"
                session.add(row)
        run_reconcile(engine, shop_id)
        await drain(worker)
        run_reconcile(engine, shop_id)  # 2 of 5 now
        await drain(worker)
    assert len(discount.codes) == 2
    assert "platform_capacity" not in open_alerts(engine, shop_id)
    with session_scope(engine) as session:
        (resolved,) = session.exec(select(Alert).where(col(Alert.kind) == "platform_capacity")).all()
        assert resolved.resolved_at is not None


async def test_woocommerce_drift_is_repaired_both_ways_in_one_run(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    """A coupon deleted in the WordPress admin is created again, a voided code still there is
    deleted; the second run finds nothing to repair."""
    fake = FakeWooCommerce()
    fake.install(router)
    shop_id = installed(engine, app_settings, "woocommerce", fake.credentials(webhook_secret="s3cret"))
    campaign_id = make_campaign(engine, shop_id, count=3)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        lost, kept, leaked = campaign_codes(engine, campaign_id)
        coupon = fake.coupon_by_code(lost.code)
        assert coupon is not None
        del fake.coupons[coupon["id"]]
        with session_scope(engine) as session:
            row = session.get_one(Code, leaked.id)
            row.status = "voided"
            session.add(row)
        reports = []
        for _ in range(2):
            run_reconcile(engine, shop_id)
            await drain(worker)
            reports.append(last_report(engine, shop_id).details["campaigns"][str(campaign_id)])
    assert fake.coupon_by_code(lost.code) is not None and fake.coupon_by_code(kept.code) is not None
    assert fake.coupon_by_code(leaked.code) is None
    assert reports[0]["repaired"] == {"pushed": 1, "push_failed": 0, "deactivated": 1, "unconfirmed": 0}
    assert (reports[1]["missing"], reports[1]["extra"], reports[1]["gone"]) == (0, 0, 0)
    assert open_alerts(engine, shop_id) == {}


def test_the_capacity_threshold_is_read_from_the_environment_and_0_turns_the_alert_off(
    engine: Engine, shop_id: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).platform_capacity_alert == 0.8
    assert Settings.from_env({"COUPONRY_PLATFORM_CAPACITY_ALERT": "0.5"}).platform_capacity_alert == 0.5
    full = {"campaigns": {}, "capacity": {"codes_on_platform": 20_000_000, "store_limit": 20_000_000, "used": 1.0}}
    reconcile._alerts(engine, shop_id, full, 0, utcnow())
    assert open_alerts(engine, shop_id) == {}
    reconcile._alerts(engine, shop_id, full, 0.8, utcnow())
    assert set(open_alerts(engine, shop_id)) == {"platform_capacity"}


async def test_a_discount_deleted_on_shopify_is_alerted_and_the_other_campaigns_still_reconciled(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake = shopify_fakes.shopify_fake(router)
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_x", scopes=("write_discounts", "read_orders"))
    shop_id = installed(engine, app_settings, "shopify", credentials)
    deleted, other = make_campaign(engine, shop_id, count=1), make_campaign(engine, shop_id, count=1, name="Other")
    with session_scope(engine) as session:
        for campaign_id in (deleted, other):
            sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        with session_scope(engine) as session:
            gid = session.get_one(Campaign, deleted).platform_discount_id
        del fake.discounts[str(gid)]  # the merchant deleted the whole discount
        run_reconcile(engine, shop_id)
        await drain(worker)
    report = last_report(engine, shop_id).details["campaigns"]
    assert "listing the platform's codes" in report[str(deleted)]["repaired"]["error"]
    assert report[str(other)]["missing"] == 0
    alert = open_alerts(engine, shop_id)["reconcile_failed"]
    assert list(alert.details["campaigns"]) == [str(deleted)]
