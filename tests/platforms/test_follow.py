"""The platform follows the merchant (issue 13): pause, resume, end and rule edits of a campaign
reach the sandbox's checkout through the outbox, in the same transaction as the change."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import col, select

from plugin import shared_secrets as keys
from plugin.campaigns.campaigns import change_status, update_campaign
from plugin.jobs.worker import Worker
from plugin.platforms import sync
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import AuditEvent, Campaign, Job
from plugin.store.sandbox_models import SandboxDiscount
from tests.ingest import SHOP, campaign_codes, make_campaign, running_app, sandbox_settings
from tests.platforms.test_sync import drain

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def checkout(client: httpx.AsyncClient, settings: Settings, code: str) -> httpx.Response:
    """A shopper's order at the sandbox's checkout with `code`, 80.00 before discount."""
    headers = {"X-Sandbox-Shop": SHOP, "X-Sandbox-Access-Token": keys.access_token(settings, SHOP)}
    return await client.post("/sandbox/api/orders", json={"codes": [code], "subtotal": "80.00"}, headers=headers)


def queued(engine: Engine, kind: str) -> list[Job]:
    with session_scope(engine) as session:
        return list(session.exec(select(Job).where(col(Job.kind) == kind, col(Job.status) == "queued")).all())


def act(engine: Engine, shop_id: int, campaign_id: int, action: str) -> None:
    with session_scope(engine) as session:
        change_status(session, shop_id=shop_id, campaign_id=campaign_id, action=action)


async def test_pause_resume_rule_edit_and_end_reach_the_sandbox_checkout(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=4, rules={"discount": {"type": "percentage", "percent": "20"}})
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    first, second, third, _ = (c.code for c in campaign_codes(engine, campaign_id))
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=())
        await drain(worker)

        act(engine, shop_id, campaign_id, "pause")
        assert len(queued(engine, sync.FOLLOW)) == 1  # queued with the status change
        await drain(worker)
        refused = await checkout(client, settings, first)
        assert refused.status_code == 422 and "paused" in refused.text

        act(engine, shop_id, campaign_id, "resume")
        await drain(worker)
        accepted = await checkout(client, settings, first)
        assert accepted.status_code == 201 and accepted.json()["discount_codes"][0]["amount"] == "16.00"

        with session_scope(engine) as session:
            update_campaign(
                session, shop_id=shop_id, campaign_id=campaign_id, rules={"discount": {"type": "percentage", "percent": "10"}}
            )
        assert len(queued(engine, sync.FOLLOW)) == 1
        await drain(worker)
        cheaper = await checkout(client, settings, second)
        assert cheaper.status_code == 201 and cheaper.json()["discount_codes"][0]["amount"] == "8.00"

        act(engine, shop_id, campaign_id, "end")
        await drain(worker)
        ended = await checkout(client, settings, third)
        assert ended.status_code == 422
    with session_scope(engine) as session:
        campaign = session.get_one(Campaign, campaign_id)
        discount = session.get_one(SandboxDiscount, int(campaign.platform_discount_id or 0))
        assert discount.status == "deleted"
        outcomes = session.exec(select(AuditEvent).where(col(AuditEvent.action) == "campaign.platform_followed")).all()
        assert [o.details["status"] for o in outcomes] == ["paused", "active", "active", "ended"]
        assert outcomes[-1].details["codes_deactivated"] == 4
    # every synced code of the ended campaign is recorded off the platform
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"deactivated"}


async def test_a_pause_undone_before_the_worker_runs_leaves_the_discount_live(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=1)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    (code,) = (c.code for c in campaign_codes(engine, campaign_id))
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=())
        await drain(worker)
        act(engine, shop_id, campaign_id, "pause")
        act(engine, shop_id, campaign_id, "resume")
        assert len(queued(engine, sync.FOLLOW)) == 1  # one job covers both: it reads the campaign when it runs
        await drain(worker)
        assert (await checkout(client, settings, code)).status_code == 201


def test_nothing_is_queued_before_the_discount_exists(engine: Engine, shop_id: int) -> None:
    campaign_id = make_campaign(engine, shop_id, count=1)
    act(engine, shop_id, campaign_id, "pause")
    assert queued(engine, sync.FOLLOW) == []  # the first push creates the discount from the rules of the day
