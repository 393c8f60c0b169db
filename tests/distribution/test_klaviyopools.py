"""Klaviyo's own coupon pool: codes handed to a Klaviyo coupon, uploaded once each through the
outbox (faults: lost answer after commit, 5xx, timeout, 429), never claimed or bound by us,
watched for low stock, and redeemed as channel `klaviyo`. Klaviyo is the respx fake answering
in its documented shapes; every request we send is checked against its published spec."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from tenacity import wait_none

from connectors.base import ConnectorConfig, Credentials
from connectors.klaviyo import KlaviyoConnector
from plugin.checkout import checkout, redemptions
from plugin.codes import percode
from plugin.distribution import claims as distribution
from plugin.distribution import klaviyopools, partners
from plugin.errors import Conflict, NotFound
from plugin.jobs.worker import Worker
from plugin.orders import bulk_redemptions
from plugin.rules import Basket, Customer
from plugin.settings import Settings
from plugin.shops.shops import ensure_local_shop
from plugin.store import caches
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import Alert, Campaign, Code, Job, utcnow
from tests.connectors.fakes.klaviyo import JSON_API, FakeKlaviyo, fixture
from tests.contracts import load_contract, openapi, validate_request
from tests.platforms.test_sync import drain
from tests.web.conftest import BASKET, make_campaign, rules

pytestmark = pytest.mark.anyio
SPEC = "klaviyo/klaviyo_openapi_stable.json.gz"
SERVER_ERROR = {"errors": [{"id": "e", "status": 503, "code": "error", "title": "Unavailable.", "detail": "try later"}]}


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    caches.bump()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKlaviyo]:
    """The fake Klaviyo; the connector retries at once (no real sleeping), and every request it
    sent is checked against Klaviyo's spec afterwards."""
    now = [1000.0]  # the pacers' clock, which moves only when someone sleeps on it

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    def connector(ctx: JobContext, shop: object) -> KlaviyoConnector:
        credentials = Credentials(shop_domain="shop.example", access_token="pk_test")
        return KlaviyoConnector(
            ctx.http, ConnectorConfig(), credentials, attempts=3, retry_wait=wait_none(), sleep=sleep, clock=lambda: now[0]
        )

    monkeypatch.setattr(klaviyopools, "_connector", connector)
    fake = FakeKlaviyo()
    with fake.router:
        yield fake
    api, revision = openapi(SPEC), load_contract(SPEC)["info"]["version"]
    for request in fake.requests:
        validate_request(api, request)
        assert request.headers.get("revision") == revision


def worker(engine: Engine, settings: Settings, client: httpx.AsyncClient) -> Worker:
    settings = dataclasses.replace(settings, connector_config={"klaviyo": {"api_key": "pk_test"}})
    return Worker(JobContext(engine, settings, client), sweeps=())


def make_pool(engine: Engine, shop_id: int, campaign_id: int, count: int, **policy: int | None) -> int:
    with session_scope(engine) as session:
        pool = klaviyopools.create_pool(
            session, shop_id=shop_id, campaign_id=campaign_id, coupon_id="SPRING10", description="Spring", **policy
        )
        assert pool.id is not None
        assert klaviyopools.add_codes(session, shop_id=shop_id, pool_id=pool.id, count=count) == count
        return pool.id


def counts(engine: Engine, shop_id: int, pool_id: int) -> dict[str, int]:
    with Session(engine) as session:
        return {k: v for k, v in klaviyopools.upload_counts(session, shop_id=shop_id, pool_id=pool_id).items() if v}


def pool_codes(engine: Engine, pool_id: int) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(select(Code.code).where(col(Code.pool_id) == pool_id)).all())


def at_klaviyo(fake: FakeKlaviyo) -> set[str]:
    return {u.replace("-", "") for u in fake.coupon_codes["SPRING10"]}


async def test_pool_codes_are_uploaded_once_in_jobs_and_never_handed_out_by_us(
    engine: Engine, shop_id: int, settings: Settings, fake: FakeKlaviyo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(klaviyopools, "JOB_SIZE", 10)
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=30)
    pool_id = make_pool(engine, shop_id, campaign_id, 25)
    assert counts(engine, shop_id, pool_id) == {"queued": 25}
    in_pool = pool_codes(engine, pool_id)
    # the other five are the campaign's only free codes: claims and partners never see the pool's
    with session_scope(engine) as session:
        partner = partners.create_partner(session, shop_id=shop_id, name="Influencer")
        assert partner.id is not None
        partner_id = partner.id
        assert partners.allocate(session, shop_id=shop_id, campaign_id=campaign_id, partner_id=partner_id, count=10) == 5
    claimed = {
        distribution.claim_or_alert(
            engine, shop_id=shop_id, campaign_id=campaign_id, recipient=f"p{n}@example.com", partner_id=partner_id
        ).code
        for n in range(3)
    }
    assert not claimed & in_pool
    with pytest.raises(distribution.PoolExhausted):
        distribution.claim_or_alert(engine, shop_id=shop_id, campaign_id=campaign_id, recipient="late@example.com")
    with Session(engine) as session:
        assert distribution.pool_status(session, shop_id=shop_id, campaign_id=campaign_id).free == 0

    async with httpx.AsyncClient() as client:
        await drain(worker(engine, settings, client))
    assert counts(engine, shop_id, pool_id) == {"uploaded": 25}
    assert at_klaviyo(fake) == in_pool and set(stored) >= in_pool
    sent = [len(fake.coupon_jobs[j]["codes"]) for j in fake.coupon_jobs]
    assert sorted(sent) == [5, 10, 10]
    assert fake.router["coupons"].call_count == 1  # the coupon was created once, with its description
    coupon = fake.router["coupons"].calls.last.request
    assert b'"description":"Spring"' in coupon.content
    # the display form is what Klaviyo shows in the email; it redeems as the stored code does
    assert set(fake.coupon_codes["SPRING10"]) == _displays(engine, pool_id)


async def test_an_answer_lost_after_klaviyo_took_the_job_uploads_nothing_twice(
    engine: Engine, shop_id: int, settings: Settings, fake: FakeKlaviyo, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=4)
    pool_id = make_pool(engine, shop_id, campaign_id, 4)
    fake.hold_coupon_jobs = True
    fake.lose_answer("coupon-jobs", httpx.Response(503, json=SERVER_ERROR, headers=JSON_API))
    async with httpx.AsyncClient() as client:
        w = worker(engine, settings, client)
        assert await w.run_once()
        assert counts(engine, shop_id, pool_id) == {"sending": 4}
        assert len(fake.coupon_jobs) == 1  # Klaviyo has the job; the 503 was not sent again
        # too soon to tell whether the job ran: the retry asks nothing and sends nothing
        await drain_once(w)
        assert fake.router["coupon-code"].call_count == 0 and len(fake.coupon_jobs) == 1
        fake.run_coupon_jobs()
        monkeypatch.setattr(klaviyopools, "SETTLE_AFTER", timedelta(0))
        await drain(w)
    assert counts(engine, shop_id, pool_id) == {"uploaded": 4}
    assert len(fake.coupon_jobs) == 1 and fake.router["coupon-code"].call_count == 4
    assert at_klaviyo(fake) == pool_codes(engine, pool_id)


async def test_a_timeout_while_the_lost_job_still_waits_at_klaviyo_counts_already_there_as_done(
    engine: Engine, shop_id: int, settings: Settings, fake: FakeKlaviyo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup finds nothing (the first job has not run), so the codes go again; the first job
    creates them, the second finds them there: uploaded, each code once at Klaviyo."""
    monkeypatch.setattr(klaviyopools, "SETTLE_AFTER", timedelta(0))
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    pool_id = make_pool(engine, shop_id, campaign_id, 3)
    fake.hold_coupon_jobs = True
    fake.lose_answer("coupon-jobs", httpx.ReadTimeout("no answer"))
    async with httpx.AsyncClient() as client:
        w = worker(engine, settings, client)
        assert await w.run_once()
        assert counts(engine, shop_id, pool_id) == {"sending": 3}
        await drain_once(w)  # looked up: not there yet, so sent again in a second job
        assert len(fake.coupon_jobs) == 2 and counts(engine, shop_id, pool_id) == {"submitted": 3}
        fake.run_coupon_jobs()  # the first job creates them; the second fails each as already there
        assert all(len(j["errors"]) == 3 for j in list(fake.coupon_jobs.values())[1:])
        await drain(w)
    assert counts(engine, shop_id, pool_id) == {"uploaded": 3}
    assert at_klaviyo(fake) == pool_codes(engine, pool_id)


async def test_a_throttled_upload_puts_the_codes_back_and_waits_retry_after(
    engine: Engine, shop_id: int, settings: Settings, fake: FakeKlaviyo
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2)
    pool_id = make_pool(engine, shop_id, campaign_id, 2)
    throttled = httpx.Response(429, json=fixture("throttled.json"), headers={"Retry-After": "45", **JSON_API})
    fake.script("coupon-jobs", throttled, throttled, throttled)  # every attempt of this run
    async with httpx.AsyncClient() as client:
        w = worker(engine, settings, client)
        before = utcnow()
        assert await w.run_once()
        assert counts(engine, shop_id, pool_id) == {"queued": 2}  # provably not taken
        with Session(engine) as session:
            job = session.exec(select(Job).where(col(Job.kind) == klaviyopools.UPLOAD)).one()
        assert job.status == "queued" and job.run_after >= before + timedelta(seconds=45)
        assert len(fake.coupon_jobs) == 0
        await drain(w)
    assert counts(engine, shop_id, pool_id) == {"uploaded": 2} and len(fake.coupon_jobs) == 1


async def test_a_code_klaviyo_refuses_is_failed_with_its_reason_and_can_be_retried(
    engine: Engine, shop_id: int, settings: Settings, fake: FakeKlaviyo
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    pool_id = make_pool(engine, shop_id, campaign_id, 3)
    shown = sorted(_displays(engine, pool_id))[0]
    refused = shown.replace("-", "")
    fake.reject_codes = {shown}
    async with httpx.AsyncClient() as client:
        w = worker(engine, settings, client)
        await drain(w)
        assert counts(engine, shop_id, pool_id) == {"uploaded": 2, "failed": 1}
        with Session(engine) as session:
            (failed,) = klaviyopools.list_uploads(session, shop_id=shop_id, pool_id=pool_id, status="failed")
            assert failed.code == refused and "invalid" in (failed.error or "")
        fake.reject_codes = set()
        with session_scope(engine) as session:
            assert klaviyopools.retry_failed(session, shop_id=shop_id, pool_id=pool_id) == 1
        await drain(w)
    assert counts(engine, shop_id, pool_id) == {"uploaded": 3}


def _displays(engine: Engine, pool_id: int) -> set[str]:
    """The pool's codes as Klaviyo is sent them (display form)."""
    with Session(engine) as session:
        formats = session.exec(select(Campaign.code_format).join(Code, col(Code.campaign_id) == col(Campaign.id))
                               .where(col(Code.pool_id) == pool_id)).first()  # fmt: skip
    fmt = caches.code_format(json.dumps(formats))
    return {klaviyopools._display(fmt, c) for c in pool_codes(engine, pool_id)}


async def drain_once(w: Worker) -> None:
    """Run the jobs that are due now, retries made due at once, one pass."""
    from sqlalchemy import update

    from plugin.store.models import Job as JobRow

    with session_scope(w.ctx.engine) as session:
        session.execute(update(JobRow).where(col(JobRow.status) == "queued").values(run_after=utcnow() - timedelta(days=1)))
    while await w.run_once():
        pass


async def test_a_pool_running_low_at_klaviyo_alerts_and_tops_itself_up(
    engine: Engine, shop_id: int, settings: Settings, fake: FakeKlaviyo
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=6)
    pool_id = make_pool(engine, shop_id, campaign_id, 6, alert_below=4, topup_below=3, topup_count=5)
    async with httpx.AsyncClient() as client:
        w = worker(engine, settings, client)
        await drain(w)  # uploaded, then checked: 6 unassigned, no alert
        assert alerts(engine) == []
        for unique in sorted(fake.coupon_codes["SPRING10"])[:4]:  # Klaviyo sent four emails
            fake.coupon_codes["SPRING10"][unique] = "ASSIGNED_TO_PROFILE"
        with session_scope(engine) as session:
            assert await klaviyopools.schedule_checks(w.ctx) == 0  # checked under an hour ago
            klaviyopools._queue_check(engine, shop_id, pool_id)
        await drain(w)
    (low,) = alerts(engine)
    assert (low.kind, low.details["unassigned"], low.details["threshold"]) == ("klaviyo_pool_low", 2, 4)
    # 2 left < 3: five more codes, generated (the campaign had none free) and uploaded
    assert counts(engine, shop_id, pool_id) == {"uploaded": 11}
    assert len(fake.coupon_codes["SPRING10"]) == 11
    with Session(engine) as session:
        pool = klaviyopools.get_pool(session, shop_id=shop_id, pool_id=pool_id)
        assert pool.checked_at is not None
    # the next check sees 7 unassigned: the alert is resolved
    async with httpx.AsyncClient() as client:
        w = worker(engine, settings, client)
        klaviyopools._queue_check(engine, shop_id, pool_id)
        await drain(w)
    (low,) = alerts(engine)
    assert low.resolved_at is not None and counts(engine, shop_id, pool_id) == {"uploaded": 11}


def alerts(engine: Engine) -> list[Alert]:
    with Session(engine) as session:
        return list(session.exec(select(Alert).order_by(col(Alert.id))).all())


def test_pool_codes_are_never_bound_and_their_redemptions_are_klaviyos(engine: Engine, shop_id: int) -> None:
    """Klaviyo picks the recipient: a bound-on-claim campaign's pool codes redeem for whoever
    Klaviyo sent them to, and the redemption is attributed to channel `klaviyo`."""
    campaign_id, _ = make_campaign(engine, shop_id, rules(distribution={"binding": "claim"}), codes=4)
    pool_id = make_pool(engine, shop_id, campaign_id, 3)
    in_pool = sorted(pool_codes(engine, pool_id))
    other = distribution.claim_or_alert(engine, shop_id=shop_id, campaign_id=campaign_id, recipient="ann@example.com")
    assert other.bound and other.code not in in_pool  # the campaign's own claims still bind
    with Session(engine) as session:
        rows = session.exec(select(Code).where(col(Code.pool_id) == pool_id)).all()
        assert all((c.email, c.customer_id, c.recipient) == (None, None, None) for c in rows)
    basket = Basket.model_validate(BASKET)
    with session_scope(engine) as session:
        outcome = checkout.redeem(
            session, shop_id=shop_id, typed=in_pool[0], order_id="order-1", basket=basket,
            customer=Customer(email="whoever@example.com"), channel="web", checkout_id=None, now=utcnow(),
        )  # fmt: skip
        assert outcome.redemption.channel == "klaviyo" and outcome.redemption.flagged_reason is None
        plain = checkout.redeem(
            session, shop_id=shop_id, typed=other.code, order_id="order-2", basket=basket,
            customer=Customer(email="ann@example.com"), channel="web", checkout_id=None, now=utcnow(),
        )  # fmt: skip
        assert plain.redemption.channel == "web"
        # an order webhook's use of a pool code too, on the bulk path
        (recorded,) = bulk_redemptions.record_webhook_redemptions(
            session, [bulk_redemptions.Use(shop_id, in_pool[1], "order-3", channel="pos", email="x@example.com")], now=utcnow()
        )
        assert recorded is not None
        found = session.get(redemptions.Redemption, recorded.redemption_id)
        assert found is not None and (found.channel, found.flagged_reason) == ("klaviyo", None)
        # nobody may hand a pool code to a recipient by hand either
        with pytest.raises(Conflict) as refused:
            percode.reassign(session, shop_id=shop_id, typed=in_pool[2], recipient="bob@example.com", actor="t", now=utcnow())
        assert refused.value.reason == "code_in_klaviyo_pool"


def test_a_pool_belongs_to_its_shop_and_its_coupon_to_one_campaign(engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2)
    other_campaign, _ = make_campaign(engine, shop_id, rules(), codes=2, name="Other")
    pool_id = make_pool(engine, shop_id, campaign_id, 1)
    with session_scope(engine) as session:
        other_shop = ensure_local_shop(session, domain="other.example").id
        assert other_shop is not None and other_shop != shop_id
        with pytest.raises(NotFound):
            klaviyopools.get_pool(session, shop_id=other_shop, pool_id=pool_id)
        with pytest.raises(NotFound):
            klaviyopools.add_codes(session, shop_id=other_shop, pool_id=pool_id, count=1)
        again = klaviyopools.create_pool(session, shop_id=shop_id, campaign_id=campaign_id, coupon_id="SPRING10")
        assert again.id == pool_id
        with pytest.raises(Exception, match="already holds"):
            klaviyopools.create_pool(session, shop_id=shop_id, campaign_id=other_campaign, coupon_id="SPRING10")
        with pytest.raises(Exception, match="coupon id"):
            klaviyopools.create_pool(session, shop_id=shop_id, campaign_id=other_campaign, coupon_id="10 OFF")
