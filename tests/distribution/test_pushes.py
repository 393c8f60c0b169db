"""Pushing recipients' codes to a messaging provider (Twilio, mocked with respx from its
documented shapes) through the outbox and the worker, with per-recipient status."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from connectors.concurrency import reset_account_limits
from plugin.distribution import claims as distribution
from plugin.distribution import pushes
from plugin.errors import InvalidInput
from plugin.jobs.worker import Worker
from plugin.settings import Settings
from plugin.store import caches
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import Job, RecipientDelivery, utcnow
from tests.connectors.fakes.twilio import LOST, LOST_500, FakeTwilio, Scripted, check_against_the_contract
from tests.connectors.fakes.twilio import error as twilio_error
from tests.platforms.test_sync import drain
from tests.web.conftest import make_campaign, rules

pytestmark = pytest.mark.anyio
SID = "AC" + "0" * 32
MESSAGES = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    """PostgreSQL tests share one engine and reuse ids after each truncation: start each test
    without the previous test's cached rows (a real database never reuses an id). Each test also
    starts with Twilio's full concurrency (the account limit lives for the process)."""
    caches.bump()
    reset_account_limits()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def twilio_settings(settings: Settings) -> Settings:
    config = {"twilio": {"api_key": "auth-token", "account_sid": SID, "from": "+15005550006"}}
    return dataclasses.replace(settings, connector_config=config)


def deliveries(engine: Engine) -> dict[str, RecipientDelivery]:
    with Session(engine) as session:
        return {d.recipient: d for d in session.exec(select(RecipientDelivery)).all()}


async def test_codes_are_pushed_once_each_with_per_recipient_status(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = twilio_settings(settings)
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=5)
    people = ["+15555550100", "+15555550101", "+15555550199"]  # the last number is refused
    held = {}
    with session_scope(engine) as session:
        for person in people:
            held[person] = distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=person, now=utcnow())
        assert pushes.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id, provider="twilio") == 3
        assert pushes.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id, provider="twilio") == 0
    assert {d.status for d in deliveries(engine).values()} == {"queued"}
    sent: list[dict[str, list[str]]] = []

    def reply(request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        sent.append(form)
        if form["To"] == ["+15555550199"]:
            return httpx.Response(400, json={"code": 21211, "message": "The 'To' number is not valid.", "status": 400})
        return httpx.Response(201, json={"sid": f"SM{len(sent):032d}", "status": "queued"})

    with respx.mock(assert_all_called=True) as mock:
        mock.post(MESSAGES).mock(side_effect=reply)
        async with httpx.AsyncClient() as client:
            await drain(Worker(JobContext(engine, settings, client), sweeps=()))
    assert len(sent) == 3
    for form in sent:
        person = form["To"][0]
        assert held[person].display in form["Body"][0] and "/claim/" in form["Body"][0]
        assert form["StatusCallback"] == [f"{settings.public_url}/callbacks/twilio/{shop_id}"]
    got = deliveries(engine)
    assert {p: got[p].status for p in people} == {"+15555550100": "sent", "+15555550101": "sent", "+15555550199": "failed"}
    assert got["+15555550100"].provider_id and got["+15555550100"].provider_id.startswith("SM")
    assert "not valid" in (got["+15555550199"].error or "")
    assert pushes.delivery_counts(engine, shop_id=shop_id, campaign_id=campaign_id) == {"twilio": {"sent": 2, "failed": 1}}
    with Session(engine) as session:
        assert session.exec(select(Job.status).where(col(Job.kind) == pushes.PUSH)).all() == ["done"]
    # a new recipient later: only they are queued and sent
    with session_scope(engine) as session:
        distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient="+15555550102", now=utcnow())
        assert pushes.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id, provider="twilio") == 1


async def test_an_outage_keeps_recipients_unsettled_for_the_retry(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = twilio_settings(settings)
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2)
    with session_scope(engine) as session:
        distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient="+15555550100", now=utcnow())
        pushes.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id, provider="twilio")
    with respx.mock(assert_all_called=True) as mock:
        mock.post(MESSAGES).mock(return_value=httpx.Response(401, json={"code": 20003, "message": "Authenticate"}))
        async with httpx.AsyncClient() as client:
            worker = Worker(JobContext(engine, settings, client), sweeps=())
            assert await worker.run_once()
    # not failed; `sending` since its attempt began: the retry looks for the message before sending
    assert deliveries(engine)["+15555550100"].status == "sending"
    with Session(engine) as session:
        job = session.exec(select(Job).where(col(Job.kind) == pushes.PUSH)).one()
    assert job.status in ("queued", "dead") and "Authenticate" in (job.last_error or "")


def test_unknown_providers_are_refused(engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1)
    with pytest.raises(InvalidInput), session_scope(engine) as session:
        pushes.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id, provider="carrier-pigeon")


KLAVIYO = "https://a.klaviyo.com/api/profile-bulk-import-jobs"
FIXTURES = Path(__file__).parents[1] / "connectors" / "fixtures" / "klaviyo"


def klaviyo_job(status: str, failed: int = 0) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / "bulk_import_job.json").read_text())
    document["data"]["attributes"].update(status=status, total_count=2, completed_count=2 - failed, failed_count=failed)
    return document


async def test_an_asynchronous_import_becomes_per_recipient_results(engine: Engine, shop_id: int, settings: Settings) -> None:
    """Klaviyo takes the recipients into an import job (accepted); the follow-up job reads the
    finished job and its import errors (delivered / failed), retrying while it still runs."""
    settings = dataclasses.replace(settings, connector_config={"klaviyo": {"api_key": "pk_test"}})
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    with session_scope(engine) as session:
        for person in ("good@example.com", "bad@example.com"):
            distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=person, now=utcnow())
        pushes.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id, provider="klaviyo")
    job_id = klaviyo_job("queued")["data"]["id"]
    error: dict[str, Any] = json.loads((FIXTURES / "import_error.json").read_text())
    error["attributes"]["original_payload"] = {"email": "bad@example.com"}
    with respx.mock(assert_all_called=True) as mock:
        mock.post(KLAVIYO).mock(return_value=httpx.Response(202, json=klaviyo_job("queued")))
        polled = mock.get(f"{KLAVIYO}/{job_id}").mock(
            side_effect=[
                httpx.Response(200, json=klaviyo_job("processing")),
                httpx.Response(200, json=klaviyo_job("complete", 1)),
            ]
        )
        mock.get(url__startswith=f"{KLAVIYO}/{job_id}/import-errors").mock(
            return_value=httpx.Response(200, json={"data": [error], "links": {"next": None}})
        )
        async with httpx.AsyncClient() as client:
            worker = Worker(JobContext(engine, settings, client), sweeps=())
            assert await worker.run_once()  # the push
            assert {d.status for d in deliveries(engine).values()} == {"accepted"}
            assert {d.provider_id for d in deliveries(engine).values()} == {job_id}
            await drain(worker)
    assert polled.call_count == 2  # still processing, then complete
    got = deliveries(engine)
    assert (got["good@example.com"].status, got["bad@example.com"].status) == ("delivered", "failed")
    assert got["bad@example.com"].error == "Invalid email address"
    with Session(engine) as session:
        assert sorted(session.exec(select(Job.kind, Job.status)).all()) == [(pushes.PUSH, "done"), (pushes.FOLLOW, "done")]


# --- exactly once under faults (Twilio, against the fake that records what it created) ----------

FAULTS = {
    "POST": [LOST, LOST_500, "500", "429", "timeout"],  # LOST*: created, then the answer is lost
    "GET": ["500", "429", "timeout"],
}


def seeded_faults(rate: float, kinds: dict[str, list[str]], seed: int = 1) -> Callable[[str, str, int], Scripted | None]:
    """A fault for the n-th request of a method for a number, drawn from (seed, method, number, n):
    the same mix whatever order the requests arrive in."""

    def fault(method: str, to: str, n: int) -> Scripted | None:
        draw = random.Random(f"{seed}:{method}:{to}:{n}")
        if not kinds.get(method) or draw.random() >= rate:
            return None
        kind = draw.choice(kinds[method])
        if kind == "500":
            return twilio_error("error_20500.json")
        if kind == "429":
            return twilio_error("error_20429.json")
        if kind == "timeout":
            return httpx.ReadTimeout("read timed out")  # the request left; nothing was created
        return kind  # type: ignore[return-value]  # LOST or LOST_500

    return fault


def fake_settings(settings: Settings) -> Settings:
    config = {"twilio": {"api_key": FakeTwilio.AUTH_TOKEN, "account_sid": FakeTwilio.ACCOUNT_SID, "from": "+14155552345"}}
    return dataclasses.replace(settings, connector_config=config)


def claim_all(engine: Engine, shop_id: int, campaign_id: int, people: list[str]) -> dict[str, distribution.Claim]:
    held = {}
    with session_scope(engine) as session:
        for person in people:
            held[person] = distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=person, now=utcnow())
        assert pushes.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id, provider="twilio") == len(people)
    return held


@asynccontextmanager
async def pushed_through_the_worker(engine: Engine, settings: Settings, fake: FakeTwilio) -> AsyncIterator[None]:
    """Drain the worker against the fake; the body reads the fake's calls (gone once it stops)."""
    with fake.router:
        async with httpx.AsyncClient() as client:
            await drain(Worker(JobContext(engine, settings, client), sweeps=()))
        check_against_the_contract(fake)
        yield
    with Session(engine) as session:
        assert session.exec(select(Job.status).where(col(Job.kind) == pushes.PUSH)).all() == ["done"]


def assert_each_got_exactly_one(engine: Engine, fake: FakeTwilio, held: dict[str, distribution.Claim], refused: set[str]) -> None:
    """The merchant's promise: every recipient gets their code once, and each delivery says truly
    what happened (sent, with the message that was created; failed, and nothing was created)."""
    got = deliveries(engine)
    for person, claim_ in held.items():
        created = fake.created_for(person)
        if person in refused:
            assert (got[person].status, created) == ("failed", []), person
            assert "21211" in (got[person].error or "")
        else:
            assert len(created) == 1, (person, len(created))
            assert claim_.display in created[0]["body"]
            assert (got[person].status, got[person].provider_id) == ("sent", created[0]["sid"]), person


@pytest.mark.parametrize("kinds", [FAULTS, {"POST": [LOST, LOST_500]}], ids=["mixed", "lost-after-commit"])
async def test_every_recipient_gets_exactly_one_message_at_20_percent_faults(
    engine: Engine, shop_id: int, settings: Settings, kinds: dict[str, list[str]]
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=200)
    people = [f"+1555555{n:04d}" for n in range(200)]
    held = claim_all(engine, shop_id, campaign_id, people)
    fake = FakeTwilio()
    fake.invalid = set(people[::20])  # ten numbers Twilio refuses (21211)
    fake.fault = seeded_faults(0.2, kinds)

    async with pushed_through_the_worker(engine, fake_settings(settings), fake):
        posts, lookups = fake.router["messages"].call_count, fake.router["list"].call_count

    assert_each_got_exactly_one(engine, fake, held, fake.invalid)
    never_created = fake.faults["POST 500"] + fake.faults["POST 429"] + fake.faults["POST ReadTimeout"]
    assert posts == len(people) + never_created  # one send each, plus only what Twilio never created
    lost = fake.faults["POST lost"] + fake.faults["POST lost_500"]
    assert lost >= 15 and lookups >= lost  # each lost answer was looked up, not resent
    if kinds is FAULTS:
        assert all(fake.faults[f"POST {k}"] for k in ("lost", "lost_500", "500", "429", "ReadTimeout"))
        assert all(fake.faults[f"GET {k}"] for k in ("500", "429", "ReadTimeout"))
    else:
        assert posts == len(people)  # every lost answer was found: not one message sent twice
    assert pushes.delivery_counts(engine, shop_id=shop_id, campaign_id=campaign_id) == {"twilio": {"sent": 190, "failed": 10}}


async def test_a_crash_after_the_send_is_looked_up_not_repeated(engine: Engine, shop_id: int, settings: Settings) -> None:
    """The worker died after Twilio created the message, before the answer was written: the
    delivery was left `sending`; the next run finds the message and sends nothing."""
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2)
    person = "+15555550100"
    held = claim_all(engine, shop_id, campaign_id, [person])
    first = utcnow()
    with session_scope(engine) as session:
        session.execute(update(RecipientDelivery).values(status="sending", updated_at=first))
    fake = FakeTwilio()
    message = fake.add_message(person, f"Your code: {held[person].display}", first)

    async with pushed_through_the_worker(engine, fake_settings(settings), fake):
        assert (fake.router["list"].call_count, fake.router["messages"].call_count) == (1, 0)
    got = deliveries(engine)[person]
    assert (got.status, got.provider_id) == ("sent", message["sid"])
