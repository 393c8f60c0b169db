"""`webhook_processing = "worker"`: web processes only verify and store; the workers' intake turns
stored deliveries into redemptions, exactly once however many intakes run at once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func
from sqlmodel import col, select

from plugin.jobs.worker import Worker
from plugin.orders import webhooks
from plugin.orders.ingest import intake
from plugin.orders.orders import Processor
from plugin.settings import Settings
from plugin.store.db import session_scope, write_cursor
from plugin.store.jobcontext import JobContext
from plugin.store.models import Redemption, WebhookEvent
from tests.ingest import campaign_codes, make_campaign, running_app, sandbox_settings
from tests.orders.test_webhooks import headers, order_body

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def statuses(engine: Engine) -> list[str]:
    with session_scope(engine) as session:
        return list(session.exec(select(WebhookEvent.status).order_by(col(WebhookEvent.id))).all())


def redemptions(engine: Engine) -> list[tuple[str, str]]:
    with session_scope(engine) as session:
        rows = session.exec(select(Redemption.order_id, Redemption.code).order_by(col(Redemption.order_id))).all()
    return [(o, c) for o, c in rows]


async def deliver(client: httpx.AsyncClient, settings: Settings, order_id: int, code: str, *, delivery_id: str) -> None:
    body = order_body(order_id, [code])
    response = await client.post("/webhooks/sandbox", content=body, headers=headers(settings, body, delivery_id=delivery_id))
    assert response.status_code == 200


async def test_the_web_only_stores_and_the_intake_processes(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings, webhook_processing="worker")
    campaign_id = make_campaign(engine, shop_id, count=3)
    codes = [c.code for c in campaign_codes(engine, campaign_id)]
    async with running_app(settings, engine) as (_, client):
        await deliver(client, settings, 1001, codes[0], delivery_id="d-1")
        await deliver(client, settings, 1002, codes[1], delivery_id="d-2")
        await deliver(client, settings, 1001, codes[0], delivery_id="d-1")  # a retry: stored once
        assert statuses(engine) == ["received", "received"]  # answered, not processed by the web
        processor = Processor(engine, settings, client)
        assert await intake(processor) == 2
    assert statuses(engine) == ["processed", "processed"]
    assert redemptions(engine) == [("1001", codes[0]), ("1002", codes[1])]
    with session_scope(engine) as session:
        event = session.exec(select(WebhookEvent).where(col(WebhookEvent.delivery_id) == "d-1")).one()
        assert (event.campaign_id, event.order_id, event.outcome["redeemed"]) == (campaign_id, "1001", 1)


async def test_a_delivery_that_does_not_parse_is_marked_failed_by_the_intake(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings, webhook_processing="worker")
    async with running_app(settings, engine) as (_, client):
        body = b'{"id": 5, "discount_codes": "not a list"'  # cut short: not JSON
        response = await client.post("/webhooks/sandbox", content=body, headers=headers(settings, body, delivery_id="bad"))
        assert response.status_code == 200  # signed: kept for review, whatever it says
        await intake(Processor(engine, settings, client))
    with session_scope(engine) as session:
        event = session.exec(select(WebhookEvent)).one()
    assert event.status == "failed" and event.error and "JSON" in event.error


async def test_intakes_running_at_once_record_every_order_exactly_once(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings, webhook_processing="worker")
    campaign_id = make_campaign(engine, shop_id, count=120)
    codes = [c.code for c in campaign_codes(engine, campaign_id)]
    async with running_app(settings, engine) as (_, client):
        for n, code in enumerate(codes):
            await deliver(client, settings, 5000 + n, code, delivery_id=f"o-{n}")
        processors = [Processor(engine, settings, client) for _ in range(3)]
        # three intakes over the same waiting deliveries, small batches so they interleave
        while "received" in statuses(engine):
            await asyncio.gather(*(intake(p, limit=25) for p in processors))
    assert set(statuses(engine)) == {"processed"}
    assert len(redemptions(engine)) == len(set(redemptions(engine))) == 120
    with session_scope(engine) as session:
        used = session.exec(select(func.sum(col(Redemption.amount)))).one()
    assert used == 120 * 800


async def test_the_worker_runs_the_intake_beside_its_jobs(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings, webhook_processing="worker")
    campaign_id = make_campaign(engine, shop_id, count=2)
    code = campaign_codes(engine, campaign_id)[0].code
    async with running_app(settings, engine) as (_, client):
        worker = Worker(JobContext(engine, settings, client), sweeps=(), poll_interval=0.05, intake_interval=0.01)
        running = asyncio.create_task(worker.run())
        try:
            await deliver(client, settings, 7001, code, delivery_id="w-1")
            for _ in range(500):
                if statuses(engine) == ["processed"]:
                    break
                await asyncio.sleep(0.01)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)
    assert statuses(engine) == ["processed"]
    assert redemptions(engine) == [("7001", code)]


async def test_without_the_setting_the_worker_leaves_fresh_deliveries_to_the_web(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings, webhook_processing="worker")
    campaign_id = make_campaign(engine, shop_id, count=2)
    code = campaign_codes(engine, campaign_id)[0].code
    async with running_app(settings, engine) as (_, client):
        await deliver(client, settings, 7002, code, delivery_id="w-2")
        web_processing = sandbox_settings(settings, webhook_processing="web")
        worker = Worker(JobContext(engine, web_processing, client), sweeps=(), poll_interval=0.01, intake_interval=0.01)
        running = asyncio.create_task(worker.run())
        await asyncio.sleep(0.2)
        worker.stop()
        await asyncio.wait_for(running, 10)
    assert statuses(engine) == ["received"]  # the sweep takes it once it is stale, not the intake


def test_the_setting_is_read_from_the_environment_and_checked() -> None:
    env = {"COUPONRY_SECRET_KEY": "k" * 32, "COUPONRY_WEBHOOK_PROCESSING": "worker"}
    assert Settings.from_env(env).webhook_processing == "worker"
    assert Settings.from_env({"COUPONRY_SECRET_KEY": "k" * 32}).webhook_processing == "web"
    with pytest.raises(ValueError, match="COUPONRY_WEBHOOK_PROCESSING must be one of web, worker"):
        Settings.from_env({**env, "COUPONRY_WEBHOOK_PROCESSING": "elsewhere"})


def delivery_row(n: int, *, platform: str = "sandbox") -> dict[str, Any]:
    return webhooks.delivery_values(
        platform=platform,
        delivery_id=f"bulk-{n}",
        topic="orders/create",
        shop_id=None,
        payload=json.dumps({"id": n}),
        headers={"X-Sandbox-Topic": "orders/create", "X-Sandbox-Hmac-Sha256": "secret"},
        status="ignored",
    )


def test_store_deliveries_stores_many_in_chunks_and_reports_each_row(engine: Engine) -> None:
    with write_cursor(engine) as db:
        first = webhooks.store_deliveries(db, [delivery_row(n) for n in range(3)])
    assert [created for _, created in first] == [True, True, True]
    # 1,200 rows (over two statements' worth), with two already stored and one repeated inside
    rows = [delivery_row(n) for n in range(1, 1200)] + [delivery_row(7), delivery_row(3, platform="woocommerce")]
    before = datetime.now(UTC)
    with write_cursor(engine) as db:
        stored = webhooks.store_deliveries(db, rows)
    assert len(stored) == len(rows)
    assert [c for _, c in stored[:3]] == [False, False, True]  # bulk-1 and bulk-2 were stored before
    assert stored[1199] == (stored[6][0], False)  # bulk-7 again: the same row, not new
    assert stored[1200][1] is True  # the same delivery id on another platform is another delivery
    assert stored[0][0] == first[1][0]
    with session_scope(engine) as session:
        events = session.exec(select(WebhookEvent).order_by(col(WebhookEvent.id))).all()
        assert len(events) == 1201
        event = session.get_one(WebhookEvent, stored[500][0])
        assert (event.delivery_id, event.status, event.payload) == ("bulk-501", "ignored", '{"id": 501}')
        assert event.headers == {"x-sandbox-topic": "orders/create"}  # never the signature
        assert event.outcome == {} and event.flagged is False and event.unknown_codes == 0
        assert before - timedelta(seconds=5) < event.received_at <= datetime.now(UTC)
        assert event.received_at.tzinfo is not None


async def test_requests_a_loop_turn_apart_share_one_commit(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer lets requests already on their way join its batch (`Ingest._fill`): 30
    deliveries reaching `store` over a few loop turns are committed together."""
    from plugin.orders import ingest

    commits: list[int] = []
    real_store = ingest._store

    def counting_store(engine: Engine, rows: list[dict[str, Any]]) -> list[tuple[int, bool]]:
        commits.append(len(rows))
        return real_store(engine, rows)

    monkeypatch.setattr(ingest, "_store", counting_store)
    async with httpx.AsyncClient() as http:
        pipeline = ingest.Ingest(Processor(engine, settings, http), process_here=False)
        pipeline.start()

        async def arrive(n: int) -> tuple[int, bool]:
            for _ in range(n % 3):  # as requests whose tasks start one or two turns later
                await asyncio.sleep(0)
            return await pipeline.store(delivery_row(n))

        try:
            stored = await asyncio.gather(*(arrive(n) for n in range(30)))
        finally:
            await pipeline.stop()
    assert commits == [30]
    assert all(s.created and s.taken for s in stored) and len({s.event_id for s in stored}) == 30


async def _pipeline_orders(engine: Engine, shop_id: int, settings: Settings, pipeline: Any, count: int) -> tuple[list[Any], int]:
    """`count` sandbox orders (each its own code) and the cancellation of the first, handed to a
    running `Ingest` that processes here, as `receive` hands them over: what `store` answered
    each, and how many redemptions were recorded when every store had answered."""
    settings = sandbox_settings(settings)
    codes = [c.code for c in campaign_codes(engine, make_campaign(engine, shop_id, count=count))]
    sent = [(order_body(n, [code]), f"o-{n}", "orders/create") for n, code in enumerate(codes)]
    sent.append((order_body(0, [codes[0]]), "c-0", "orders/cancelled"))  # not set-based: the processor's
    async with httpx.AsyncClient() as http:
        processor = Processor(engine, settings, http)
        connector = processor.connector("sandbox")
        ingest = pipeline(processor)
        ingest.start()

        async def send(body: bytes, delivery_id: str, topic: str) -> Any:
            hdrs = headers(settings, body, delivery_id=delivery_id, topic=topic)
            row = webhooks.delivery_values(
                platform="sandbox", delivery_id=delivery_id, topic=topic, shop_id=shop_id, payload=body.decode(), headers=hdrs
            )
            return await ingest.store(row, connector.parse_webhook(hdrs, body))

        try:
            stored = await asyncio.gather(*(send(*s) for s in sent))
            answered = len(redemptions(engine))
        finally:
            await ingest.stop()  # processes what it was handed
    return stored, answered


async def test_an_order_is_recorded_in_the_transaction_that_stores_it(engine: Engine, shop_id: int, settings: Settings) -> None:
    from plugin.orders.ingest import Ingest

    # the processor would wait 10 s for a batch: only the cancellation waits for it
    stored, answered = await _pipeline_orders(engine, shop_id, settings, partial(Ingest, linger=10.0), 12)
    assert answered == 12
    assert all(s.created and s.taken for s in stored)
    assert statuses(engine) == ["processed"] * 13
    with session_scope(engine) as session:
        rows = session.exec(select(Redemption).order_by(col(Redemption.order_id))).all()
        assert [r.status for r in rows] == ["rolled_back"] + ["active"] * 11  # order 0 was cancelled


async def test_when_storing_and_recording_at_once_fails_the_deliveries_are_stored_and_processed_after(
    engine: Engine, shop_id: int, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugin.orders import ingest

    def broken(*args: Any) -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr(ingest, "store_and_apply", broken)
    stored, answered = await _pipeline_orders(engine, shop_id, settings, partial(ingest.Ingest, linger=10.0), 12)
    assert answered == 0  # stored only, and handed to the processor
    assert all(s.created and s.taken for s in stored)
    assert statuses(engine) == ["processed"] * 13
    assert len(redemptions(engine)) == 12
