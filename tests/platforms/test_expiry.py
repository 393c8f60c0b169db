"""Relative expiry and extensions reach the platforms (issue #13): a code's end where the
platform holds one per code (WooCommerce, the sandbox), the expiry sweep's deactivation where it
holds one per discount (Shopify); faults end in the same state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import Engine, update
from sqlmodel import col, select
from tenacity import wait_none

from connectors import woocommerce
from connectors.base import Credentials
from plugin.campaigns.codeends import ENDS
from plugin.codes import percode
from plugin.distribution import claims as distribution
from plugin.jobs.worker import Worker
from plugin.platforms import expiry, installs, sync
from plugin.reconciliation import reconcile
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.jobstore import aware
from plugin.store.models import Batch, Code, CodeEndChange, Job, utcnow
from tests.connectors.fakes import shopify as shopify_fakes
from tests.connectors.fakes.woocommerce import FakeWooCommerce
from tests.ingest import SHOP, campaign_codes, make_campaign, running_app, sandbox_settings
from tests.platforms.test_sync import drain, platform_codes
from tests.reconciliation.test_reconcile import last_report

pytestmark = pytest.mark.anyio

DAYS = 7
CLAIM_RULES: dict[str, Any] = {
    "discount": {"type": "percentage", "percent": "10"},
    "time": {"relative_expiry": {"after": "assignment", "duration": DAYS, "unit": "days"}},
}
ISSUE_RULES: dict[str, Any] = {
    "discount": {"type": "percentage", "percent": "10"},
    "time": {"relative_expiry": {"after": "issue", "duration": 1, "unit": "hours"}},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def app_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr(woocommerce, "wait_retry_after", wait_none)  # no real sleeping between attempts
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


def claim(engine: Engine, shop_id: int, campaign_id: int, who: str, now: datetime) -> tuple[str, list[str]]:
    """A recipient claims a code; the code and the kinds of the jobs queued with the claim."""
    with session_scope(engine) as session:
        before = set(session.exec(select(Job.id)).all())
        claimed = distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=who, now=now)
        session.flush()
        kinds = [j.kind for j in session.exec(select(Job)).all() if j.id not in before]
    return claimed.code, kinds


def _gmt(moment: datetime) -> str:
    return aware(moment).replace(tzinfo=None).isoformat(timespec="seconds")


def batch_bodies(fake: FakeWooCommerce) -> list[dict[str, Any]]:
    return [json.loads(r.content) for r in fake.requests if r.url.path.endswith("/coupons/batch")]


async def woo_campaign(
    engine: Engine, settings: Settings, router: respx.MockRouter, count: int = 3
) -> tuple[FakeWooCommerce, int, int]:
    fake = FakeWooCommerce()
    fake.install(router)
    shop_id = installed(engine, settings, "woocommerce", fake.credentials(webhook_secret="s3cret"))
    campaign_id = make_campaign(engine, shop_id, count=count, rules=CLAIM_RULES)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(settings, engine) as worker:
        await drain(worker)
    fake.requests.clear()
    return fake, shop_id, campaign_id


async def test_a_claimed_codes_coupon_gets_the_claim_plus_n_days(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake, shop_id, campaign_id = await woo_campaign(engine, app_settings, router)
    assert all(c.get("date_expires_gmt") is None for c in fake.coupons.values())  # unclaimed: no end yet
    now = utcnow()
    code, queued = claim(engine, shop_id, campaign_id, "ann@example.com", now)
    assert queued == [ENDS]  # the end's job, in the claim's transaction
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    coupon = fake.coupon_by_code(code)
    assert coupon is not None and coupon["date_expires_gmt"] == _gmt(now + timedelta(days=DAYS))
    # one batched update by the coupon id the push stored: no lookup by code
    (row,) = [c for c in campaign_codes(engine, campaign_id) if c.code == code]
    assert batch_bodies(fake) == [
        {"update": [{"id": int(row.platform_id or 0), "date_expires": _gmt(now + timedelta(days=DAYS)) + "Z"}]}
    ]
    assert not [r for r in fake.requests if r.method == "GET"]
    assert (row.sync_status, row.sync_error) == ("synced", None)
    others = [c for c in fake.coupons.values() if c["code"] != coupon["code"]]
    assert others and all(c.get("date_expires_gmt") is None for c in others)
    with session_scope(engine) as session:
        assert session.exec(select(CodeEndChange)).all() == []


def lose_answer(fake: FakeWooCommerce) -> None:
    """The next batch is applied by WooCommerce, but its answer never arrives."""
    route = fake.routes["batch"]
    applied = route.side_effect

    def once(request: httpx.Request) -> httpx.Response:
        route.side_effect = applied
        applied(request)  # type: ignore[operator]
        raise httpx.ReadTimeout("the answer was lost", request=request)

    route.side_effect = once


FAULTS: dict[str, Any] = {
    "5xx": lambda fake: fake.script("batch", *[httpx.Response(503, json={"code": "down", "message": "busy"})] * 5),
    "429": lambda fake: fake.script("batch", *[httpx.Response(429, headers={"Retry-After": "0"}, json={})] * 5),
    "timeout": lambda fake: fake.script("batch", *[httpx.ReadTimeout("slow")] * 5),
    "lost answer": lose_answer,
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_claims_end_survives_faults(engine: Engine, app_settings: Settings, router: respx.MockRouter, fault: str) -> None:
    fake, shop_id, campaign_id = await woo_campaign(engine, app_settings, router)
    now = utcnow()
    code, _ = claim(engine, shop_id, campaign_id, "bo@example.com", now)
    FAULTS[fault](fake)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    coupon = fake.coupon_by_code(code)
    assert coupon is not None and coupon["date_expires_gmt"] == _gmt(now + timedelta(days=DAYS))
    assert len(fake.coupons) == 3  # updated in place, never created twice
    (row,) = [c for c in campaign_codes(engine, campaign_id) if c.code == code]
    assert (row.sync_status, row.sync_error) == ("synced", None)
    with session_scope(engine) as session:
        assert session.exec(select(CodeEndChange)).all() == []
        assert set(session.exec(select(Job.status)).all()) == {"done"}


async def test_an_extension_updates_a_held_coupon_and_recreates_a_deleted_one(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake, shop_id, campaign_id = await woo_campaign(engine, app_settings, router)
    held, lapsed, _ = campaign_codes(engine, campaign_id)
    with session_scope(engine) as session:  # one code lapsed and the sync took it off WooCommerce
        session.execute(update(Code).where(col(Code.id) == lapsed.id).values(expires_at=utcnow() - timedelta(hours=1)))
        sync.enqueue_deactivate(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        assert fake.coupon_by_code(lapsed.code) is None
        later = (utcnow() + timedelta(days=30)).replace(microsecond=0)
        with session_scope(engine) as session:
            for code in (held.code, lapsed.code):
                percode.extend(session, shop_id=shop_id, typed=code, expires_at=later, actor="test", now=utcnow())
        await drain(worker)
    for code in (held.code, lapsed.code):
        coupon = fake.coupon_by_code(code)
        assert coupon is not None and coupon["date_expires_gmt"] == _gmt(later)
    assert {c.code: c.sync_status for c in campaign_codes(engine, campaign_id)}[lapsed.code] == "synced"


async def test_a_coupon_deleted_on_woocommerce_is_pushed_again_with_its_end(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake, shop_id, campaign_id = await woo_campaign(engine, app_settings, router)
    now = utcnow()
    code, _ = claim(engine, shop_id, campaign_id, "cy@example.com", now)
    coupon = fake.coupon_by_code(code)
    assert coupon is not None
    del fake.coupons[coupon["id"]]  # deleted in the WordPress admin meanwhile
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    again = fake.coupon_by_code(code)
    assert again is not None and again["date_expires_gmt"] == _gmt(now + timedelta(days=DAYS))
    (row,) = [c for c in campaign_codes(engine, campaign_id) if c.code == code]
    assert row.sync_status == "synced" and row.platform_id == str(again["id"])


# --- Shopify: one end per discount, so the sweep takes expired codes off ------------------------


async def shopify_campaign(
    engine: Engine, settings: Settings, router: respx.MockRouter, rules: dict[str, Any], count: int = 3
) -> tuple[shopify_fakes.ShopifyFake, int, int]:
    from connectors.shopify import ShopifyConnector

    ShopifyConnector.RETRY_WAIT = wait_none()  # type: ignore[misc]
    fake = shopify_fakes.shopify_fake(router)
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_x", scopes=("write_discounts", "read_orders"))
    shop_id = installed(engine, settings, "shopify", credentials)
    campaign_id = make_campaign(engine, shop_id, count=count, rules=rules)
    return fake, shop_id, campaign_id


async def sweep(settings: Settings, engine: Engine, sweeper: expiry.ExpirySweep | None = None) -> int:
    async with httpx.AsyncClient() as http:
        return await (sweeper or expiry.ExpirySweep())(JobContext(engine, settings, http))


async def test_shopify_a_claimed_code_past_its_end_is_deleted_by_the_sweeps_job_and_added_again_when_extended(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake, shop_id, campaign_id = await shopify_campaign(engine, app_settings, router, CLAIM_RULES)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        (discount,) = fake.discounts.values()
        expired, _ = claim(engine, shop_id, campaign_id, "ann@example.com", utcnow() - timedelta(days=DAYS + 1))
        fresh, queued = claim(engine, shop_id, campaign_id, "bo@example.com", utcnow())
        assert queued == []  # Shopify holds no end per code: nothing to send
        sweeper = expiry.ExpirySweep()
        assert await sweep(app_settings, engine, sweeper) == 1
        await drain(worker)
        assert await sweep(app_settings, engine, sweeper) == 0  # not due again within its interval
        assert expired.casefold() not in discount.codes and fresh.casefold() in discount.codes
        states = {c.code: c.sync_status for c in campaign_codes(engine, campaign_id)}
        assert states[expired] == "deactivated" and states[fresh] == "synced"
        with session_scope(engine) as session:  # extended: added again
            later = utcnow() + timedelta(days=3)
            percode.extend(session, shop_id=shop_id, typed=expired, expires_at=later, actor="test", now=utcnow())
        await drain(worker)
    assert expired.casefold() in discount.codes
    assert {c.code: c.sync_status for c in campaign_codes(engine, campaign_id)}[expired] == "synced"


async def test_shopify_codes_past_their_end_from_issue_are_deleted_and_stay_off(
    engine: Engine, app_settings: Settings, router: respx.MockRouter
) -> None:
    fake, shop_id, campaign_id = await shopify_campaign(engine, app_settings, router, ISSUE_RULES)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
        (discount,) = fake.discounts.values()
        assert len(discount.codes) >= 3
        with session_scope(engine) as session:  # two hours pass: the codes' hour from issue is over
            earlier = utcnow() - timedelta(hours=2)
            session.execute(update(Code).where(col(Code.campaign_id) == campaign_id).values(created_at=earlier))
            session.execute(
                update(Batch).where(col(Batch.campaign_id) == campaign_id).values(created_at=earlier, finished_at=earlier)
            )
        assert await sweep(app_settings, engine) == 1
        await drain(worker)
        rows = campaign_codes(engine, campaign_id)
        assert {c.sync_status for c in rows} == {"deactivated"}
        assert not any(c.code.casefold() in discount.codes for c in rows)
        # reconciliation agrees: they are expired (from issue), not missing
        with session_scope(engine) as session:
            reconcile.enqueue(session, shop_id)
        await drain(worker)
    assert not any(c.code.casefold() in discount.codes for c in rows)
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"deactivated"}
    report = last_report(engine, shop_id).details["campaigns"][str(campaign_id)]
    assert (report["missing"], report["repaired"]["pushed"]) == (0, 0)


# --- the sandbox: it holds an end per code -----------------------------------------------------


async def test_the_sandbox_refuses_a_code_past_its_end_from_issue_and_from_claim(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=3, rules=ISSUE_RULES)
    claims = make_campaign(engine, shop_id, count=2, rules=CLAIM_RULES, name="Claims")
    with session_scope(engine) as session:  # issued two hours ago: the hour from issue is over
        earlier = utcnow() - timedelta(hours=2)
        session.execute(update(Code).where(col(Code.campaign_id) == campaign_id).values(created_at=earlier))
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=claims)
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=())
        await drain(worker)
        now = utcnow()
        claimed, queued = claim(engine, shop_id, claims, "ann@example.com", now)
        assert queued == [ENDS]
        await drain(worker)
        assert await sweep(settings, engine) == 0  # the sandbox refuses by the ends it holds
        headers = {"X-Sandbox-Shop": SHOP, "X-Sandbox-Access-Token": _token(settings)}
        first = campaign_codes(engine, campaign_id)[0].code
        refused = await client.post("/sandbox/api/orders", json={"codes": [first], "subtotal": "50.00"}, headers=headers)
        taken = await client.post("/sandbox/api/orders", json={"codes": [claimed], "subtotal": "50.00"}, headers=headers)
    assert refused.status_code == 422 and "expired" in refused.json()["error"]
    assert taken.status_code == 201
    held = platform_codes(engine)
    stated = held[claimed].expires_at
    assert stated is not None and abs(aware(stated) - (now + timedelta(days=DAYS))) < timedelta(seconds=1)
    assert held[first].active  # refused by its end, not taken off


def _token(settings: Settings) -> str:
    from plugin import shared_secrets as keys

    return keys.access_token(settings, SHOP)
