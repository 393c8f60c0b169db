"""Braze: /users/track attribute objects, 75 per request, per-item errors mapped back to
recipients, X-RateLimit-Reset on 429. Braze publishes no spec we hold: requests are checked
against the documented shapes (research/messaging.md §3, braze-docs post_user_track.md)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator

import httpx
import pytest
from tenacity import wait_none

from connectors.base import ConnectorConfig, Credentials, MessagingConnector, Recipient
from connectors.braze import BrazeConnector
from connectors.errors import AuthError, RateLimited, Rejected, UpstreamError
from tests.connectors.fakes.braze import RESET_EPOCH, FakeBraze, fixture

pytestmark = pytest.mark.anyio
TLS = ssl.create_default_context()  # one for every client: building one costs ~0.1 s


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeBraze]:
    fake = FakeBraze()
    with fake.router:
        yield fake
    for call in fake.router["track"].calls:  # the documented request shape, whatever the test did
        request = call.request
        assert request.headers["content-type"] == "application/json"
        attributes = json.loads(request.content)["attributes"]
        assert 1 <= len(attributes) <= 75
        for item in attributes:
            assert sum(key in item for key in ("external_id", "user_alias", "braze_id", "email", "phone")) == 1


class Sleeps:
    """An injected sleep and the monotonic clock it moves."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def connector(sleep: Sleeps | None = None, key: str = FakeBraze.API_KEY, **extra: str) -> BrazeConnector:
    sleep = sleep or Sleeps()
    return BrazeConnector(
        httpx.AsyncClient(verify=TLS),
        ConnectorConfig(),
        Credentials(shop_domain="shop.example", access_token=key, extra={"rest_endpoint": FakeBraze.BASE_URL, **extra}),
        attempts=3,
        retry_wait=wait_none(),
        sleep=sleep,
        clock=sleep.clock,
        wall_clock=lambda: RESET_EPOCH - 12.0,
    )


def recipient(n: int) -> Recipient:
    return Recipient(key=f"cust-{n}", external_id=f"cust-{n}", email=f"u{n}@example.com", fields={"coupon_code": f"SAVE{n:04d}"})


async def test_attributes_carry_the_code_and_one_identifier(fake: FakeBraze) -> None:
    people = [
        Recipient(
            key="cust-1",
            external_id="cust-1",
            email="u1@example.com",
            fields={
                "coupon_code": "SAVE1",
                "coupon_display": "SAVE-1",
                "coupon_expires_at": "2026-12-31T23:59:59Z",
                "claim_url": "https://s/c/1",
            },
        ),
        Recipient(key="u2@example.com", email="u2@example.com", fields={"coupon_code": "SAVE2"}),
        Recipient(key="+15555550100", fields={"coupon_code": "SAVE3"}),
    ]
    results = await connector().push_recipients(people)

    request = fake.router["track"].calls.last.request
    assert request.headers["authorization"] == f"Bearer {FakeBraze.API_KEY}"
    assert request.url == f"{FakeBraze.BASE_URL}/users/track"
    assert json.loads(request.content) == {
        "attributes": [
            {
                "external_id": "cust-1",
                "coupon_code": "SAVE1",
                "coupon_display": "SAVE-1",
                "coupon_expires_at": "2026-12-31T23:59:59Z",
                "claim_url": "https://s/c/1",
            },
            {"email": "u2@example.com", "coupon_code": "SAVE2"},
            {"phone": "+15555550100", "coupon_code": "SAVE3"},
        ]
    }
    assert [r.ok for r in results] == [True, True, True]
    assert fake.users["cust-1"]["coupon_code"] == "SAVE1"
    assert isinstance(connector(), MessagingConnector)


async def test_batches_of_75_and_configurable_lower(fake: FakeBraze) -> None:
    await connector().push_recipients([recipient(n) for n in range(160)])
    assert [len(json.loads(c.request.content)["attributes"]) for c in fake.router["track"].calls] == [75, 75, 10]
    await connector(batch_size="50").push_recipients([recipient(n) for n in range(60)])
    await connector(batch_size="500").push_recipients([recipient(n) for n in range(80)])
    assert [len(json.loads(c.request.content)["attributes"]) for c in fake.router["track"].calls[3:]] == [50, 10, 75, 5]


async def test_non_fatal_errors_fail_their_recipient_only(fake: FakeBraze) -> None:
    people = [recipient(1), Recipient(key="bad", email="not-an-email", fields={"coupon_code": "X"}), recipient(3)]
    results = await connector().push_recipients(people)
    assert [(r.key, r.ok, r.error) for r in results] == [
        ("cust-1", True, None),
        ("bad", False, "'email' is not valid"),
        ("cust-3", True, None),
    ]


async def test_fatal_error_with_indexes_fails_the_whole_request(fake: FakeBraze) -> None:
    fake.script(httpx.Response(400, json=fixture("track_fatal.json")))
    results = await connector().push_recipients([recipient(1), recipient(2)])
    assert [(r.ok, r.error) for r in results] == [
        (False, "'email' is not valid"),
        (False, "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."),
    ]
    assert fake.router["track"].call_count == 1


async def test_recipient_without_identifier_is_not_sent(fake: FakeBraze) -> None:
    results = await connector().push_recipients([Recipient(key="", fields={"coupon_code": "X"}), recipient(1)])
    assert [r.ok for r in results] == [False, True]
    assert len(json.loads(fake.router["track"].calls.last.request.content)["attributes"]) == 1


async def test_429_waits_until_the_reset_epoch_then_succeeds(fake: FakeBraze) -> None:
    sleeps = Sleeps()
    fake.script(httpx.Response(429, json={"message": "rate limited"}, headers={"X-RateLimit-Reset": str(RESET_EPOCH)}))
    results = await connector(sleeps).push_recipients([recipient(1)])
    assert fake.router["track"].call_count == 2
    assert results[0].ok
    assert [s for s in sleeps.calls if s] == [12.0]  # until X-RateLimit-Reset, by the injected wall clock


async def test_5xx_then_success_and_exhausted_retries(fake: FakeBraze) -> None:
    fake.script(httpx.Response(502, text="bad gateway"))
    assert (await connector().push_recipients([recipient(1)]))[0].ok
    assert fake.router["track"].call_count == 2

    fake.script(*[httpx.Response(503, text="unavailable")] * 3)
    with pytest.raises(UpstreamError):
        await connector().push_recipients([recipient(1)])
    assert fake.router["track"].call_count == 5

    fake.script(*[httpx.Response(429, json={"message": "rate limited"})] * 3)
    with pytest.raises(RateLimited):
        await connector().push_recipients([recipient(1)])
    assert fake.router["track"].call_count == 8


async def test_bad_key_and_other_fatal_errors_raise(fake: FakeBraze) -> None:
    with pytest.raises(AuthError, match="Invalid API key"):
        await connector(key="wrong").push_recipients([recipient(1)])
    fake.script(httpx.Response(400, json={"message": "Invalid JSON"}))
    with pytest.raises(Rejected, match="Invalid JSON"):
        await connector().push_recipients([recipient(1)])
    assert fake.router["track"].call_count == 2


def test_endpoint_is_required() -> None:
    with pytest.raises(Rejected, match="rest_endpoint"):
        BrazeConnector(httpx.AsyncClient(verify=TLS), ConnectorConfig(), Credentials(shop_domain="s", access_token="k"))
    config = ConnectorConfig(base_url="http://127.0.0.1:8080/")
    assert (
        BrazeConnector(httpx.AsyncClient(verify=TLS), config, Credentials(shop_domain="s", access_token="k"))._url
        == "http://127.0.0.1:8080/users/track"
    )
