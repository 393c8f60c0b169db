"""WooCommerce follows the campaign (issue 13). WooCommerce has no campaign-level discount: each
code is its own coupon, so pause, resume and rule edits update every synced coupon in place by
its stored id (`POST coupons/batch` `update` items, at most 100 a batch), pause as `draft` (a
coupon WooCommerce no longer finds by its code, so its checkout refuses it), resume as `publish`;
end deletes them by id. The fake store answers in the documented REST v3 shapes (per-item `error`
objects inside a 200, 413 beyond the batch limit) and its checkout honours the coupon's status,
amount, minimum, limits and end. Faults: 5xx, 429, timeouts and answers lost after the store
committed, retried by the connector and then by the outbox, ending in the same state with no
duplicate coupon."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import Engine
from sqlmodel import col, select
from tenacity import wait_none

from connectors.woocommerce import WooCommerceConnector
from plugin.campaigns.campaigns import change_status, update_campaign
from plugin.campaigns.issuing import generate_codes
from plugin.jobs.worker import Worker
from plugin.platforms import installs, sync
from plugin.reconciliation import reconcile
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import AuditEvent, Code, Job
from tests.connectors.fakes.woocommerce import FakeWooCommerce
from tests.ingest import campaign_codes, make_campaign
from tests.platforms.test_sync import drain

pytestmark = pytest.mark.anyio

PERCENT_20: dict[str, Any] = {"discount": {"type": "percentage", "percent": "20"}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def fake(router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch) -> FakeWooCommerce:
    monkeypatch.setattr(WooCommerceConnector, "RETRY_WAIT", wait_none())  # no backoff between attempts
    fake = FakeWooCommerce()
    fake.install(router)
    return fake


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return replace(settings, public_url="https://app.test", sandbox_enabled=False)


@asynccontextmanager
async def worker_for(settings: Settings, engine: Engine) -> AsyncIterator[Worker]:
    async with httpx.AsyncClient() as http:
        yield Worker(JobContext(engine, settings, http), sweeps=())


def woo_campaign(engine: Engine, settings: Settings, fake: FakeWooCommerce, count: int) -> tuple[int, int]:
    """A WooCommerce shop and a campaign of `count` codes at 20 % off, its push queued."""
    with session_scope(engine) as session:
        shop = installs.save_install(session, settings, platform="woocommerce", credentials=fake.credentials(webhook_secret="s"))
        assert shop.id is not None
        shop_id = shop.id
    campaign_id = make_campaign(engine, shop_id, count=count, rules=PERCENT_20)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    return shop_id, campaign_id


async def pushed(engine: Engine, settings: Settings, fake: FakeWooCommerce, count: int = 3) -> tuple[int, int]:
    """A campaign whose codes are all coupons on the store; the fake's requests so far forgotten."""
    shop_id, campaign_id = woo_campaign(engine, settings, fake, count)
    async with worker_for(settings, engine) as worker:
        await drain(worker)
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"synced"}
    fake.requests.clear()
    for route in fake.routes.values():
        route.calls.clear()  # (CallList.reset clears a mock attribute, not the list)
    return shop_id, campaign_id


def act(engine: Engine, shop_id: int, campaign_id: int, action: str) -> None:
    with session_scope(engine) as session:
        change_status(session, shop_id=shop_id, campaign_id=campaign_id, action=action)


def edit(engine: Engine, shop_id: int, campaign_id: int, rules: dict[str, Any]) -> None:
    with session_scope(engine) as session:
        update_campaign(session, shop_id=shop_id, campaign_id=campaign_id, rules=rules)


def coupon(fake: FakeWooCommerce, row: Code) -> dict[str, Any]:
    """The coupon a code's stored id names (drafts included)."""
    return fake.coupons[int(row.platform_id or 0)]


def updates(fake: FakeWooCommerce) -> list[list[dict[str, Any]]]:
    batches = [json.loads(call.request.content) for call in fake.routes["batch"].calls]
    return [batch["update"] for batch in batches if "update" in batch]


def lookups(fake: FakeWooCommerce) -> int:
    return fake.routes["coupons"].call_count


async def run_all(engine: Engine, settings: Settings) -> None:
    async with worker_for(settings, engine) as worker:
        await drain(worker)


def jobs(engine: Engine, kind: str) -> list[Job]:
    with session_scope(engine) as session:
        rows = list(session.exec(select(Job).where(col(Job.kind) == kind).order_by(col(Job.id))).all())
        for row in rows:
            session.expunge(row)
        return rows


# --- the merchant's decisions reach the store's checkout --------------------------------------


async def test_pause_resume_rule_edit_and_end_reach_the_woocommerce_checkout(
    engine: Engine, app_settings: Settings, fake: FakeWooCommerce
) -> None:
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=4)
    first, second, third, fourth = campaign_codes(engine, campaign_id)
    assert fake.checkout(first.code, "80.00") == {"ok": True, "discount": "16.00"}

    act(engine, shop_id, campaign_id, "pause")
    await run_all(engine, app_settings)
    assert fake.checkout(second.code, "80.00") == {"ok": False, "reason": "does_not_exist"}
    assert {c["status"] for c in fake.coupons.values()} == {"draft"}
    assert lookups(fake) == 0  # every coupon by its stored id

    act(engine, shop_id, campaign_id, "resume")
    await run_all(engine, app_settings)
    assert fake.checkout(second.code, "80.00") == {"ok": True, "discount": "16.00"}

    edit(
        engine,
        shop_id,
        campaign_id,
        {
            "discount": {"type": "percentage", "percent": "10"},
            "currency": "USD",
            "basket": {"minimum_subtotal": 5000},
            "usage": {"uses_per_code": 3, "uses_per_customer": 1},
        },
    )
    await run_all(engine, app_settings)
    edited = coupon(fake, third)
    assert (edited["amount"], edited["minimum_amount"], edited["usage_limit"], edited["usage_limit_per_user"]) == (
        "10",
        "50.00",
        3,
        1,
    )
    assert fake.checkout(third.code, "40.00") == {"ok": False, "reason": "minimum_amount"}
    assert fake.checkout(third.code, "80.00") == {"ok": True, "discount": "8.00"}
    assert fake.checkout(third.code, "80.00") == {"ok": False, "reason": "usage_limit_per_user_reached"}

    edit(engine, shop_id, campaign_id, {"discount": {"type": "percentage", "percent": "10"}})  # the limits taken away
    await run_all(engine, app_settings)
    cleared = coupon(fake, fourth)
    assert (cleared["minimum_amount"], cleared["usage_limit"], cleared["usage_limit_per_user"]) == ("0", 1, 0)
    assert fake.checkout(fourth.code, "20.00") == {"ok": True, "discount": "2.00"}

    act(engine, shop_id, campaign_id, "end")
    await run_all(engine, app_settings)
    assert fake.coupons == {}
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"deactivated"}
    with session_scope(engine) as session:
        outcomes = session.exec(select(AuditEvent).where(col(AuditEvent.action) == "campaign.platform_followed")).all()
        assert [o.details["status"] for o in outcomes] == ["paused", "active", "active", "active", "ended"]
        assert outcomes[0].details["codes_updated"] == 4


async def test_a_paused_campaign_ends_by_the_stored_ids(engine: Engine, app_settings: Settings, fake: FakeWooCommerce) -> None:
    """A leaked campaign is paused, then ended: its drafts can't be found by code, so they are
    deleted by id; nothing is left on the store."""
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=3)
    act(engine, shop_id, campaign_id, "pause")
    await run_all(engine, app_settings)
    act(engine, shop_id, campaign_id, "end")
    await run_all(engine, app_settings)
    assert fake.coupons == {} and lookups(fake) == 0
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"deactivated"}


async def test_250_coupons_follow_in_batches_of_at_most_100(
    engine: Engine, app_settings: Settings, fake: FakeWooCommerce
) -> None:
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=250)
    act(engine, shop_id, campaign_id, "pause")
    await run_all(engine, app_settings)
    assert [len(batch) for batch in updates(fake)] == [100, 100, 50]  # the store answers 413 beyond 100
    assert {c["status"] for c in fake.coupons.values()} == {"draft"}
    assert {item["status"] for batch in updates(fake) for item in batch} == {"draft"}


async def test_codes_added_while_paused_wait_and_go_live_on_resume(
    engine: Engine, app_settings: Settings, fake: FakeWooCommerce
) -> None:
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=1)
    act(engine, shop_id, campaign_id, "pause")
    generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=2)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    await run_all(engine, app_settings)
    _, *added = campaign_codes(engine, campaign_id)
    assert [c.sync_status for c in added] == ["pending", "pending"]  # pushed now, they would take orders
    assert len(fake.coupons) == 1

    act(engine, shop_id, campaign_id, "resume")
    await run_all(engine, app_settings)
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"synced"}
    assert all(fake.checkout(c.code, "80.00")["ok"] for c in campaign_codes(engine, campaign_id))


async def test_a_voided_code_stays_paused_on_resume(engine: Engine, app_settings: Settings, fake: FakeWooCommerce) -> None:
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=2)
    act(engine, shop_id, campaign_id, "pause")
    await run_all(engine, app_settings)
    kept, voided = campaign_codes(engine, campaign_id)
    with session_scope(engine) as session:  # voided behind the deactivation job's back: the follow job alone must not revive it
        row = session.get_one(Code, voided.id)
        row.status = "voided"
        session.add(row)
    act(engine, shop_id, campaign_id, "resume")
    await run_all(engine, app_settings)
    assert coupon(fake, kept)["status"] == "publish" and coupon(fake, voided)["status"] == "draft"


# --- per-code outcome -------------------------------------------------------------------------


async def test_each_code_shows_its_own_outcome(engine: Engine, app_settings: Settings, fake: FakeWooCommerce) -> None:
    """A coupon deleted in the WordPress admin is created again with the new rules; one the store
    refuses to update keeps its error (and stays as it was) while the others are updated."""
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=3)
    deleted, refused, fine = campaign_codes(engine, campaign_id)
    del fake.coupons[int(deleted.platform_id or 0)]
    fake.fail_updates[int(refused.platform_id or 0)] = ("woocommerce_rest_invalid_coupon", "Coupon is locked.")

    edit(engine, shop_id, campaign_id, {"discount": {"type": "percentage", "percent": "10"}})
    await run_all(engine, app_settings)

    by_id = {c.id: c for c in campaign_codes(engine, campaign_id)}
    assert by_id[fine.id].sync_status == "synced" and by_id[fine.id].sync_error is None
    assert coupon(fake, by_id[fine.id])["amount"] == "10"
    recreated = by_id[deleted.id]
    assert recreated.sync_status == "synced" and recreated.platform_id != deleted.platform_id
    assert coupon(fake, recreated)["amount"] == "10"
    assert by_id[refused.id].sync_status == "synced"
    assert by_id[refused.id].sync_error == "Coupon is locked. [woocommerce_rest_invalid_coupon]"
    assert coupon(fake, refused)["amount"] == "20"
    (follow,) = jobs(engine, sync.FOLLOW)
    assert follow.status == "dead" and "not updated by the platform" in (follow.last_error or "")  # retried, then shown


async def test_a_code_without_a_stored_id_is_looked_up_by_code(
    engine: Engine, app_settings: Settings, fake: FakeWooCommerce
) -> None:
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=2)
    legacy, _ = campaign_codes(engine, campaign_id)
    with session_scope(engine) as session:
        row = session.get_one(Code, legacy.id)
        row.platform_id = None
        session.add(row)
    act(engine, shop_id, campaign_id, "pause")
    await run_all(engine, app_settings)
    assert lookups(fake) == 1 and {c["status"] for c in fake.coupons.values()} == {"draft"}
    (found,) = fake.coupons_with_code(legacy.code)
    assert campaign_codes(engine, campaign_id)[0].platform_id == str(found["id"])  # stored for next time


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param([httpx.Response(503), httpx.Response(502, text="Bad Gateway")], id="5xx"),
        pytest.param(
            [httpx.Response(429, headers={"Retry-After": "1"}, json={"code": "too_many", "message": "Slow down"})], id="429"
        ),
        pytest.param([httpx.ReadTimeout("slow")], id="timeout"),
        pytest.param([httpx.Response(500, json={"code": "internal", "message": "Boom"})] * 4, id="5xx-beyond-the-connector"),
    ],
)
async def test_a_pause_is_retried_through_faults(
    engine: Engine, app_settings: Settings, fake: FakeWooCommerce, faults: list[Any]
) -> None:
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=3)
    fake.script("batch", *faults)
    act(engine, shop_id, campaign_id, "pause")
    await run_all(engine, app_settings)
    assert {c["status"] for c in fake.coupons.values()} == {"draft"} and len(fake.coupons) == 3
    assert fake.routes["batch"].call_count == len(faults) + 1
    (follow,) = jobs(engine, sync.FOLLOW)
    assert follow.status == "done" and follow.attempts == (2 if len(faults) == 4 else 1)  # 4 = the connector's attempts


@pytest.mark.parametrize("lost", [1, 4], ids=["retried-by-the-connector", "retried-by-the-outbox"])
async def test_answers_lost_after_commit_end_in_the_same_state(
    engine: Engine, app_settings: Settings, fake: FakeWooCommerce, lost: int
) -> None:
    """A resume that pushes the codes left pending while paused: the update and the create are
    carried out by the store, their answers lost, and the retries find the same coupons."""
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=2)
    act(engine, shop_id, campaign_id, "pause")
    generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=2)
    edit(engine, shop_id, campaign_id, {"discount": {"type": "percentage", "percent": "10"}})
    await run_all(engine, app_settings)

    fake.lose("batch", lost)  # the resume's update
    act(engine, shop_id, campaign_id, "resume")
    await run_all(engine, app_settings)
    fake.lose("batch", lost)  # a later push's create
    generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=1)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    await run_all(engine, app_settings)

    rows = campaign_codes(engine, campaign_id)
    assert {c.sync_status for c in rows} == {"synced"} and len(fake.coupons) == 5
    for row in rows:
        (only,) = fake.coupons_with_code(row.code)  # no duplicate coupon
        assert only["id"] == int(row.platform_id or 0)
        assert (only["status"], only["amount"]) == ("publish", "10")


# --- reconciliation ---------------------------------------------------------------------------


def last_report(engine: Engine, campaign_id: int) -> dict[str, Any]:
    with session_scope(engine) as session:
        report = session.exec(
            select(AuditEvent).where(col(AuditEvent.action) == "reconcile.report").order_by(col(AuditEvent.id).desc())
        ).first()
        assert report is not None
        figures: dict[str, Any] = report.details["campaigns"][str(campaign_id)]
        return figures


async def test_a_draft_coupon_is_not_counted_live_while_the_campaign_is_active(
    engine: Engine, app_settings: Settings, fake: FakeWooCommerce
) -> None:
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=2)
    drafted, _ = campaign_codes(engine, campaign_id)
    coupon(fake, drafted)["status"] = "draft"  # unpublished in the WordPress admin
    with session_scope(engine) as session:
        reconcile.enqueue(session, shop_id)
    await run_all(engine, app_settings)
    figures = last_report(engine, campaign_id)
    assert (figures["missing"], figures["repaired"]["pushed"]) == (1, 1)
    (only,) = fake.coupons_with_code(drafted.code)  # published again by its id, not created twice
    assert only["status"] == "publish" and fake.checkout(drafted.code, "80.00")["ok"]


async def test_paused_coupons_count_as_correctly_paused_and_a_live_one_is_paused_again(
    engine: Engine, app_settings: Settings, fake: FakeWooCommerce
) -> None:
    shop_id, campaign_id = await pushed(engine, app_settings, fake, count=3)
    act(engine, shop_id, campaign_id, "pause")
    await run_all(engine, app_settings)
    republished, *_ = campaign_codes(engine, campaign_id)
    coupon(fake, republished)["status"] = "publish"  # published again in the WordPress admin
    with session_scope(engine) as session:
        reconcile.enqueue(session, shop_id)
    await run_all(engine, app_settings)
    figures = last_report(engine, campaign_id)
    assert (figures["missing"], figures["live_while_paused"], figures["repaired"]["follow_queued"]) == (0, 1, True)
    assert {c["status"] for c in fake.coupons.values()} == {"draft"} and len(fake.coupons) == 3
    assert fake.checkout(republished.code, "80.00") == {"ok": False, "reason": "does_not_exist"}
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"synced"}
