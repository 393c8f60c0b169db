"""Pushing recipients' codes to a messaging provider (Twilio, mocked with respx from its
documented shapes) through the outbox and the worker, with per-recipient status."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin import distribution, pushes
from plugin.db import session_scope
from plugin.errors import InvalidInput
from plugin.models import Job, RecipientDelivery, utcnow
from plugin.settings import Settings
from plugin.worker import JobContext, Worker
from tests.test_sync import drain
from tests.web.conftest import make_campaign, rules

pytestmark = pytest.mark.anyio
SID = "AC" + "0" * 32
MESSAGES = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"


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


async def test_an_outage_keeps_recipients_queued_for_the_retry(engine: Engine, shop_id: int, settings: Settings) -> None:
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
    assert deliveries(engine)["+15555550100"].status == "queued"
    with Session(engine) as session:
        job = session.exec(select(Job).where(col(Job.kind) == pushes.PUSH)).one()
    assert job.status in ("queued", "dead") and "Authenticate" in (job.last_error or "")


def test_unknown_providers_are_refused(engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1)
    with pytest.raises(InvalidInput), session_scope(engine) as session:
        pushes.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id, provider="carrier-pigeon")
