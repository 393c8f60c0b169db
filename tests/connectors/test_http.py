"""connectors.http: the status → error mapping, transport errors, retry waits and the pacer."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from tenacity import RetryCallState, wait_fixed

from connectors.base import Recipient
from connectors.errors import AuthError, NotFound, RateLimited, Rejected, UpstreamError
from connectors.http import NotSent, RatePacer, identifiers, raise_for_status, retrying, send, wait_retry_after

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthError),
        (403, AuthError),
        (404, NotFound),
        (409, Rejected),
        (422, Rejected),
        (429, RateLimited),
        (500, UpstreamError),
        (503, UpstreamError),
    ],
)
def test_status_maps_to_the_error_hierarchy(status: int, error: type[Exception]) -> None:
    response = httpx.Response(status, json={"message": "nope"}, headers={"Retry-After": "3"})
    with pytest.raises(error, match="nope") as raised:
        raise_for_status(response)
    if isinstance(raised.value, RateLimited):
        assert raised.value.retry_after == 3.0
    assert raise_for_status(httpx.Response(202)).status_code == 202


async def test_transport_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(NotSent):
        await send(httpx.AsyncClient(transport=httpx.MockTransport(refuse)), "GET", "https://api.example/x")
    with pytest.raises(UpstreamError) as raised:
        await send(httpx.AsyncClient(transport=httpx.MockTransport(hang)), "GET", "https://api.example/x")
    assert not isinstance(raised.value, NotSent)


def test_wait_honours_retry_after_else_backs_off() -> None:
    wait = wait_retry_after(wait_fixed(2), longest=60)

    def state(error: Exception) -> RetryCallState:
        retry_state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        retry_state.set_exception((type(error), error, None))
        return retry_state

    assert wait(state(RateLimited("slow down", retry_after=7))) == 7
    assert wait(state(RateLimited("slow down", retry_after=3600))) == 60
    assert wait(state(RateLimited("slow down"))) == 2
    assert wait(state(UpstreamError("boom"))) == 2


async def test_retrying_counts_attempts_and_reraises() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise UpstreamError("boom")
        return "ok"

    assert await retrying(flaky, attempts=3, wait=wait_fixed(0)) == "ok"
    assert calls == 3

    calls = -10
    with pytest.raises(UpstreamError, match="boom"):
        await retrying(flaky, attempts=2, wait=wait_fixed(0))
    assert calls == -8

    async def refused() -> None:
        raise Rejected("invalid")

    with pytest.raises(Rejected):
        await retrying(refused, attempts=5, wait=wait_fixed(0))


async def test_pacer_frees_a_slot_one_window_after_the_response() -> None:
    time_ = FakeTime()
    pacer = RatePacer([(2, 1.0)], clock=time_.clock, sleep=time_.sleep, margin=0)
    started: list[float] = []
    for _ in range(5):
        async with pacer.slot():
            started.append(time_.now)
            time_.now += 0.1  # the request takes 100 ms
    # two requests per second, each slot held until 1 s after its response
    assert started == pytest.approx([0.0, 0.1, 1.1, 1.2, 2.2])


async def test_pacer_waits_for_requests_in_flight_and_holds() -> None:
    time_ = FakeTime()
    pacer = RatePacer([(1, 1.0)], clock=time_.clock, sleep=time_.sleep, margin=0)
    order: list[str] = []

    async def request(name: str, duration: int) -> None:
        async with pacer.slot():
            order.append(f"{name}@{time_.now:.1f}")
            for _ in range(duration):
                await asyncio.sleep(0)

    await asyncio.gather(request("a", 5), request("b", 1))
    assert order == ["a@0.0", "b@1.0"]  # b waited for a's answer, then a window

    pacer.hold(30)
    await request("c", 0)
    assert order[-1] == "c@31.0"


def test_identifiers_fall_back_to_the_key() -> None:
    assert identifiers(Recipient(key="x", email="a@b.c")) == ("a@b.c", None, None)
    assert identifiers(Recipient(key="a@b.c")) == ("a@b.c", None, None)
    assert identifiers(Recipient(key="+15555550100")) == (None, "+15555550100", None)
    assert identifiers(Recipient(key="cust-1")) == (None, None, "cust-1")
    assert identifiers(Recipient(key="")) == (None, None, None)
