"""Shopify's cost bucket is one per shop: shared by every job of a process, and by every worker
through Redis (when configured) or the database. Jobs that each build their own bucket start
blind and collide (THROTTLED); sharing it, they never are, and a THROTTLED answer that comes
anyway is still retried after the documented wait."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import httpx
import pytest
import respx
from sqlalchemy import Engine
from sqlmodel import select
from tenacity import wait_none

from connectors.base import CodeSpec, ConnectorConfig, Credentials
from connectors.costbucket import LEASE, BucketState, BucketStore, CostBucket, MemoryBucketStore
from connectors.shopify import ShopifyConnector
from plugin.platforms import installs
from plugin.platforms.connections import shop_connector
from plugin.settings import Settings
from plugin.store import ratestate
from plugin.store.db import session_scope
from plugin.store.models import RateLimitState, Shop
from tests.connectors.fakes.shopify import SHOP, ShopifyFake, shopify_fake
from tests.connectors.test_shopify import FakeClock
from tests.web.conftest import REDIS_URL

pytestmark = pytest.mark.anyio

CONFIG = ConnectorConfig(client_id="api-key", client_secret="hush")
CREDENTIALS = Credentials(shop_domain=SHOP, access_token="shpat_test_token", scopes=("write_discounts", "read_orders"))
JOBS = 2
CODES_PER_JOB = 300  # three bulk adds (10 points), three polls (1) and three id reads (203) each


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    router = respx.MockRouter(assert_all_mocked=True)
    yield router


@pytest.fixture
async def client(router: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(router: respx.MockRouter, clock: FakeClock) -> ShopifyFake:
    """Shopify enforcing its bucket (1000 points, 100 a second, as on a Standard plan) against the
    test's clock: each batch of 100 codes spends 10 + 1 + 203 (its redeem-code ids)."""
    return shopify_fake(router, maximum=1000, restore_rate=100, clock=clock)


@pytest.fixture(params=["database", "redis"])
async def shared_store(request: pytest.FixtureRequest, engine: Engine) -> AsyncIterator[BucketStore]:
    if request.param == "redis":
        if not REDIS_URL:
            pytest.skip("Redis bucket store: set COUPONRY_TEST_REDIS_URL")
        import redis.asyncio as redis

        client = redis.Redis.from_url(REDIS_URL)
        yield ratestate.RedisBucketStore(client)
        await client.aclose()
    else:
        yield ratestate.DatabaseBucketStore(engine)


def connector(client: httpx.AsyncClient, clock: FakeClock, bucket: CostBucket | None) -> ShopifyConnector:
    return ShopifyConnector(
        client, CONFIG, CREDENTIALS, wait=wait_none(), clock=clock, sleep=clock.sleep, poll_interval=0, bucket=bucket
    )


def job_codes(job: int) -> list[CodeSpec]:
    return [CodeSpec(code=f"J{job}C{i:04d}", display=f"J{job}-C{i:04d}") for i in range(CODES_PER_JOB)]


async def push_concurrently(fake: ShopifyFake, connectors: list[ShopifyConnector]) -> None:
    discount = fake.add_discount()
    results = await asyncio.gather(*(c.push_codes(discount, job_codes(n)) for n, c in enumerate(connectors)))
    assert all(r.ok for rs in results for r in rs)
    assert len(fake.discounts[discount].codes) == JOBS * CODES_PER_JOB


def a_key() -> str:
    return ratestate.shopify_key(f"t{secrets.token_hex(6)}.myshopify.com")  # fresh per test: Redis outlives it


# --- before: a bucket per job ------------------------------------------------------------------


async def test_jobs_with_a_bucket_each_start_blind_and_are_throttled(
    client: httpx.AsyncClient, fake: ShopifyFake, clock: FakeClock
) -> None:
    """What every job did before: its own CostBucket. Each learns only from its own answers and
    spends points the other already spent."""
    jobs = [connector(client, clock, CostBucket(clock, clock.sleep)) for _ in range(JOBS)]
    await push_concurrently(fake, jobs)
    assert fake.throttled > 0


# --- after: one bucket per shop in a process, over a store every worker shares ------------------------


async def test_jobs_of_a_process_get_the_shops_one_bucket(engine: Engine, settings: Settings, shop_id: int) -> None:
    settings = replace(settings, connector_config={"shopify": {"client_id": "k", "client_secret": "s"}})
    with session_scope(engine) as session:
        one = installs.save_install(session, settings, platform="shopify", credentials=CREDENTIALS)
        other = installs.save_install(
            session, settings, platform="shopify", credentials=replace(CREDENTIALS, shop_domain="other.myshopify.com")
        )
        session.expunge_all()
    async with httpx.AsyncClient() as http:
        first: ShopifyConnector = shop_connector(settings, http, one, engine=engine)  # type: ignore[assignment]
        second: ShopifyConnector = shop_connector(settings, http, one, engine=engine)  # type: ignore[assignment]
        elsewhere: ShopifyConnector = shop_connector(settings, http, other, engine=engine)  # type: ignore[assignment]
    assert first is not second and first.bucket is second.bucket
    assert elsewhere.bucket is not first.bucket
    assert isinstance(first.bucket.store, ratestate.DatabaseBucketStore) and first.bucket.key == f"shopify:cost:{SHOP}"
    if REDIS_URL:
        async with httpx.AsyncClient() as http:
            redis_settings = replace(settings, redis_url=REDIS_URL)
            over_redis: ShopifyConnector = shop_connector(redis_settings, http, one, engine=engine)  # type: ignore[assignment]
        assert isinstance(over_redis.bucket.store, ratestate.RedisBucketStore)


async def test_jobs_sharing_the_process_bucket_are_never_throttled(
    client: httpx.AsyncClient, fake: ShopifyFake, clock: FakeClock
) -> None:
    bucket = CostBucket(clock, clock.sleep)
    await push_concurrently(fake, [connector(client, clock, bucket) for _ in range(JOBS)])
    assert fake.throttled == 0


async def test_workers_sharing_the_store_are_never_throttled(
    client: httpx.AsyncClient, fake: ShopifyFake, clock: FakeClock, shared_store: BucketStore
) -> None:
    key = a_key()
    # two CostBuckets (each with its own lock and in-flight count) over one store: two workers
    workers = [connector(client, clock, CostBucket(clock, clock.sleep, store=shared_store, key=key)) for _ in range(JOBS)]
    await push_concurrently(fake, workers)
    assert fake.throttled == 0
    learned = await workers[0].bucket.state()
    assert (learned.maximum, learned.rate, learned.in_flight) == (1000, 100, 0)


async def test_workers_with_a_store_each_are_throttled(client: httpx.AsyncClient, fake: ShopifyFake, clock: FakeClock) -> None:
    """The same two workers, each with its own store (a process-local one): they collide."""
    key = a_key()
    workers = [connector(client, clock, CostBucket(clock, clock.sleep, store=MemoryBucketStore(), key=key)) for _ in range(JOBS)]
    await push_concurrently(fake, workers)
    assert fake.throttled > 0


async def test_the_database_keeps_what_shopify_said(
    engine: Engine, client: httpx.AsyncClient, fake: ShopifyFake, clock: FakeClock
) -> None:
    bucket = CostBucket(clock, clock.sleep, store=ratestate.DatabaseBucketStore(engine), key="shopify:cost:" + SHOP)
    await connector(client, clock, bucket).fetch_shop()
    with session_scope(engine) as session:
        row = session.exec(select(RateLimitState)).one()
    assert row.key == "shopify:cost:" + SHOP
    assert BucketState.from_dict(row.state).maximum == 1000 and BucketState.from_dict(row.state).level == 999


async def test_a_throttled_answer_is_retried_after_the_documented_wait(
    client: httpx.AsyncClient, router: respx.MockRouter, clock: FakeClock, shared_store: BucketStore
) -> None:
    fake = shopify_fake(router)
    key = a_key()
    one, two = (connector(client, clock, CostBucket(clock, clock.sleep, store=shared_store, key=key)) for _ in range(2))
    await one.fetch_shop()  # the bucket's size is known
    fake.calls.clear()
    # Shopify says THROTTLED: 10 requested, 4 available, 50 a second
    fake.throttle(requested=10, available=4, restore_rate=50)
    discount = fake.add_discount()
    assert (await one.push_codes(discount, job_codes(0)[:1]))[0].ok
    assert [c.operation for c in fake.calls] == [
        "discountRedeemCodeBulkAdd",  # THROTTLED
        "discountRedeemCodeBulkAdd",
        "discountRedeemCodeBulkCreation",
        "discountRedeemCodeBulkCreation",  # the code's redeem-code id
    ]
    assert clock.sleeps == [pytest.approx((10 - 4) / 50)]  # (requested - currentlyAvailable) / restoreRate
    # the other worker learnt it too: what the bucket holds is what Shopify last said, less spending
    assert await two.bucket.available() == pytest.approx(1000 - 203, abs=1)  # after the ids read


async def test_a_429_holds_back_every_worker(
    client: httpx.AsyncClient, router: respx.MockRouter, clock: FakeClock, shared_store: BucketStore
) -> None:
    fake = shopify_fake(router)
    key = a_key()
    one, two = (connector(client, clock, CostBucket(clock, clock.sleep, store=shared_store, key=key)) for _ in range(2))
    fake.script(httpx.Response(429, headers={"Retry-After": "2.0"}, json={"errors": "Exceeded 2 calls per second."}))
    await one.fetch_shop()
    assert clock.sleeps == [2.0]
    await one.bucket.block(3.0)  # as if one had just been told to wait 3 s
    await two.fetch_shop()
    assert clock.sleeps == [2.0, 3.0] and fake.route.call_count == 3


def test_a_dead_workers_reservation_lapses() -> None:
    state = BucketState()
    assert state.take(10, now=0.0) == 0.0  # the probe goes out, and its worker dies
    assert state.take(10, now=1.0) is None  # others wait for its answer ...
    assert state.take(10, now=LEASE + 1) == 0.0  # ... until its lease runs out
    status = {"maximumAvailable": 100, "currentlyAvailable": 90, "restoreRate": 5}
    state.settle(10, {"requestedQueryCost": 10, "actualQueryCost": 10, "throttleStatus": status}, now=LEASE + 2)
    assert (state.maximum, state.rate, state.in_flight, state.available(LEASE + 2)) == (100, 5, 0, 90)


async def test_outside_an_event_loop_the_connector_keeps_its_own_bucket(settings: Settings) -> None:
    shop = Shop(platform="shopify", domain=SHOP)
    assert await asyncio.to_thread(ratestate.shopify_bucket, settings, None, shop.domain) is None
