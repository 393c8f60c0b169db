"""Connectors announce a platform's throttling (connectors.throttling) without knowing the app:
an HTTP 429 names its platform, a wait for Shopify's cost bucket says how long; the app's metrics
(plugin.metrics) count what they hear."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import respx

from connectors import throttling
from connectors.costbucket import BucketState, CostBucket
from plugin.metrics import PLATFORM_THROTTLE_SECONDS, PLATFORM_THROTTLED
from tests.connectors.fakes.woocommerce import FakeWooCommerce
from tests.connectors.test_woocommerce import campaign, codes, connect

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def heard() -> Iterator[list[tuple[str, str, float]]]:
    calls: list[tuple[str, str, float]] = []
    stop = throttling.listen(lambda platform, signal, seconds: calls.append((platform, signal, seconds)))
    yield calls
    stop()


def counted(platform: str, signal: str) -> float:
    return PLATFORM_THROTTLED.labels(platform, signal)._value.get()


def waited(platform: str, signal: str) -> float:
    return PLATFORM_THROTTLE_SECONDS.labels(platform, signal)._value.get()


async def test_a_429_is_heard_with_its_platform_and_retry_after(heard: list[tuple[str, str, float]]) -> None:
    fake = FakeWooCommerce()
    before, seconds_before = counted("woocommerce", "rate_limited"), waited("woocommerce", "rate_limited")
    async with httpx.AsyncClient() as client:
        with respx.mock(assert_all_called=True) as router:
            fake.install(router, "batch")
            fake.script("batch", httpx.Response(429, headers={"Retry-After": "7"}))
            connector = connect(client, fake)
            assert (await connector.push_codes(await connector.ensure_discount(campaign()), codes("ABCD-0001")))[0].ok
    assert heard == [("woocommerce", throttling.RATE_LIMITED, 7.0)]
    assert counted("woocommerce", "rate_limited") == before + 1
    assert waited("woocommerce", "rate_limited") == seconds_before + 7.0


async def test_no_throttling_is_heard_when_the_platform_answers(heard: list[tuple[str, str, float]]) -> None:
    fake = FakeWooCommerce()
    async with httpx.AsyncClient() as client:
        with respx.mock(assert_all_called=True) as router:
            fake.install(router, "batch")
            connector = connect(client, fake)
            assert (await connector.push_codes(await connector.ensure_discount(campaign()), codes("ABCD-0001")))[0].ok
    assert heard == []


async def test_a_wait_for_shopifys_cost_bucket_is_heard(heard: list[tuple[str, str, float]]) -> None:
    now = [1000.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = CostBucket(lambda: now[0], sleep)
    # Shopify said: 1000 points, 50 a second, 100 left; a call of 300 waits 4 s for the rest
    await bucket.store.change(bucket.key, lambda s: _fill(s, level=100.0, now=now[0]))
    before = counted("shopify", "cost_bucket")
    await bucket.acquire(300.0)
    assert sum(slept) == pytest.approx(4.0)
    assert [(p, s) for p, s, _ in heard] == [("shopify", throttling.COST_BUCKET)] * len(slept)
    assert sum(seconds for _, _, seconds in heard) == pytest.approx(4.0)
    assert counted("shopify", "cost_bucket") == before + len(slept)


def _fill(state: BucketState, *, level: float, now: float) -> None:
    state.maximum, state.rate, state.level, state.stamp = 1000.0, 50.0, level, now


def test_a_failing_listener_never_breaks_a_platform_call(heard: list[tuple[str, str, float]]) -> None:
    def broken(platform: str, signal: str, seconds: float) -> None:
        raise RuntimeError("listener bug")

    stop = throttling.listen(broken)
    try:
        throttling.throttled("bigcommerce", throttling.RATE_LIMITED, 1.0)  # does not raise
    finally:
        stop()
    assert ("bigcommerce", throttling.RATE_LIMITED, 1.0) in heard
