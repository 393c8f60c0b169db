"""Pushing a campaign to Shopify exactly once under faults: the discount's first code (its
marker) is stored before the first create, so a create whose answer was lost is found again
on Shopify instead of leaving a second, orphan discount behind."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import Engine, update
from sqlmodel import col, select
from tenacity import wait_none

from connectors.base import REMOVAL_UNCONFIRMED, Credentials
from connectors.shopify import ShopifyConnector
from plugin.campaigns.campaigns import change_status
from plugin.campaigns.lookup import campaign_format
from plugin.codes import percode
from plugin.formats import codes
from plugin.jobs.worker import Worker
from plugin.platforms import installs, sync
from plugin.settings import Settings
from plugin.store import outbox, ratestate
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import Campaign, Code, Job, utcnow
from tests.connectors.fakes import shopify as shopify_fakes
from tests.connectors.fakes.shopify import ShopifyFake
from tests.ingest import campaign_codes, make_campaign
from tests.platforms.test_sync import drain

pytestmark = pytest.mark.anyio

CODES = 250  # three pushes of up to 100


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def fake(router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch) -> ShopifyFake:
    monkeypatch.setattr(ShopifyConnector, "RETRY_WAIT", wait_none())  # no backoff between attempts
    monkeypatch.setattr(ShopifyConnector, "POLL_INTERVAL", 0.0)
    return shopify_fakes.shopify_fake(router)


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    config = {"shopify": {"client_id": "api-key", "client_secret": "hush"}}
    return replace(settings, public_url="https://app.test", sandbox_enabled=False, connector_config=config)


@asynccontextmanager
async def worker_for(settings: Settings, engine: Engine) -> AsyncIterator[Worker]:
    async with httpx.AsyncClient() as http:
        yield Worker(JobContext(engine, settings, http), sweeps=())


async def shopify_campaign(engine: Engine, settings: Settings, fake: ShopifyFake) -> int:
    """An installed Shopify shop (its webhook registration done) and a campaign whose push is
    queued; the fake's calls so far are forgotten."""
    credentials = Credentials(shop_domain=shopify_fakes.SHOP, access_token="shpat_x", scopes=("write_discounts", "read_orders"))
    with session_scope(engine) as session:
        shop = installs.save_install(session, settings, platform="shopify", credentials=credentials)
        assert shop.id is not None
        shop_id = shop.id
    async with worker_for(settings, engine) as worker:
        await drain(worker)
    fake.calls.clear()
    campaign_id = make_campaign(engine, shop_id, count=CODES)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    return campaign_id


def campaign(engine: Engine, campaign_id: int) -> Campaign:
    with session_scope(engine) as session:
        return session.get_one(Campaign, campaign_id)


def assert_one_discount_holding_every_code(engine: Engine, fake: ShopifyFake, campaign_id: int) -> None:
    (discount,) = fake.discounts.values()  # exactly one: no orphan
    stored = campaign(engine, campaign_id)
    assert stored.platform_discount_id == discount.id
    assert stored.platform_discount_marker and stored.platform_discount_marker.casefold() in discount.codes
    fmt = campaign_format(stored)
    rows = campaign_codes(engine, campaign_id)
    assert all(r.sync_status == "synced" for r in rows)
    assert {codes.display(fmt, r.code).casefold() for r in rows} | {stored.platform_discount_marker.casefold()} == set(
        discount.codes
    )


@pytest.mark.parametrize("lost", [httpx.Response(502, text="Bad Gateway"), httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_a_lost_create_answer_leaves_one_discount_holding_every_code(
    engine: Engine, app_settings: Settings, fake: ShopifyFake, lost: httpx.Response | type[httpx.TransportError]
) -> None:
    campaign_id = await shopify_campaign(engine, app_settings, fake)
    fake.lose_answer(lost)  # Shopify commits discountCodeBasicCreate; its answer never reaches us
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    assert_one_discount_holding_every_code(engine, fake, campaign_id)
    operations = [c.operation for c in fake.calls]
    assert operations[:3] == ["discountCodeBasicCreate", "codeDiscountNodeByCode", "discountRedeemCodeBulkAdd"]
    assert operations.count("discountCodeBasicCreate") == 1


async def test_a_job_that_dies_after_the_create_committed_adopts_it_on_its_next_run(
    engine: Engine, app_settings: Settings, fake: ShopifyFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id = await shopify_campaign(engine, app_settings, fake)
    monkeypatch.setattr(ShopifyConnector, "MAX_ATTEMPTS", 1)  # the connector gives up at once: the job fails
    fake.lose_answer(httpx.Response(502, text="Bad Gateway"))  # ... after the create committed, unheard
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    assert_one_discount_holding_every_code(engine, fake, campaign_id)
    operations = [c.operation for c in fake.calls]
    # run 1: the create (lost); run 2: the same marker is refused as taken, and its discount adopted
    assert operations[:3] == ["discountCodeBasicCreate", "discountCodeBasicCreate", "codeDiscountNodeByCode"]
    marker = campaign(engine, campaign_id).platform_discount_marker
    assert {c.variables["discount"]["code"] for c in fake.calls[:2]} == {marker}
    with session_scope(engine) as session:
        job = session.exec(select(Job).where(col(Job.kind) == sync.PUSH)).one()
        assert (job.status, job.attempts) == ("done", 2)


async def test_the_marker_is_stored_before_the_first_create(engine: Engine, app_settings: Settings, fake: ShopifyFake) -> None:
    campaign_id = await shopify_campaign(engine, app_settings, fake)
    assert campaign(engine, campaign_id).platform_discount_marker is None
    seen: list[tuple[str, str | None]] = []

    def refuse_but_look(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)["variables"]["discount"]["code"]
        seen.append((sent, campaign(engine, campaign_id).platform_discount_marker))
        return httpx.Response(503, text="Service Unavailable")

    fake.script(refuse_but_look)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    ((sent, stored_then),) = seen
    assert sent == stored_then == campaign(engine, campaign_id).platform_discount_marker
    assert_one_discount_holding_every_code(engine, fake, campaign_id)


@pytest.mark.parametrize("bucket", ["per job (before)", "one per shop"])
async def test_two_concurrent_push_jobs_of_a_shop_share_its_cost_bucket(
    engine: Engine, app_settings: Settings, router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch, bucket: str
) -> None:
    monkeypatch.setattr(ShopifyConnector, "RETRY_WAIT", wait_none())
    monkeypatch.setattr(ShopifyConnector, "POLL_INTERVAL", 0.0)
    if bucket == "per job (before)":  # each job's connector builds its own bucket, as before
        monkeypatch.setattr(ratestate, "shopify_bucket", lambda *args: None)
    # Shopify's bucket in real time: 300 points, 600 a second (each job needs 10 + 3 x (10 + 1 + 203))
    fake = shopify_fakes.shopify_fake(router, maximum=300, restore_rate=600, clock=time.time)
    first = await shopify_campaign(engine, app_settings, fake)
    with session_scope(engine) as session:
        second = make_campaign(engine, campaign(engine, first).shop_id, count=CODES, name="Second")
        sync.enqueue_push(session, shop_id=campaign(engine, first).shop_id, campaign_id=second)
    jobs = outbox.claim(engine, "test-worker", timedelta(minutes=5), limit=2)
    assert len(jobs) == 2
    async with httpx.AsyncClient() as http:
        ctx = JobContext(engine, app_settings, http)
        outcomes = await asyncio.gather(*(sync.handle_push(ctx, job) for job in jobs), return_exceptions=True)
    if bucket == "per job (before)":  # each job spends points the other already spent
        assert fake.throttled > 0
        return
    assert outcomes == [None, None] and fake.throttled == 0
    assert len(fake.discounts) == 2
    assert all(r.sync_status == "synced" for c in (first, second) for r in campaign_codes(engine, c))


# --- per-code work by the stored redeem-code id ---------------------------------------------------


async def pushed_campaign(engine: Engine, settings: Settings, fake: ShopifyFake) -> int:
    campaign_id = await shopify_campaign(engine, settings, fake)
    async with worker_for(settings, engine) as worker:
        await drain(worker)
    fake.calls.clear()
    return campaign_id


def void_codes(engine: Engine, campaign_id: int, rows: list[Code]) -> None:
    with session_scope(engine) as session:
        for row in rows:
            percode.void(session, shop_id=row.shop_id, typed=row.code, actor="test", now=utcnow())


def held_ids(fake: ShopifyFake) -> set[str]:
    return {node["id"] for discount in fake.discounts.values() for node in discount.codes.values()}


async def test_every_pushed_code_keeps_its_redeem_code_id(engine: Engine, app_settings: Settings, fake: ShopifyFake) -> None:
    campaign_id = await pushed_campaign(engine, app_settings, fake)
    (discount,) = fake.discounts.values()
    fmt = campaign_format(campaign(engine, campaign_id))
    rows = campaign_codes(engine, campaign_id)
    assert [r.platform_id for r in rows] == [discount.codes[codes.display(fmt, r.code).casefold()]["id"] for r in rows]


async def test_the_ids_read_whose_answer_was_lost_is_read_again(
    engine: Engine, app_settings: Settings, fake: ShopifyFake
) -> None:
    campaign_id = await shopify_campaign(engine, app_settings, fake)
    handle = fake._handle  # Shopify carries the request out ...
    lost: list[httpx.Response] = []

    def lose_the_first_ids_answer(request: httpx.Request) -> httpx.Response:
        answer = handle(request)
        if "CouponryBulkCreationIds" in request.content.decode() and not lost:
            lost.append(answer)
            return httpx.Response(502, text="Bad Gateway")
        return answer

    fake.route.side_effect = lose_the_first_ids_answer
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    assert lost and all(r.sync_status == "synced" and r.platform_id for r in campaign_codes(engine, campaign_id))
    assert [c.operation for c in fake.calls].count("discountRedeemCodeBulkAdd") == 3  # nothing added twice


async def test_voided_codes_are_deleted_by_their_stored_id_without_a_search(
    engine: Engine, app_settings: Settings, fake: ShopifyFake
) -> None:
    campaign_id = await pushed_campaign(engine, app_settings, fake)
    rows = campaign_codes(engine, campaign_id)
    void_codes(engine, campaign_id, rows[:3])
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    assert [c.operation for c in fake.calls] == ["discountCodeRedeemCodeBulkDelete", "job"]  # no codes(query:) search
    assert fake.calls[0].variables["ids"] == [r.platform_id for r in rows[:3]]
    after = campaign_codes(engine, campaign_id)
    assert [r.sync_status for r in after[:4]] == ["deactivated"] * 3 + ["synced"]
    assert [r.platform_id for r in after[:3]] == [r.platform_id for r in rows[:3]]  # the id is kept
    assert not {r.platform_id for r in rows[:3]} & held_ids(fake) and rows[3].platform_id in held_ids(fake)


async def test_a_code_without_a_stored_id_is_searched_and_a_miss_is_never_done(
    engine: Engine, app_settings: Settings, fake: ShopifyFake
) -> None:
    campaign_id = await pushed_campaign(engine, app_settings, fake)
    rows = campaign_codes(engine, campaign_id)
    with session_scope(engine) as session:  # pushed before ids were kept
        session.execute(update(Code).where(col(Code.id) == rows[0].id).values(platform_id=None))
    void_codes(engine, campaign_id, rows[:2])
    fake.search_blind = True  # the search's index lags: it finds nothing
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)  # tried again and again, never done, then dead-lettered in sight
    with session_scope(engine) as session:
        job = session.exec(select(Job).where(col(Job.kind) == sync.DEACTIVATE)).one()
        assert (job.status, job.attempts) == ("dead", outbox.DEFAULT_MAX_ATTEMPTS) and "not confirmed" in (job.last_error or "")
    first, second = campaign_codes(engine, campaign_id)[:2]
    assert (first.sync_status, first.sync_error) == ("synced", REMOVAL_UNCONFIRMED)  # still live on Shopify: not done
    assert second.sync_status == "deactivated"  # its stored id needed no search
    assert rows[0].platform_id in held_ids(fake)
    fake.search_blind = False  # a later attempt finds it: deleted, and only then done
    with session_scope(engine) as session:
        sync.enqueue_deactivate(session, shop_id=rows[0].shop_id, campaign_id=campaign_id)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    assert campaign_codes(engine, campaign_id)[0].sync_status == "deactivated"
    assert rows[0].platform_id not in held_ids(fake)


@pytest.mark.parametrize("lost", [httpx.Response(503, text="Service Unavailable"), httpx.ReadTimeout])
async def test_a_delete_whose_answer_was_lost_is_sent_again_and_then_done(
    engine: Engine, app_settings: Settings, fake: ShopifyFake, lost: httpx.Response | type[httpx.TransportError]
) -> None:
    campaign_id = await pushed_campaign(engine, app_settings, fake)
    rows = campaign_codes(engine, campaign_id)
    void_codes(engine, campaign_id, rows[:2])
    fake.lose_answer(lost)  # Shopify deletes the codes; its answer never reaches us
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    operations = [c.operation for c in fake.calls]
    assert operations.count("discountCodeRedeemCodeBulkDelete") == 2 and "codeDiscountNode" not in operations
    assert [r.sync_status for r in campaign_codes(engine, campaign_id)[:3]] == ["deactivated", "deactivated", "synced"]
    assert not {r.platform_id for r in rows[:2]} & held_ids(fake)


# --- the platform outcome, per campaign ------------------------------------------------------------


def platform(engine: Engine, campaign_id: int) -> dict[str, Any]:
    with session_scope(engine) as session:
        return sync.platform_status(session, session.get_one(Campaign, campaign_id))


async def test_a_campaign_shows_its_platform_outcome_a_failing_follow_and_its_success(
    engine: Engine, app_settings: Settings, fake: ShopifyFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id = await pushed_campaign(engine, app_settings, fake)
    (discount,) = fake.discounts.values()
    assert platform(engine, campaign_id) == {
        "platform": "shopify",
        "discount_id": discount.id,
        "codes": {"synced": CODES},
        "last_follow": None,
        "last_error": None,
    }
    monkeypatch.setattr(ShopifyConnector, "MAX_ATTEMPTS", 1)  # the connector gives up at once: the outbox retries
    with session_scope(engine) as session:
        change_status(session, shop_id=campaign(engine, campaign_id).shop_id, campaign_id=campaign_id, action="pause")
    fake.script(httpx.Response(503, text="Service Unavailable"))
    async with worker_for(app_settings, engine) as worker:
        assert await worker.run_once()
        failing = platform(engine, campaign_id)
        assert failing["last_follow"] is None and failing["last_error"] is not None
        assert {k: failing["last_error"][k] for k in ("job", "status", "attempts")} == {
            "job": sync.FOLLOW,
            "status": "queued",  # to be tried again
            "attempts": 1,
        }
        assert "503" in failing["last_error"]["error"] or "Service Unavailable" in failing["last_error"]["error"]
        await drain(worker)
    done = platform(engine, campaign_id)
    assert done["last_error"] is None and discount.status == "EXPIRED"
    assert done["last_follow"]["action"] == "campaign.platform_followed"
    assert done["last_follow"]["outcome"] == {
        "status": "paused",
        "discount_id": discount.id,
        "rules": "updated",
        "discount_status": "paused",
    }


async def test_a_dead_lettered_push_stays_in_sight(
    engine: Engine, app_settings: Settings, fake: ShopifyFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id = await shopify_campaign(engine, app_settings, fake)
    monkeypatch.setattr(ShopifyConnector, "MAX_ATTEMPTS", 1)
    fake.script(*[httpx.Response(500, json={"errors": "Internal error"})] * outbox.DEFAULT_MAX_ATTEMPTS)
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    shown = platform(engine, campaign_id)
    assert shown["codes"] == {"pending": CODES} and shown["discount_id"] is None
    assert shown["last_error"]["job"] == sync.PUSH and shown["last_error"]["status"] == "dead"
