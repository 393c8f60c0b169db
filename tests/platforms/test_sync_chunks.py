"""A big push is cut into chunk jobs: every code reaches the platform once, a crash between
chunks loses and repeats nothing, and a small sync of another campaign runs beside or between
the chunks instead of behind the whole push."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import Engine, update
from sqlmodel import col, select

from plugin.jobs.worker import Worker
from plugin.platforms import sync
from plugin.settings import Settings
from plugin.store import outbox
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import Job, utcnow
from plugin.store.outbox import ClaimedJob
from tests.ingest import campaign_codes, make_campaign, running_app, sandbox_settings
from tests.platforms.test_sync import drain, platform_codes

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def push(engine: Engine, shop_id: int, campaign_id: int) -> None:
    with session_scope(engine) as session:
        assert sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id) is not None


def jobs(engine: Engine) -> list[Job]:
    with session_scope(engine) as session:
        return list(session.exec(select(Job).order_by(col(Job.id))).all())


def pending(engine: Engine, campaign_id: int) -> int:
    return sum(1 for c in campaign_codes(engine, campaign_id) if c.sync_status == "pending")


def pushed_once(engine: Engine, *campaign_ids: int) -> bool:
    """Every code of these campaigns is synced, and the platform was sent each exactly once."""
    codes = [c for campaign_id in campaign_ids for c in campaign_codes(engine, campaign_id)]
    held = platform_codes(engine)
    return all(c.sync_status == "synced" for c in codes) and {c.code: held[c.code].pushes for c in codes if c.code in held} == {
        c.code: 1 for c in codes
    }


async def test_a_big_push_runs_as_chunk_jobs_and_sends_every_code_once(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings, sync_chunk=100)
    campaign_id = make_campaign(engine, shop_id, count=450)
    push(engine, shop_id, campaign_id)
    async with running_app(settings, engine) as (_, client):
        await drain(Worker(JobContext(engine, settings, client), sweeps=()))
    assert pushed_once(engine, campaign_id)
    # 100 + 100 + 100 + 100 + 50: the last chunk came out short, so it queued nothing more
    assert [(j.kind, j.status, j.attempts) for j in jobs(engine)] == [(sync.PUSH, "done", 1)] * 5


async def test_a_chunk_whose_worker_died_after_queuing_the_rest_repeats_nothing(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings, sync_chunk=100)
    campaign_id = make_campaign(engine, shop_id, count=250)
    push(engine, shop_id, campaign_id)
    async with running_app(settings, engine) as (_, client):
        ctx = JobContext(engine, settings, client)
        (claimed,) = outbox.claim(engine, "doomed", timedelta(seconds=30))
        await sync.handle_push(ctx, claimed)  # the chunk and the rest's job commit; then the worker dies
        assert pending(engine, campaign_id) == 150
        with session_scope(engine) as session:  # ... and its lease runs out
            session.execute(update(Job).where(col(Job.id) == claimed.id).values(locked_until=utcnow() - timedelta(seconds=1)))
        await drain(Worker(ctx, sweeps=()))
    assert pushed_once(engine, campaign_id)
    assert {j.status for j in jobs(engine)} == {"done"}


async def test_a_small_sync_queued_during_a_big_one_runs_before_its_next_chunk(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    """One job at a time, oldest first: the rest of a big push queues behind what came meanwhile."""
    settings = sandbox_settings(settings, sync_chunk=100)
    big = make_campaign(engine, shop_id, count=500, name="Big")
    small = make_campaign(engine, shop_id, count=5, name="Small")
    push(engine, shop_id, big)
    push(engine, shop_id, small)
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=(), concurrency=1)
        assert await worker.run_once()  # the big push's first chunk
        assert pending(engine, big) == 400
        assert await worker.run_once()  # then the small one, before the big one's second chunk
        assert pending(engine, small) == 0 and pending(engine, big) == 400
        await drain(worker)
    assert pushed_once(engine, big, small)


async def test_a_small_sync_finishes_while_a_big_one_is_in_progress(engine: Engine, shop_id: int, settings: Settings) -> None:
    """The big push's first chunk waits until the small sync is done: a worker that ran them one
    after the other would never finish (the wait's limit fails the test)."""
    settings = sandbox_settings(settings, sync_chunk=100)
    big = make_campaign(engine, shop_id, count=300, name="Big")
    small = make_campaign(engine, shop_id, count=5, name="Small")
    push(engine, shop_id, big)
    push(engine, shop_id, small)
    small_done = asyncio.Event()
    big_pending_then: list[int] = []

    async def handle(ctx: JobContext, claimed: ClaimedJob) -> None:
        if claimed.payload["campaign_id"] == big and not small_done.is_set():
            await asyncio.wait_for(small_done.wait(), 5)
        await sync.handle_push(ctx, claimed)
        if claimed.payload["campaign_id"] == small:
            big_pending_then.append(pending(engine, big))
            small_done.set()

    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), handlers={sync.PUSH: handle}, sweeps=(), poll_interval=0.01)
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(1000):
                if all(j.status == "done" for j in jobs(engine)) or task.done():
                    break
                await asyncio.sleep(0.01)
        finally:
            worker.stop()
            await task
    assert big_pending_then == [300]  # the big push had not sent a code yet
    assert pushed_once(engine, big, small)
    # big: 100 + 100 + 100; small: 5. Each at its first attempt (a big push that gave up waiting would fail once)
    assert [(j.status, j.attempts) for j in jobs(engine)] == [("done", 1)] * 4
