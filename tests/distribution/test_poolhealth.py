"""Pool health: low-stock alerts at the campaign's threshold, automatic top-up through the
outbox (generate, then resolve the alerts), and an empty pool that asks for more."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.distribution import claims as distribution
from plugin.distribution import poolhealth
from plugin.errors import InvalidInput
from plugin.jobs.worker import Worker
from plugin.settings import Settings
from plugin.store import caches
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import Alert, Job, utcnow
from tests.platforms.test_sync import drain
from tests.web.conftest import make_campaign, rules

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    """PostgreSQL tests share one engine and reuse ids after each truncation: start each test
    without the previous test's cached rows (a real database never reuses an id)."""
    caches.bump()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def claim(engine: Engine, shop_id: int, campaign_id: int, recipient: str) -> distribution.Claim:
    return distribution.claim_or_alert(engine, shop_id=shop_id, campaign_id=campaign_id, recipient=recipient)


def pool(engine: Engine, shop_id: int, campaign_id: int) -> distribution.PoolStatus:
    with Session(engine) as session:
        return distribution.pool_status(session, shop_id=shop_id, campaign_id=campaign_id)


def alerts(engine: Engine) -> list[Alert]:
    with Session(engine) as session:
        return list(session.exec(select(Alert).order_by(col(Alert.id))).all())


async def test_a_low_pool_alerts_and_tops_itself_up(engine: Engine, shop_id: int, settings: Settings) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=4)
    with session_scope(engine) as session:
        poolhealth.set_policy(session, shop_id=shop_id, campaign_id=campaign_id, alert_below=2, topup_below=2, topup_count=5)
    claim(engine, shop_id, campaign_id, "a@example.com")
    claim(engine, shop_id, campaign_id, "b@example.com")
    assert alerts(engine) == [] and pool(engine, shop_id, campaign_id).free == 2
    claim(engine, shop_id, campaign_id, "c@example.com")
    claim(engine, shop_id, campaign_id, "d@example.com")  # still low: the queued top-up covers it
    (low,) = alerts(engine)
    assert (low.kind, low.count, low.details["free"]) == ("pool_low", 2, 0)
    with Session(engine) as session:
        jobs = session.exec(select(Job).where(col(Job.kind) == poolhealth.TOPUP)).all()
    assert len(jobs) == 1 and jobs[0].payload == {"campaign_id": campaign_id, "count": 5}
    async with httpx.AsyncClient() as client:
        await drain(Worker(JobContext(engine, settings, client), sweeps=()))
    status = pool(engine, shop_id, campaign_id)
    assert (status.total, status.assigned, status.free) == (9, 4, 5)
    (low,) = alerts(engine)
    assert low.resolved_at is not None and low.open_key is None
    assert claim(engine, shop_id, campaign_id, "e@example.com").created


async def test_an_empty_pool_asks_for_a_top_up(engine: Engine, shop_id: int, settings: Settings) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1)
    with session_scope(engine) as session:
        poolhealth.set_policy(session, shop_id=shop_id, campaign_id=campaign_id, alert_below=0, topup_below=1, topup_count=3)
        # the claim itself queues the top-up (free 0 < 1); drop it to see the empty pool ask again
    claim(engine, shop_id, campaign_id, "a@example.com")
    with session_scope(engine) as session:
        for job in session.exec(select(Job)).all():
            session.delete(job)
    with pytest.raises(distribution.PoolExhausted):
        claim(engine, shop_id, campaign_id, "b@example.com")
    assert [a.kind for a in alerts(engine)] == ["pool_empty"]
    async with httpx.AsyncClient() as client:
        await drain(Worker(JobContext(engine, settings, client), sweeps=()))
    assert pool(engine, shop_id, campaign_id).free == 3
    assert claim(engine, shop_id, campaign_id, "b@example.com").created
    assert alerts(engine)[0].resolved_at is not None


def test_policies_are_checked(engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1)
    with pytest.raises(InvalidInput), session_scope(engine) as session:
        poolhealth.set_policy(session, shop_id=shop_id, campaign_id=campaign_id, alert_below=10, topup_below=5, topup_count=0)
    with session_scope(engine) as session:
        policy = poolhealth.set_policy(session, shop_id=shop_id, campaign_id=campaign_id, alert_below=10, topup_below=None,
                                       topup_count=0)  # fmt: skip
        assert policy.updated_at <= utcnow()
