"""Expiry reminders (plugin.distribution.reminders): N days before a recipient's code expires
unused, the provider that delivered it gets `coupon_reminder_at`, once, through the push job;
Braze (a synchronous provider) behind respx in its documented shapes (tests/connectors/fakes)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from connectors.base import ConnectorConfig, Credentials, MessagingConnector
from connectors.braze import BrazeConnector
from connectors.mailchimp import MailchimpConnector
from plugin.codes import percode
from plugin.distribution import claims as distribution
from plugin.distribution import pushes, reminders
from plugin.jobs.worker import Worker
from plugin.rules import CampaignRules
from plugin.settings import Settings
from plugin.store import caches
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import Code, Job, RecipientDelivery, Shop, utcnow
from tests.connectors.fakes.braze import RESET_EPOCH, FakeBraze
from tests.platforms.test_sync import drain
from tests.web.conftest import make_campaign, rules

pytestmark = pytest.mark.anyio
PEOPLE = ["ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com"]
EXPIRES_AFTER = timedelta(days=10)  # each code, from its assignment
REMIND = 3  # days before


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    caches.bump()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def braze() -> Iterator[FakeBraze]:
    fake = FakeBraze()
    with fake.router:
        yield fake


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's connectors retry at once, twice, then leave the rest to the outbox."""
    made = pushes.messaging_connector

    def quick(settings: Settings, http: httpx.AsyncClient, provider: str, shop: Shop) -> MessagingConnector:
        connector = made(settings, http, provider, shop)
        if isinstance(connector, BrazeConnector):
            options = dict(settings.connector_config["braze"])

            async def no_sleep(_: float) -> None:
                return None

            config = ConnectorConfig(extra=options)
            credentials = Credentials(shop_domain=shop.domain, access_token=options["api_key"], extra=options)
            return BrazeConnector(http, config, credentials, attempts=2, sleep=no_sleep, wall_clock=lambda: RESET_EPOCH)
        return connector

    monkeypatch.setattr(pushes, "messaging_connector", quick)


def braze_settings(settings: Settings) -> Settings:
    config = {"braze": {"api_key": FakeBraze.API_KEY, "rest_endpoint": FakeBraze.BASE_URL}}
    return dataclasses.replace(settings, connector_config=config)


def reminder_rules(days: int | None = REMIND) -> dict[str, Any]:
    return rules(
        time={"relative_expiry": {"after": "assignment", "duration": 10, "unit": "days"}},
        distribution={"remind_days_before_expiry": days} if days else {},
    )


async def delivered(
    engine: Engine, shop_id: int, settings: Settings, people: list[str], days: int | None = REMIND
) -> tuple[int, datetime]:
    """A campaign whose codes `people` claimed now and Braze took; (campaign id, claim time)."""
    campaign_id, _ = make_campaign(engine, shop_id, reminder_rules(days), codes=len(people) + 2)
    claimed_at = utcnow()
    with session_scope(engine) as session:
        for person in people:
            distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=person, now=claimed_at)
        pushes.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id, provider="braze")
    await run_worker(engine, settings)
    return campaign_id, claimed_at


async def run_worker(engine: Engine, settings: Settings) -> None:
    async with httpx.AsyncClient() as client:
        await drain(Worker(JobContext(engine, settings, client), sweeps=()))


def queue_due(engine: Engine, now: datetime) -> int:
    with session_scope(engine) as session:
        return reminders.queue_due(session, now=now)


def deliveries(engine: Engine) -> dict[str, RecipientDelivery]:
    with Session(engine) as session:
        return {d.recipient: d for d in session.exec(select(RecipientDelivery)).all()}


def tracked(braze: FakeBraze) -> list[dict[str, Any]]:
    """Every attribute object Braze was sent, in order."""
    return [a for call in braze.router.calls for a in json.loads(call.request.content).get("attributes", [])]


def code_of(engine: Engine, person: str) -> Code:
    with Session(engine) as session:
        return session.exec(select(Code).where(col(Code.recipient) == person)).one()


def test_the_setting_is_a_campaign_rule_with_bounds() -> None:
    base = reminder_rules(None)
    assert CampaignRules.model_validate(base).distribution.remind_days_before_expiry is None
    assert (
        CampaignRules.model_validate(
            {**base, "distribution": {"remind_days_before_expiry": 7}}
        ).distribution.remind_days_before_expiry
        == 7
    )
    for bad in (0, -1, 366, "3", 2.5):
        with pytest.raises(ValueError):
            CampaignRules.model_validate({**base, "distribution": {"remind_days_before_expiry": bad}})


async def test_an_unused_code_is_reminded_once_within_its_window(
    engine: Engine, shop_id: int, settings: Settings, braze: FakeBraze
) -> None:
    settings = braze_settings(settings)
    _, claimed_at = await delivered(engine, shop_id, settings, PEOPLE[:2])
    assert {d.status for d in deliveries(engine).values()} == {"sent"}
    assert all("coupon_reminder_at" not in a for a in tracked(braze))

    assert queue_due(engine, claimed_at + timedelta(days=6)) == 0  # 4 days left: not yet
    due_at = claimed_at + timedelta(days=7, hours=1)  # under 3 days left
    assert queue_due(engine, due_at) == 2
    assert queue_due(engine, due_at + timedelta(hours=1)) == 0  # queued already
    await run_worker(engine, settings)
    got = deliveries(engine)
    assert {d.status for d in got.values()} == {"sent"}
    assert all(d.reminded_at == due_at for d in got.values())
    for person in PEOPLE[:2]:
        assert braze.users[person]["coupon_reminder_at"] == due_at.isoformat()
        assert braze.users[person]["coupon_code"] == code_of(engine, person).code
    # once: later sweeps, even inside the window, find nothing more
    before = len(braze.router.calls)
    assert queue_due(engine, claimed_at + timedelta(days=9)) == 0
    await run_worker(engine, settings)
    assert len(braze.router.calls) == before


async def test_used_voided_expired_and_unpushed_codes_are_never_reminded(
    engine: Engine, shop_id: int, settings: Settings, braze: FakeBraze
) -> None:
    settings = braze_settings(settings)
    campaign_id, claimed_at = await delivered(engine, shop_id, settings, PEOPLE)
    used, voided, late, fine = PEOPLE
    voided_code = code_of(engine, voided).code
    with session_scope(engine) as session:
        session.execute(update(Code).where(col(Code.recipient) == used).values(uses=1))
        percode.void(session, shop_id=shop_id, typed=voided_code, actor="test", now=claimed_at)
        distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient="eve@example.com", now=claimed_at)
    # `late`'s code expires earlier than the rest: past its end at the sweep
    with session_scope(engine) as session:
        session.execute(update(Code).where(col(Code.recipient) == late).values(expires_at=claimed_at + timedelta(days=5)))
    assert queue_due(engine, claimed_at + timedelta(days=8)) == 1  # eve's code was never pushed
    await run_worker(engine, settings)
    got = deliveries(engine)
    assert got[fine].reminded_at is not None and "coupon_reminder_at" in braze.users[fine]
    for person in (used, voided, late):
        assert got[person].reminded_at is None and "coupon_reminder_at" not in braze.users[person]
    assert "eve@example.com" not in got


async def test_a_code_used_after_falling_due_is_skipped_not_reminded(
    engine: Engine, shop_id: int, settings: Settings, braze: FakeBraze
) -> None:
    settings = braze_settings(settings)
    _, claimed_at = await delivered(engine, shop_id, settings, PEOPLE[:2])
    assert queue_due(engine, claimed_at + timedelta(days=8)) == 2
    with session_scope(engine) as session:  # redeemed before the push job ran
        session.execute(update(Code).where(col(Code.recipient) == PEOPLE[0]).values(uses=1))
    await run_worker(engine, settings)
    got = deliveries(engine)
    assert got[PEOPLE[0]].status == "skipped" and "used" in (got[PEOPLE[0]].error or "")
    assert "coupon_reminder_at" not in braze.users[PEOPLE[0]]
    assert got[PEOPLE[1]].status == "sent" and "coupon_reminder_at" in braze.users[PEOPLE[1]]


async def test_campaigns_without_the_setting_or_not_active_remind_nobody(
    engine: Engine, shop_id: int, settings: Settings, braze: FakeBraze
) -> None:
    settings = braze_settings(settings)
    _, claimed_at = await delivered(engine, shop_id, settings, PEOPLE[:1], days=None)
    paused_id, _ = await delivered(engine, shop_id, settings, PEOPLE[1:2])
    with session_scope(engine) as session:
        from plugin.store.models import Campaign

        session.execute(update(Campaign).where(col(Campaign.id) == paused_id).values(status="paused"))
    assert queue_due(engine, claimed_at + timedelta(days=8)) == 0


@pytest.mark.parametrize("fault", ["5xx", "429", "timeout", "lost after commit"])
async def test_a_reminder_survives_faults_and_lands_once_with_one_value(
    engine: Engine, shop_id: int, settings: Settings, braze: FakeBraze, fault: str
) -> None:
    settings = braze_settings(settings)
    _, claimed_at = await delivered(engine, shop_id, settings, PEOPLE[:2])
    due_at = claimed_at + timedelta(days=8)
    assert queue_due(engine, due_at) == 2
    real = braze.router.routes["track"].side_effect
    failures = {"left": 3}  # more than the connector's own 2 attempts: the outbox retries the job

    def faulty(request: httpx.Request) -> httpx.Response:
        if failures["left"] > 0:
            failures["left"] -= 1
            if fault == "5xx":
                return httpx.Response(503, json={"message": "Service Unavailable"})
            if fault == "429":
                headers = {"X-RateLimit-Limit": "3000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(RESET_EPOCH)}
                return httpx.Response(429, json={"message": "Too Many Requests"}, headers=headers)
            if fault == "timeout":
                raise httpx.ReadTimeout("timed out", request=request)
            real(request)  # Braze stored it; the answer never arrives
            raise httpx.RemoteProtocolError("connection closed", request=request)
        answer: httpx.Response = real(request)
        return answer

    braze.router.routes["track"].side_effect = faulty
    await run_worker(engine, settings)
    got = deliveries(engine)
    assert {d.status for d in got.values()} == {"sent"}
    sent = [a for a in tracked(braze) if "coupon_reminder_at" in a]
    assert sent and {a["coupon_reminder_at"] for a in sent} == {due_at.isoformat()}  # every attempt the same value
    for person in PEOPLE[:2]:
        assert braze.users[person]["coupon_reminder_at"] == due_at.isoformat()
    with Session(engine) as session:
        assert set(session.exec(select(Job.status).where(col(Job.kind) == pushes.PUSH)).all()) == {"done"}


def test_mailchimp_carries_the_reminder_in_a_merge_field_within_its_tag_limit() -> None:
    tag, _, kind = MailchimpConnector.merge_field(pushes.REMINDER_FIELD)
    assert tag == "COUPONREM" and len(tag) <= MailchimpConnector.TAG_LENGTH and kind == "text"
