"""Pushing codes to the sandbox store through the outbox and the worker, idempotently."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, update
from sqlmodel import col, select
from tenacity import wait_none

from plugin.jobs.worker import Worker
from plugin.metrics import JOB_FAILURES, SYNC_FAILURES
from plugin.platforms import sync
from plugin.sandbox import store
from plugin.settings import Settings
from plugin.store import outbox
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import Campaign, Code, Job, utcnow
from plugin.store.sandbox_models import SandboxCode, SandboxDiscount
from tests.ingest import SHOP, campaign_codes, make_campaign, running_app, sandbox_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def platform_codes(engine: Engine) -> dict[str, SandboxCode]:
    with session_scope(engine) as session:
        return {c.code_key: c for c in session.exec(select(SandboxCode)).all()}


async def drain(worker: Worker, rounds: int = 500) -> None:
    """Run jobs until none is due, letting retries come due at once."""
    for _ in range(rounds):
        engine = worker.ctx.engine
        with session_scope(engine) as session:
            session.execute(update(Job).where(col(Job.status) == "queued").values(run_after=utcnow() - timedelta(days=1)))
        if not await worker.run_once():
            with session_scope(engine) as session:
                if not session.exec(select(Job.id).where(col(Job.status).in_(["queued", "running"]))).first():
                    return
    raise AssertionError("jobs did not finish")


async def test_a_campaign_is_pushed_in_chunks_and_marked_synced(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=600)
    with session_scope(engine) as session:
        assert sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id) is not None
        assert sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id) is None  # one queued push covers all
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=())
        await drain(worker)
    codes = campaign_codes(engine, campaign_id)
    assert {c.sync_status for c in codes} == {"synced"} and all(c.platform_id and c.synced_at for c in codes)
    held = platform_codes(engine)
    assert set(held) == {c.code for c in codes}
    assert {c.pushes for c in held.values()} == {1}
    with session_scope(engine) as session:
        discount_id = session.get_one(Campaign, campaign_id).platform_discount_id
        assert discount_id is not None
        assert session.exec(select(func.count()).select_from(SandboxDiscount)).one() == 1
        assert session.exec(select(Job.status)).all() == ["done"]


async def test_a_code_the_platform_refuses_fails_with_its_message_and_can_be_resynced(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=3)
    taken = campaign_codes(engine, campaign_id)[0].code
    with session_scope(engine) as session:  # the merchant made that code by hand in another discount
        other, _ = store.save_discount(session, SHOP, {"kind": "percentage", "value": 5})
        assert other.id is not None
        store.add_codes(session, SHOP, other.id, [{"code": taken}], 250)
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    refused_before = SYNC_FAILURES.labels("sandbox", "code")._value.get()
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=())
        await drain(worker)
        failed = [c for c in campaign_codes(engine, campaign_id) if c.sync_status == "failed"]
        assert [c.code for c in failed] == [taken] and "another discount" in (failed[0].sync_error or "")
        assert SYNC_FAILURES.labels("sandbox", "code")._value.get() == refused_before + 1  # /metrics counts it
        with session_scope(engine) as session:
            # the merchant moves it to our discount on the platform
            session.execute(
                update(SandboxCode)
                .where(col(SandboxCode.code_key) == taken)
                .values(discount_id=int(session.get_one(Campaign, campaign_id).platform_discount_id or 0))
            )
            assert sync.resync(session, shop_id=shop_id, campaign_id=campaign_id) == 1
        await drain(worker)
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"synced"}


async def test_a_re_run_pushes_only_pending_codes_and_existing_codes_count_as_synced(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=300)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=())
        await drain(worker)
        # a crash after the platform answered but before we wrote it: the codes look pending
        first = campaign_codes(engine, campaign_id)[:10]
        with session_scope(engine) as session:
            session.execute(update(Code).where(col(Code.id).in_([c.id for c in first])).values(sync_status="pending"))
            sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
        await drain(worker)
    held = platform_codes(engine)
    assert len(held) == 300
    assert sorted(c.pushes for c in held.values()).count(2) == 10  # only those went again
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"synced"}


async def test_injected_platform_failures_still_sync_every_code(engine: Engine, shop_id: int, settings: Settings) -> None:
    """30% of requests answer 5xx, some hang past the client's timeout, and a low rate limit
    answers 429 with Retry-After: every code ends up synced, each held once by the platform."""
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=2000)
    with session_scope(engine) as session:
        store.set_knobs(
            session,
            SHOP,
            {"api_fail_rate": 0.3, "api_timeout_rate": 0.05, "slow_seconds": 0.3, "rate_limit": 15, "batch_limit": 100},
        )
        job_id = sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
        session.execute(update(Job).where(col(Job.id) == job_id).values(max_attempts=200))
    import connectors.sandbox as sandbox_connector

    calls_before = SYNC_FAILURES.labels("sandbox", "call")._value.get()
    retried_before = JOB_FAILURES.labels(sync.PUSH, "queued")._value.get()
    async with running_app(settings, engine) as (_, client):
        original = sandbox_connector.SandboxConnector
        worker = Worker(JobContext(engine, settings, client), sweeps=())

        class Fast(original):  # type: ignore[misc, valid-type]
            BATCH_SIZE = 100
            TIMEOUT = __import__("httpx").Timeout(0.1)

            def __init__(self, *args: object, **kwargs: object) -> None:
                # no retries inside the connector: every failure reaches the outbox
                super().__init__(*args, wait=wait_none(), max_attempts=1, **kwargs)  # type: ignore[arg-type]

        sandbox_connector.SandboxConnector = Fast  # type: ignore[misc]
        try:
            await drain(worker, rounds=2000)
        finally:
            sandbox_connector.SandboxConnector = original  # type: ignore[misc]
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"synced"}
    held = platform_codes(engine)
    assert len(held) == 2000
    with session_scope(engine) as session:
        (job,) = session.exec(select(Job)).all()
        assert job.status == "done" and job.attempts > 1  # it really failed on the way
    # and /metrics saw it: each failed attempt as a failed sync call and a retried job
    retries = job.attempts - 1
    assert JOB_FAILURES.labels(sync.PUSH, "queued")._value.get() - retried_before == retries
    assert SYNC_FAILURES.labels("sandbox", "call")._value.get() - calls_before == retries


async def test_voided_and_expired_codes_are_deactivated(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=4)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=())
        await drain(worker)
        voided, expired, *_ = campaign_codes(engine, campaign_id)
        with session_scope(engine) as session:
            session.execute(update(Code).where(col(Code.id) == voided.id).values(status="voided"))
            session.execute(update(Code).where(col(Code.id) == expired.id).values(expires_at=utcnow() - timedelta(days=1)))
            sync.enqueue_deactivate(session, shop_id=shop_id, campaign_id=campaign_id)
        await drain(worker)
    statuses = {c.code: c.sync_status for c in campaign_codes(engine, campaign_id)}
    assert statuses[voided.code] == statuses[expired.code] == "deactivated"
    held = platform_codes(engine)
    assert {k for k, c in held.items() if not c.active} == {voided.code, expired.code}


def test_outbox_enqueue_is_part_of_the_callers_transaction(engine: Engine, shop_id: int) -> None:
    campaign_id = make_campaign(engine, shop_id, count=1)
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
        raise RuntimeError
    assert outbox.claim(engine, "w", timedelta(seconds=5)) == []


def _campaign_with(rules: dict[str, object] | None) -> Campaign:
    return Campaign(id=7, shop_id=1, name="Spring", currency="GBP", rules=rules or {})


def test_discount_spec_maps_what_platforms_can_hold() -> None:
    spec = sync.discount_spec(
        _campaign_with(
            {
                "currency": "GBP",
                "discount": {"type": "percentage", "percent": "12.5"},
                "usage": {"uses_per_code": 1, "uses_per_customer": 1},
                "basket": {"minimum_quantity": 2, "eligible": {"product_ids": ["p1", "p2"], "collection_ids": ["c1"]}},
                "stacking": {"with_other_codes": True, "with_automatic_discounts": False},
            }
        )
    )
    assert (spec.kind, spec.value, spec.currency) == ("percentage", 12, "GBP")  # truncated, never more
    assert spec.once_per_customer and spec.minimum_quantity == 2
    assert (spec.product_ids, spec.collection_ids) == (("p1", "p2"), ("c1",))
    assert (spec.combines_with_codes, spec.combines_with_automatic) == (True, False)


def test_finer_item_rules_stay_ours_to_check() -> None:
    spec = sync.discount_spec(
        _campaign_with(
            {
                "currency": "GBP",
                "discount": {"type": "fixed", "amount": 500},
                "basket": {"eligible": {"product_ids": ["p1"]}, "excluded": {"skus": ["gift"]}},
            }
        )
    )
    assert (spec.kind, spec.value) == ("fixed_amount", 500)
    assert spec.product_ids == () and not spec.once_per_customer


@pytest.mark.parametrize(
    ("rules", "why"),
    [
        (None, "no rules yet"),
        (
            {
                "currency": "GBP",
                "discount": {"type": "tiered", "tiers": [{"min_subtotal": 5000, "reward": {"type": "fixed", "amount": 500}}]},
            },
            "tiered discount can't be held",
        ),
    ],
)
def test_campaigns_a_platform_cannot_hold_are_refused_before_any_push(rules: dict[str, object] | None, why: str) -> None:
    with pytest.raises(sync.NotSyncable, match=why):
        sync.discount_spec(_campaign_with(rules))


async def test_ending_a_campaign_removes_all_its_codes_from_the_platform(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    from plugin.campaigns.campaigns import change_status

    settings = sandbox_settings(settings)
    campaign_id = make_campaign(engine, shop_id, count=5)
    with session_scope(engine) as session:
        sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=())
        await drain(worker)
        assert all(c.active for c in platform_codes(engine).values())
        with session_scope(engine) as session:
            change_status(session, shop_id=shop_id, campaign_id=campaign_id, action="end")
            queued = session.exec(select(Job).where(col(Job.kind) == sync.FOLLOW, col(Job.status) == "queued")).all()
            assert len(queued) == 1
        await drain(worker)
    assert {c.sync_status for c in campaign_codes(engine, campaign_id)} == {"deactivated"}
    with session_scope(engine) as session:  # the whole discount is deleted in one call: its codes with it
        assert session.exec(select(SandboxDiscount.status)).all() == ["deleted"]


def test_an_uninstalled_shop_refuses_syncs_instead_of_queueing_doomed_jobs(engine: Engine, shop_id: int) -> None:
    from plugin.campaigns import campaigns
    from plugin.errors import Conflict
    from plugin.store.models import Shop

    campaign_id = make_campaign(engine, shop_id, count=3)
    with session_scope(engine) as session:
        shop = session.get_one(Shop, shop_id)
        shop.uninstalled_at = utcnow()
        session.add(shop)
        session.get_one(Campaign, campaign_id).platform_discount_id = "gid://discount/1"
    for queue in (sync.enqueue_push, sync.enqueue_deactivate, sync.resync):
        with pytest.raises(Conflict) as refused, session_scope(engine) as session:
            queue(session, shop_id=shop_id, campaign_id=campaign_id)
        assert refused.value.reason == "shop_uninstalled" and "install it again" in refused.value.message
    with session_scope(engine) as session:  # ending still works: it only can't reach the platform
        assert campaigns.change_status(session, shop_id=shop_id, campaign_id=campaign_id, action="end").status == "ended"
    with session_scope(engine) as session:
        assert session.exec(select(func.count()).select_from(Job)).one() == 0
        assert {c.sync_status for c in session.exec(select(Code)).all()} == {"pending"}  # resync's marks rolled back
