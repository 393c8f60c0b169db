"""The Shopify discount follows the campaign (issue 13): pause, resume and end act on the whole
discount by its stored id in one call, a rule edit updates it in place (the update carries the
id), a type change replaces it without a code ever being live twice, and a lost answer or a 5xx
is retried through the outbox. Every document is validated by the fake against the pinned schema."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import respx
from sqlalchemy import Engine
from sqlmodel import col, select
from tenacity import wait_none

from connectors.shopify import ShopifyConnector
from plugin.campaigns.campaigns import change_status, update_campaign
from plugin.platforms import sync
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.models import Campaign, Job, Shop, utcnow
from tests.connectors.fakes import shopify as shopify_fakes
from tests.connectors.fakes.shopify import ShopifyFake
from tests.ingest import campaign_codes
from tests.platforms.test_sync import drain
from tests.platforms.test_sync_shopify import shopify_campaign, worker_for

pytestmark = pytest.mark.anyio


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


PERCENT_20 = {"discount": {"type": "percentage", "percent": "20"}}


async def pushed_campaign(engine: Engine, settings: Settings, fake: ShopifyFake) -> tuple[int, int, str]:
    """A Shopify campaign whose codes are all on its discount; (shop id, campaign id, discount id),
    the fake's calls so far forgotten."""
    campaign_id = await shopify_campaign(engine, settings, fake)
    with session_scope(engine) as session:
        campaign = session.get_one(Campaign, campaign_id)
        update_campaign(session, shop_id=campaign.shop_id, campaign_id=campaign_id, rules=PERCENT_20)  # before any discount
        shop_id = campaign.shop_id
    async with worker_for(settings, engine) as worker:
        await drain(worker)
    with session_scope(engine) as session:
        discount_id = session.get_one(Campaign, campaign_id).platform_discount_id
    assert discount_id is not None and fake.discounts[discount_id].input["customerGets"]["value"] == {"percentage": 0.2}
    fake.calls.clear()
    return shop_id, campaign_id, discount_id


def act(engine: Engine, shop_id: int, campaign_id: int, action: str) -> None:
    with session_scope(engine) as session:
        change_status(session, shop_id=shop_id, campaign_id=campaign_id, action=action)


def edit(engine: Engine, shop_id: int, campaign_id: int, rules: dict[str, object]) -> None:
    with session_scope(engine) as session:
        update_campaign(session, shop_id=shop_id, campaign_id=campaign_id, rules=rules)


async def test_pause_resume_and_end_act_on_the_whole_discount_by_its_id(
    engine: Engine, app_settings: Settings, fake: ShopifyFake
) -> None:
    shop_id, campaign_id, discount_id = await pushed_campaign(engine, app_settings, fake)
    async with worker_for(app_settings, engine) as worker:
        act(engine, shop_id, campaign_id, "pause")
        await drain(worker)
        paused = [(c.operation, c.variables["id"]) for c in fake.calls]
        assert fake.discounts[discount_id].status == "EXPIRED"
        fake.calls.clear()

        act(engine, shop_id, campaign_id, "resume")
        await drain(worker)
        resumed = [(c.operation, c.variables["id"]) for c in fake.calls]
        assert fake.discounts[discount_id].status == "ACTIVE"
        fake.calls.clear()

        act(engine, shop_id, campaign_id, "end")
        await drain(worker)
    # stopped first, then the rules, then stopped again (an update of its dates may revive it)
    assert paused == [
        ("discountCodeDeactivate", discount_id),
        ("discountCodeBasicUpdate", discount_id),
        ("discountCodeDeactivate", discount_id),
    ]
    assert resumed == [("discountCodeBasicUpdate", discount_id), ("discountCodeActivate", discount_id)]
    # one call for every code: no search, no per-code work
    assert [(c.operation, c.variables["id"]) for c in fake.calls] == [("discountCodeDelete", discount_id)]
    assert fake.discounts == {}
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"deactivated"}


async def test_a_rule_edit_updates_the_discount_in_place_by_its_id(
    engine: Engine, app_settings: Settings, fake: ShopifyFake
) -> None:
    shop_id, campaign_id, discount_id = await pushed_campaign(engine, app_settings, fake)
    edit(
        engine,
        shop_id,
        campaign_id,
        {"discount": {"type": "percentage", "percent": "10"}, "usage": {"uses_per_customer": 1}},
    )
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    (update, activate) = fake.calls
    assert update.operation == "discountCodeBasicUpdate" and update.variables["id"] == discount_id
    assert activate.operation == "discountCodeActivate"
    held = fake.discounts[discount_id].input
    assert held["customerGets"]["value"] == {"percentage": 0.1} and held["appliesOncePerCustomer"] is True
    assert list(fake.discounts) == [discount_id]  # the same discount, no new one


async def test_a_type_change_replaces_the_discount_without_a_code_live_twice(
    engine: Engine, app_settings: Settings, fake: ShopifyFake
) -> None:
    shop_id, campaign_id, old_id = await pushed_campaign(engine, app_settings, fake)
    old_marker = campaign(engine, campaign_id).platform_discount_marker
    codes_on_old = set(fake.discounts[old_id].codes)
    edit(engine, shop_id, campaign_id, {"discount": {"type": "free_shipping"}})
    stored = campaign(engine, campaign_id)
    assert stored.platform_discount_id is None and stored.platform_discount_marker is None  # let go in the edit's transaction
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    operations = [c.operation for c in fake.calls]
    # the old discount (every code with it) is gone before the new one is made and filled
    assert operations[:2] == ["discountCodeDelete", "discountCodeFreeShippingCreate"]
    assert fake.calls[0].variables["id"] == old_id
    assert set(operations[2:]) <= {"discountRedeemCodeBulkAdd", "discountRedeemCodeBulkCreation"}
    (new_id,) = fake.discounts  # exactly one discount: no overlap, no orphan
    new = campaign(engine, campaign_id)
    assert new_id != old_id and new.platform_discount_id == new_id and fake.discounts[new_id].kind == "DiscountCodeFreeShipping"
    assert new.platform_discount_marker not in (None, old_marker)
    moved = set(fake.discounts[new_id].codes) - {str(new.platform_discount_marker).casefold()}
    assert moved == codes_on_old - {str(old_marker).casefold()}
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"synced"}


async def test_a_paused_campaigns_replacement_discount_is_created_switched_off(
    engine: Engine, app_settings: Settings, fake: ShopifyFake
) -> None:
    shop_id, campaign_id, old_id = await pushed_campaign(engine, app_settings, fake)
    act(engine, shop_id, campaign_id, "pause")
    edit(engine, shop_id, campaign_id, {"discount": {"type": "free_shipping"}})
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    (new_id,) = fake.discounts
    assert new_id != old_id and fake.discounts[new_id].status == "EXPIRED"
    operations = [c.operation for c in fake.calls]
    create = operations.index("discountCodeFreeShippingCreate")
    assert operations[create + 1] == "discountCodeDeactivate"  # before any code is added to it


@pytest.mark.parametrize(
    "fault",
    [httpx.Response(502, text="Bad Gateway"), httpx.Response(429, headers={"Retry-After": "0"}), httpx.ReadTimeout],
)
async def test_a_lost_or_refused_answer_is_retried_until_the_platform_follows(
    engine: Engine, app_settings: Settings, fake: ShopifyFake, monkeypatch: pytest.MonkeyPatch, fault: object
) -> None:
    monkeypatch.setattr(ShopifyConnector, "MAX_ATTEMPTS", 1)  # the connector gives up at once: the outbox retries
    shop_id, campaign_id, _ = await pushed_campaign(engine, app_settings, fake)
    act(engine, shop_id, campaign_id, "end")
    fake.lose_answer(fault)  # type: ignore[arg-type]  # the delete commits; its answer never reaches us
    async with worker_for(app_settings, engine) as worker:
        await drain(worker)
    assert fake.discounts == {}
    assert [c.operation for c in fake.calls] == ["discountCodeDelete", "discountCodeDelete"]  # gone counts as done
    with session_scope(engine) as session:
        job = session.exec(select(Job).where(col(Job.kind) == sync.FOLLOW)).one()
        assert (job.status, job.attempts) == ("done", 2)
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"deactivated"}


async def test_a_change_after_uninstall_queues_nothing(engine: Engine, app_settings: Settings, fake: ShopifyFake) -> None:
    shop_id, campaign_id, _ = await pushed_campaign(engine, app_settings, fake)
    with session_scope(engine) as session:
        session.get_one(Shop, shop_id).uninstalled_at = utcnow()
    act(engine, shop_id, campaign_id, "pause")
    with session_scope(engine) as session:
        assert not session.exec(select(Job).where(col(Job.kind) == sync.FOLLOW)).all()


def campaign(engine: Engine, campaign_id: int) -> Campaign:
    with session_scope(engine) as session:
        return session.get_one(Campaign, campaign_id)
