"""Delivering events: each attempt recorded, retried on the Standard Webhooks schedule and
after Retry-After, once in effect at the receiver under lost answers, 5xx, 429 and timeouts;
endpoints disabled (with an alert) after too many failures; nothing written for a shop that
subscribes to nothing."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
import respx
from sqlalchemy import Engine, update
from sqlmodel import col, select

from plugin.settings import Settings
from plugin.store import eventlog
from plugin.store.db import session_scope
from plugin.store.models import Alert, EventEndpoint, Job, utcnow
from tests.events.conftest import URL, attempts, deliveries, drain, emit, endpoint, jobs, make_endpoint, messages, worker
from tests.events.receiver import Receiver

pytestmark = pytest.mark.anyio


def test_a_shop_without_endpoints_writes_nothing(engine: Engine, settings: Settings, shop_id: int) -> None:
    assert emit(engine, shop_id, "redemption.created", redemption_id=1) is None
    assert messages(engine) == [] and jobs(engine) == []


def test_only_subscribed_types_of_enabled_endpoints_of_the_shop_are_sent(
    engine: Engine, settings: Settings, shop_id: int
) -> None:
    pools, _ = make_endpoint(engine, settings, shop_id, ["pool.low"])
    both, _ = make_endpoint(engine, settings, shop_id, ["pool.low", "code.voided"])
    assert emit(engine, shop_id, "redemption.created", redemption_id=1) is None
    assert emit(engine, shop_id + 1000, "pool.low", free=1) is None  # another shop: its own (none)
    msg_id = emit(engine, shop_id, "pool.low", free=1)
    assert msg_id is not None and msg_id.startswith("msg_") and "." not in msg_id
    assert sorted(d.endpoint_id for d in deliveries(engine)) == [pools, both]
    with session_scope(engine) as session:
        row = session.get_one(EventEndpoint, both)
        row.enabled = False
        session.add(row)
    emit(engine, shop_id, "code.voided", codes=["X"])
    assert len(deliveries(engine)) == 2  # the disabled endpoint gets nothing new, at once (same process)
    assert [m.payload["type"] for m in messages(engine)] == ["pool.low"]


async def test_a_delivery_is_signed_received_once_and_recorded(engine: Engine, settings: Settings, shop_id: int) -> None:
    endpoint_id, secret = make_endpoint(engine, settings, shop_id)
    receiver = Receiver(secret)
    msg_id = emit(engine, shop_id, "redemption.created", redemption_id=7, code="SAVE10")
    with respx.mock(assert_all_called=True) as mock:
        mock.post(URL).mock(side_effect=receiver.handle)
        async with httpx.AsyncClient() as http:
            assert await drain(worker(engine, settings, http), engine) == 1
    (event,) = receiver.processed
    assert event["type"] == "redemption.created" and event["data"] == {"redemption_id": 7, "code": "SAVE10"}
    (d,) = deliveries(engine)
    assert (d.status, d.attempts, d.last_status, d.finished_at is not None) == ("delivered", 1, 200, True)
    (a,) = attempts(engine)
    assert (a.status_code, a.error, a.response_snippet) == (200, None, "ok") and a.latency_ms >= 0
    assert receiver.seen == {msg_id}
    assert endpoint(engine, endpoint_id).consecutive_failures == 0


async def test_5xx_then_success_retries_on_the_schedule_with_the_same_id(
    engine: Engine, settings: Settings, shop_id: int
) -> None:
    _, secret = make_endpoint(engine, settings, shop_id)
    receiver = Receiver(secret)
    answers = iter([httpx.Response(500, text="boom"), httpx.Response(502, text="bad gateway")])

    def flaky(request: httpx.Request) -> httpx.Response:
        return next(answers, None) or receiver.handle(request)

    emit(engine, shop_id, "code.voided", codes=["A"])
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(URL).mock(side_effect=flaky)
        async with httpx.AsyncClient() as http:
            w = worker(engine, settings, http)
            before = utcnow()
            assert await w.run_once()
            (job,) = jobs(engine)
            assert job.status == "queued" and job.run_after >= before + timedelta(seconds=5)  # the schedule's first wait
            await drain(w, engine)
    ids = {call.request.headers["webhook-id"] for call in route.calls}
    assert route.call_count == 3 and len(ids) == 1
    assert [a.status_code for a in attempts(engine)] == [500, 502, 200]
    assert attempts(engine)[0].error == "the endpoint answered HTTP 500" and attempts(engine)[0].response_snippet == "boom"
    assert len(receiver.processed) == 1 and deliveries(engine)[0].status == "delivered"


async def test_429_waits_as_long_as_retry_after_says(engine: Engine, settings: Settings, shop_id: int) -> None:
    make_endpoint(engine, settings, shop_id)
    emit(engine, shop_id, "pool.low", free=2)
    with respx.mock(assert_all_called=True) as mock:
        mock.post(URL).mock(return_value=httpx.Response(429, headers={"Retry-After": "120"}, text="slow down"))
        async with httpx.AsyncClient() as http:
            before = utcnow()
            assert await worker(engine, settings, http).run_once()
    (job,) = jobs(engine)
    assert job.status == "queued" and job.run_after >= before + timedelta(seconds=120)
    assert deliveries(engine)[0].last_status == 429 and deliveries(engine)[0].status == "pending"


async def test_a_lost_answer_after_the_receiver_committed_is_processed_once(
    engine: Engine, settings: Settings, shop_id: int
) -> None:
    _, secret = make_endpoint(engine, settings, shop_id)
    receiver = Receiver(secret)
    calls = 0

    def commit_then_lose_answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        answer = receiver.handle(request)  # the receiver commits the event...
        if calls == 1:
            raise httpx.ReadTimeout("the answer never came", request=request)  # ...but we never hear back
        return answer

    emit(engine, shop_id, "redemption.rolled_back", redemption_id=3)
    with respx.mock(assert_all_called=True) as mock:
        mock.post(URL).mock(side_effect=commit_then_lose_answer)
        async with httpx.AsyncClient() as http:
            await drain(worker(engine, settings, http), engine)
    assert calls == 2 and len(receiver.processed) == 1
    assert [a.error for a in attempts(engine)] == ["timed out waiting for the endpoint", None]
    assert deliveries(engine)[0].status == "delivered"


async def test_after_the_last_attempt_the_delivery_is_failed(engine: Engine, settings: Settings, shop_id: int) -> None:
    settings = replace(settings, event_disable_failures=1000)
    make_endpoint(engine, settings, shop_id)
    emit(engine, shop_id, "campaign.paused", campaign_id=1)
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(URL).mock(return_value=httpx.Response(503))
        async with httpx.AsyncClient() as http:
            await drain(worker(engine, settings, http), engine)
    assert route.call_count == eventlog.DELIVERY_ATTEMPTS == 8
    (d,) = deliveries(engine)
    assert (d.status, d.attempts, d.last_status) == ("failed", 8, 503)
    assert jobs(engine)[0].status == "done"  # recorded as a failed delivery, not a dead job


async def test_consecutive_failures_disable_the_endpoint_halt_its_queue_and_alert(
    engine: Engine, settings: Settings, shop_id: int
) -> None:
    settings = replace(settings, event_disable_failures=3)
    endpoint_id, _ = make_endpoint(engine, settings, shop_id)
    for n in range(3):
        emit(engine, shop_id, "code.assigned", code=f"C{n}")
    with respx.mock() as mock:
        route = mock.post(URL).mock(side_effect=httpx.ConnectError("refused"))
        async with httpx.AsyncClient() as http:
            await drain(worker(engine, settings, http), engine)
    assert route.call_count == 3  # the third failure disables it: nothing more is tried
    row = endpoint(engine, endpoint_id)
    assert not row.enabled and row.disabled_reason == "disabled: its last 3 attempts failed"
    assert {d.status for d in deliveries(engine)} == {"halted"}
    with session_scope(engine) as session:
        (alert,) = session.exec(select(Alert).where(col(Alert.kind) == "event_endpoint_disabled")).all()
    assert alert.shop_id == shop_id and "its last 3 attempts failed" in alert.message
    assert emit(engine, shop_id, "code.assigned", code="later") is None  # no new deliveries to it


async def test_410_gone_disables_at_once(engine: Engine, settings: Settings, shop_id: int) -> None:
    endpoint_id, _ = make_endpoint(engine, settings, shop_id)
    emit(engine, shop_id, "pool.low", free=0)
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(URL).mock(return_value=httpx.Response(410))
        async with httpx.AsyncClient() as http:
            await drain(worker(engine, settings, http), engine)
    assert route.call_count == 1
    assert endpoint(engine, endpoint_id).disabled_reason == "disabled: it answered 410 Gone"


async def test_failing_for_days_disables_even_below_the_count(engine: Engine, settings: Settings, shop_id: int) -> None:
    endpoint_id, _ = make_endpoint(engine, settings, shop_id)
    with session_scope(engine) as session:
        session.execute(update(EventEndpoint).values(consecutive_failures=2, failing_since=utcnow() - timedelta(days=5, hours=1)))
    emit(engine, shop_id, "pool.low", free=0)
    with respx.mock(assert_all_called=True) as mock:
        mock.post(URL).mock(return_value=httpx.Response(500))
        async with httpx.AsyncClient() as http:
            assert await worker(engine, settings, http).run_once()
    row = endpoint(engine, endpoint_id)
    assert not row.enabled and (row.disabled_reason or "").startswith("disabled: it has failed since")


async def test_a_success_forgets_earlier_failures(engine: Engine, settings: Settings, shop_id: int) -> None:
    settings = replace(settings, event_disable_failures=3)
    endpoint_id, secret = make_endpoint(engine, settings, shop_id)
    receiver = Receiver(secret)
    answers = iter([httpx.Response(500), httpx.Response(500)])
    emit(engine, shop_id, "pool.low", free=1)
    emit(engine, shop_id, "pool.low", free=0)
    with respx.mock() as mock:
        mock.post(URL).mock(side_effect=lambda r: next(answers, None) or receiver.handle(r))
        async with httpx.AsyncClient() as http:
            await drain(worker(engine, settings, http), engine)
    row = endpoint(engine, endpoint_id)
    assert row.enabled and row.consecutive_failures == 0 and row.failing_since is None
    assert [e["data"]["free"] for e in receiver.processed] == [1, 0]  # one endpoint's deliveries in order


async def test_events_of_one_shop_never_reach_another_shops_endpoint(engine: Engine, settings: Settings, shop_id: int) -> None:
    from plugin.shops.shops import ensure_local_shop

    with session_scope(engine) as session:
        other = ensure_local_shop(session, "other.couponry.test").id
    assert other is not None
    _, mine = make_endpoint(engine, settings, shop_id, url="https://mine.example.com/h")
    _, theirs = make_endpoint(engine, settings, other, url="https://theirs.example.com/h")
    me, them = Receiver(mine), Receiver(theirs)
    emit(engine, shop_id, "code.voided", codes=["MINE"])
    emit(engine, other, "code.voided", codes=["THEIRS"])
    with respx.mock(assert_all_called=True) as mock:
        mock.post("https://mine.example.com/h").mock(side_effect=me.handle)
        mock.post("https://theirs.example.com/h").mock(side_effect=them.handle)
        async with httpx.AsyncClient() as http:
            await drain(worker(engine, settings, http), engine)
    assert [e["data"]["codes"] for e in me.processed] == [["MINE"]]
    assert [e["data"]["codes"] for e in them.processed] == [["THEIRS"]]
    assert me.refused == them.refused == []  # each signed with its own endpoint's secret


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_same_events_in_any_order_and_repeated_reach_the_receiver_once_each(
    engine: Engine, settings: Settings, shop_id: int, seed: int
) -> None:
    """What a merchant relies on: however our retries, their load balancer or an attacker
    reorder and repeat the requests, each event is acted on once."""
    _, secret = make_endpoint(engine, settings, shop_id)
    sent: list[httpx.Request] = []

    def capture(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500 if len(sent) % 3 == 0 else 200)  # some answers fail: those are sent again

    ids = {emit(engine, shop_id, "redemption.created", redemption_id=n) for n in range(12)}
    with respx.mock(assert_all_called=True) as mock:
        mock.post(URL).mock(side_effect=capture)
        async with httpx.AsyncClient() as http:
            await drain(worker(engine, settings, http), engine, rounds=100)
    rng = random.Random(seed)
    replayed = sent + [rng.choice(sent) for _ in range(20)]
    rng.shuffle(replayed)
    receiver = Receiver(secret)
    for request in replayed:
        assert receiver.handle(request).status_code == 200
    assert sorted(e["data"]["redemption_id"] for e in receiver.processed) == list(range(12))
    assert receiver.seen == ids


async def test_a_job_for_a_deleted_endpoint_or_a_done_delivery_sends_nothing(
    engine: Engine, settings: Settings, shop_id: int
) -> None:
    from plugin.events import endpoints

    endpoint_id, _ = make_endpoint(engine, settings, shop_id)
    emit(engine, shop_id, "pool.low", free=1)
    with session_scope(engine) as session:
        endpoints.delete(session, shop_id=shop_id, endpoint_id=endpoint_id, now=utcnow())
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(URL)
        async with httpx.AsyncClient() as http:
            await drain(worker(engine, settings, http), engine)
    assert route.call_count == 0 and jobs(engine)[0].status == "done"


def test_a_dead_sync_job_writes_sync_failed_in_the_same_transaction(engine: Engine, settings: Settings, shop_id: int) -> None:
    from plugin.store import outbox

    make_endpoint(engine, settings, shop_id, ["sync.failed"])
    with session_scope(engine) as session:
        outbox.enqueue(session, "sync.push", {"campaign_id": 4}, shop_id, max_attempts=1)
        outbox.enqueue(session, "reconcile", {}, shop_id, max_attempts=1)  # not a sync to a platform
    for claimed in outbox.claim(engine, "w", timedelta(seconds=30), limit=2):
        assert outbox.fail(engine, claimed, "w", "UpstreamError: Shopify 502") == "dead"
    (message,) = messages(engine)
    assert message.type == "sync.failed"
    assert message.payload["data"] == {
        "job_id": 1,
        "kind": "sync.push",
        "attempts": 1,
        "error": "UpstreamError: Shopify 502",
        "campaign_id": 4,
    }
    # a worker that died during a job's last attempt: dead-lettered at the next claim, same event
    with session_scope(engine) as session:
        job_id = outbox.enqueue(session, "sync.deactivate", {"campaign_id": 5}, shop_id, max_attempts=1)
    outbox.claim(engine, "dies", timedelta(seconds=-1), limit=10)
    outbox.claim(engine, "next", timedelta(seconds=30))
    with session_scope(engine) as session:
        assert session.get_one(Job, job_id).status == "dead"
    assert [m.payload["data"]["kind"] for m in messages(engine)] == ["sync.push", "sync.deactivate"]
