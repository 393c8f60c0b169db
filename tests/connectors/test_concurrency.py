"""The concurrency limit one account's senders share (connectors/concurrency.py): in a process, and
across processes in Redis (set COUPONRY_TEST_REDIS_URL, as .ci/run does on its PostgreSQL pass)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from connectors.concurrency import ConcurrencyLimit, SharedConcurrencyLimit, account_limit, reset_account_limits

REDIS_URL = os.environ.get("COUPONRY_TEST_REDIS_URL")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_senders_queue_for_a_slot_and_never_exceed_the_limit() -> None:
    limit = ConcurrencyLimit(3)
    in_flight, peak = 0, 0

    async def request() -> None:
        nonlocal in_flight, peak
        async with limit.slot():
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0)
            in_flight -= 1

    await asyncio.gather(*(request() for _ in range(20)))
    assert (peak, limit.in_flight) == (3, 0)


async def test_one_wave_of_429s_lowers_the_limit_once_and_answers_raise_it_again() -> None:
    limit = ConcurrencyLimit(8, recover_after=3)
    started = []
    for _ in range(4):
        async with limit.slot() as round_:
            started.append(round_)
    for round_ in started:  # four requests of the same round all got a 429
        await limit.throttled(round_)
    assert limit.limit == 4
    async with limit.slot() as round_:  # a request started after the lowering
        await limit.throttled(round_)
    assert limit.limit == 2
    for _ in range(2):
        await limit.answered()
    assert limit.limit == 2
    await limit.answered()  # three answers without a 429: one more slot
    assert limit.limit == 3
    for _ in range(3 * 10):
        await limit.answered()
    assert limit.limit == 8  # never above the ceiling
    for _ in range(10):
        async with limit.slot() as round_:
            await limit.throttled(round_)
    assert limit.limit == 1  # never below one


async def test_a_retry_after_holds_every_sender() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limit = ConcurrencyLimit(2, clock=lambda: now[0])
    async with limit.slot(sleep) as round_:
        await limit.throttled(round_, retry_after=5.0)
    async with limit.slot(sleep):
        pass
    assert slept == [5.0]


async def test_a_lowered_limit_wakes_waiters_as_slots_free() -> None:
    limit = ConcurrencyLimit(2)
    order: list[str] = []
    gate = asyncio.Event()

    async def holder(name: str) -> None:
        async with limit.slot() as round_:
            order.append(f"{name} in")
            await gate.wait()
            await limit.throttled(round_)  # both holders got a 429: the limit halves once
        order.append(f"{name} out")

    async def waiter() -> None:
        async with limit.slot():
            order.append(f"waiter in with {limit.in_flight} in flight")

    tasks = [asyncio.create_task(holder("a")), asyncio.create_task(holder("b"))]
    await asyncio.sleep(0)
    queued = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks, queued)
    assert limit.limit == 1
    assert order == ["a in", "b in", "a out", "b out", "waiter in with 1 in flight"]


def test_one_limit_per_account_in_the_process() -> None:
    reset_account_limits()
    first = account_limit("https://api.twilio.com AC1", 5)
    assert account_limit("https://api.twilio.com AC1", 5) is first
    assert account_limit("https://api.twilio.com AC2", 5) is not first
    account_limit("https://api.twilio.com AC1", 3)  # the configuration changed
    assert (first.ceiling, first.limit) == (3, 3)
    reset_account_limits()


@pytest.fixture
async def two_processes() -> AsyncIterator[tuple[SharedConcurrencyLimit, SharedConcurrencyLimit]]:
    """One account's limit as two worker processes see it: two clients, one Redis key."""
    if not REDIS_URL:
        pytest.skip("shared limit: set COUPONRY_TEST_REDIS_URL")
    key = "test " + secrets.token_hex(6)
    first, second = (SharedConcurrencyLimit(Redis.from_url(REDIS_URL), key, 4, recover_after=3) for _ in range(2))
    yield first, second
    await first.forget()
    for limit in (first, second):
        await limit.aclose()


async def test_processes_share_one_limit_in_redis(two_processes: tuple[SharedConcurrencyLimit, ...]) -> None:
    in_flight, peak = 0, 0

    async def request(limit: SharedConcurrencyLimit) -> None:
        nonlocal in_flight, peak
        async with limit.slot():
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1

    await asyncio.gather(*(request(two_processes[n % 2]) for n in range(24)))
    assert peak == 4


async def test_a_429_in_one_process_lowers_the_limit_of_the_other(two_processes: tuple[SharedConcurrencyLimit, ...]) -> None:
    first, second = two_processes
    async with first.slot() as round_:
        pass
    await first.throttled(round_)
    await second.throttled(round_)  # the same wave: lowered once
    assert (await first.limit(), await second.limit()) == (2, 2)
    for _ in range(3):
        await second.answered()
    assert await first.limit() == 3
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(seconds)

    async with first.slot() as round_:
        await first.throttled(round_, retry_after=0.3)
    async with second.slot(sleep):  # held: Twilio asked for 0.3 s
        pass
    assert len(slept) == 1 and 0.1 < slept[0] <= 0.3


async def test_a_dead_processs_slot_expires(two_processes: tuple[SharedConcurrencyLimit, ...]) -> None:
    first, second = two_processes
    first.LEASE = 0.3
    held = [first.slot() for _ in range(4)]
    for slot in held:  # taken and never given back: the process died
        await slot.__aenter__()
    got = asyncio.create_task(second.slot().__aenter__())
    await asyncio.sleep(0.1)
    assert not got.done()
    await asyncio.wait_for(got, 2)  # free once the lease ran out
