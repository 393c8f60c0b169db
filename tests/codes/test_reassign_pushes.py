"""Reassigning a code its campaign pushed to a messaging provider: each recipient is sent their
code once, and the person it was taken from does not keep it in their merge fields (Braze,
mocked with respx in its documented shapes: tests/connectors/fakes/braze.py)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from plugin.codes import percode
from plugin.distribution import claims as distribution
from plugin.distribution import pushes
from plugin.jobs.worker import Worker
from plugin.settings import Settings
from plugin.store import caches
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import Code, Job, RecipientDelivery, utcnow
from tests.connectors.fakes.braze import FakeBraze
from tests.platforms.test_sync import drain
from tests.web.conftest import make_campaign, rules

pytestmark = pytest.mark.anyio

ANN, BOB = "ann@example.com", "bob@example.com"


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    caches.bump()  # PostgreSQL reuses ids after each truncation: no cached rows of another test


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def braze() -> Iterator[FakeBraze]:
    fake = FakeBraze()
    with fake.router:
        yield fake


@pytest.fixture
def braze_settings(settings: Settings) -> Settings:
    config = {"braze": {"api_key": FakeBraze.API_KEY, "rest_endpoint": FakeBraze.BASE_URL}}
    return dataclasses.replace(settings, connector_config=config)


@asynccontextmanager
async def worker_for(settings: Settings, engine: Engine) -> AsyncIterator[Worker]:
    async with httpx.AsyncClient() as http:
        yield Worker(JobContext(engine, settings, http), sweeps=())


def sent(braze: FakeBraze) -> list[dict[str, Any]]:
    """Every attribute object Braze was sent, in order."""
    return [item for call in braze.router.calls for item in json.loads(call.request.content)["attributes"]]


def codes_sent(braze: FakeBraze, code: str) -> dict[str, int]:
    """How many times each person was sent `code`."""
    counts: dict[str, int] = {}
    for item in sent(braze):
        if item.get("coupon_code") == code:
            counts[item["email"]] = counts.get(item["email"], 0) + 1
    return counts


def claimed(engine: Engine, shop_id: int, campaign_id: int, person: str) -> str:
    with session_scope(engine) as session:
        return distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=person, now=utcnow()).code


def push(engine: Engine, shop_id: int, campaign_id: int) -> None:
    with session_scope(engine) as session:
        pushes.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id, provider="braze")


def reassign(engine: Engine, shop_id: int, code: str, person: str) -> None:
    with session_scope(engine) as session:
        percode.reassign(session, shop_id=shop_id, typed=code, recipient=person, actor="test", now=utcnow())


def deliveries(engine: Engine) -> list[RecipientDelivery]:
    with Session(engine) as session:
        return list(session.exec(select(RecipientDelivery).order_by(col(RecipientDelivery.id))).all())


async def test_each_recipient_is_sent_their_code_once_and_the_old_one_is_blanked(
    engine: Engine, shop_id: int, braze_settings: Settings, braze: FakeBraze
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    code = claimed(engine, shop_id, campaign_id, ANN)
    push(engine, shop_id, campaign_id)
    async with worker_for(braze_settings, engine) as worker:
        await drain(worker)
        assert braze.users[ANN]["coupon_code"] == code
        reassign(engine, shop_id, code, BOB)
        reassign(engine, shop_id, code, BOB)  # the same again: nothing more
        await drain(worker)
        push(engine, shop_id, campaign_id)  # a later push of the campaign sends nothing again
        await drain(worker)
    assert codes_sent(braze, code) == {ANN: 1, BOB: 1}
    assert braze.users[BOB]["coupon_code"] == code
    assert {k: braze.users[ANN][k] for k in pushes.MERGE_FIELDS} == dict.fromkeys(pushes.MERGE_FIELDS, "")
    (delivery,) = deliveries(engine)
    assert (delivery.recipient, delivery.status) == (BOB, "sent")
    with session_scope(engine) as session:
        story = percode.story(session, percode.find(session, shop_id=shop_id, typed=code))
    (retracted,) = [e for e in story if e.event == "retracted"]
    assert retracted.details == {"actor": "worker", "provider": "braze", "ok": True, "error": None}


async def test_a_push_not_sent_yet_goes_to_the_new_recipient_alone(
    engine: Engine, shop_id: int, braze_settings: Settings, braze: FakeBraze
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    code = claimed(engine, shop_id, campaign_id, ANN)
    push(engine, shop_id, campaign_id)  # queued, not run
    reassign(engine, shop_id, code, BOB)
    async with worker_for(braze_settings, engine) as worker:
        await drain(worker)
    assert codes_sent(braze, code) == {BOB: 1} and ANN not in braze.users  # nothing to blank: she never had it
    with Session(engine) as session:
        assert not session.exec(select(Job).where(col(Job.kind) == pushes.RETRACT)).first()


async def test_a_code_assigned_after_the_campaign_was_pushed_is_pushed_to_its_new_holder(
    engine: Engine, shop_id: int, braze_settings: Settings, braze: FakeBraze
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    claimed(engine, shop_id, campaign_id, ANN)
    push(engine, shop_id, campaign_id)
    with session_scope(engine) as session:  # a code nobody holds, given to Bob by hand
        free = session.exec(select(Code.code).where(col(Code.campaign_id) == campaign_id, col(Code.recipient).is_(None))).first()
        assert free is not None
    reassign(engine, shop_id, free, BOB)
    async with worker_for(braze_settings, engine) as worker:
        await drain(worker)
    assert codes_sent(braze, free) == {BOB: 1}


async def test_reassigning_while_a_push_of_the_code_is_in_flight_is_refused(
    engine: Engine, shop_id: int, braze_settings: Settings, braze: FakeBraze
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    code = claimed(engine, shop_id, campaign_id, ANN)
    push(engine, shop_id, campaign_id)
    with session_scope(engine) as session:  # tried, its outcome unknown: Ann may be getting it
        session.execute(update(RecipientDelivery).values(status="sending"))
    with pytest.raises(pushes.CodeBeingSent):
        reassign(engine, shop_id, code, BOB)
    with session_scope(engine) as session:
        assert percode.find(session, shop_id=shop_id, typed=code).code.recipient == ANN
    assert [(d.recipient, d.status) for d in deliveries(engine)] == [(ANN, "sending")]


async def test_the_old_recipient_is_not_blanked_once_they_hold_another_code(
    engine: Engine, shop_id: int, braze_settings: Settings, braze: FakeBraze
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    first = claimed(engine, shop_id, campaign_id, ANN)
    push(engine, shop_id, campaign_id)
    async with worker_for(braze_settings, engine) as worker:
        await drain(worker)
        reassign(engine, shop_id, first, BOB)
        second = claimed(engine, shop_id, campaign_id, ANN)  # Ann asks again: a new code
        push(engine, shop_id, campaign_id)
        await drain(worker)
    assert braze.users[ANN]["coupon_code"] == second  # whichever job ran first, hers is not blanked
    assert codes_sent(braze, first) == {ANN: 1, BOB: 1} and codes_sent(braze, second) == {ANN: 1}


async def test_a_batch_read_for_the_old_recipient_is_not_sent_once_the_code_moved(
    engine: Engine, shop_id: int, braze_settings: Settings, braze: FakeBraze, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker reads Ann's delivery and her code; the merchant reassigns the code to Bob
    before the worker marks the delivery sending: the batch must not carry it to Ann."""
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    code = claimed(engine, shop_id, campaign_id, ANN)
    push(engine, shop_id, campaign_id)
    find_claim, raced = distribution.find_claim, []

    def then_reassign(*args: Any, **kwargs: Any) -> Any:
        held = find_claim(*args, **kwargs)
        if not raced:
            raced.append(held)
            reassign(engine, shop_id, code, BOB)
        return held

    monkeypatch.setattr(distribution, "find_claim", then_reassign)
    batch = pushes._next_batch(engine, braze_settings, shop_id, campaign_id, "braze", 75, 0)
    assert raced and batch == []
    assert [(d.recipient, d.status) for d in deliveries(engine)] == [(BOB, "queued")]
    monkeypatch.setattr(distribution, "find_claim", find_claim)
    async with worker_for(braze_settings, engine) as worker:
        await drain(worker)
    assert codes_sent(braze, code) == {BOB: 1}


async def test_a_blanking_whose_answer_was_lost_is_sent_again(
    engine: Engine, shop_id: int, braze_settings: Settings, braze: FakeBraze, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    code = claimed(engine, shop_id, campaign_id, ANN)
    push(engine, shop_id, campaign_id)
    async with worker_for(braze_settings, engine) as worker:
        await drain(worker)
        reassign(engine, shop_id, code, BOB)
        with session_scope(engine) as session:  # the new recipient's push is not what this test is about
            session.execute(update(Job).where(col(Job.kind) == pushes.PUSH).values(status="done"))
        braze.script(*[httpx.Response(503, text="Service Unavailable")] * 10)  # every attempt of one job run
        (job,) = [j for j in _queued(engine) if j.kind == pushes.RETRACT]
        assert await worker.run_once()
        assert _job(engine, job.id).status == "queued" and _job(engine, job.id).last_error  # retried later
        braze._scripts.clear()  # Braze answers again
        await drain(worker)
    assert braze.users[ANN]["coupon_code"] == "" and _job(engine, job.id).status == "done"


def _queued(engine: Engine) -> list[Job]:
    with Session(engine) as session:
        return list(session.exec(select(Job).where(col(Job.status) == "queued")).all())


def _job(engine: Engine, job_id: int | None) -> Job:
    with Session(engine) as session:
        return session.get_one(Job, job_id)
