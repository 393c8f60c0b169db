"""BigCommerce follows the campaign (issue 13): pause and end disable the coupon promotion in one
call (`PUT /v3/promotions/{id}` with its `status`), resume enables it, a rule edit updates it in
place (and a new per-code limit is carried in the stored discount id)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import respx
from sqlalchemy import Engine

from plugin.campaigns.campaigns import change_status, update_campaign
from plugin.jobs.worker import Worker
from plugin.platforms import installs, sync
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import Campaign
from tests.connectors.fakes.bigcommerce import FakeBigCommerce
from tests.ingest import campaign_codes, make_campaign
from tests.platforms.test_sync import drain

pytestmark = pytest.mark.anyio

BIGCOMMERCE = {"client_id": "bc-client-id", "client_secret": "bc-client-secret-0123456789abcdef0123"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


async def test_pause_resume_edit_and_end_act_on_the_promotion(
    engine: Engine, settings: Settings, router: respx.MockRouter
) -> None:
    settings = replace(
        settings, public_url="https://app.test", sandbox_enabled=False, connector_config={"bigcommerce": BIGCOMMERCE}
    )
    fake = FakeBigCommerce()
    fake.install(router)
    credentials = fake.credentials(webhook_secret="s" * 32)
    with session_scope(engine) as session:
        shop = installs.save_install(session, settings, platform="bigcommerce", credentials=credentials)
        assert shop.id is not None
        shop_id = shop.id
    campaign_id = make_campaign(engine, shop_id, count=3)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)

    def act(action: str) -> None:
        with session_scope(engine) as session:
            change_status(session, shop_id=shop_id, campaign_id=campaign_id, action=action)

    async with httpx.AsyncClient() as http:
        worker = Worker(JobContext(engine, settings, http), sweeps=())
        await drain(worker)
        (promotion_id,) = fake.promotions
        assert fake.promotions[promotion_id]["status"] == "ENABLED"

        act("pause")
        await drain(worker)
        assert fake.promotions[promotion_id]["status"] == "DISABLED"  # after the rules' update too

        act("resume")
        with session_scope(engine) as session:
            update_campaign(
                session,
                shop_id=shop_id,
                campaign_id=campaign_id,
                rules={"discount": {"type": "percentage", "percent": "15"}, "usage": {"uses_per_code": 2}},
            )
        await drain(worker)
        promotion = fake.promotions[promotion_id]
        assert promotion["status"] == "ENABLED"
        assert promotion["rules"][0]["action"]["cart_value"]["discount"] == {"percentage_amount": "15"}
        with session_scope(engine) as session:  # codes pushed from now on get the new per-code limit
            assert session.get_one(Campaign, campaign_id).platform_discount_id == f"{promotion_id}:2:0"

        act("end")
        await drain(worker)
    assert fake.promotions[promotion_id]["status"] == "DISABLED"
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"deactivated"}
