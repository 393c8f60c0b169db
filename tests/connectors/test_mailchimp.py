"""Mailchimp: data-centre URL, merge fields created when missing, member upserts by subscriber
hash, per-member errors, retries and the connection limit. Mailchimp publishes no spec we hold,
so requests are checked against the shapes in research/messaging.md §2 (and by the fake)."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Iterator

import httpx
import pytest
from tenacity import wait_none

from connectors.base import ConnectorConfig, Credentials, MessagingConnector, Recipient
from connectors.errors import AuthError, NotFound, RateLimited, Rejected, UpstreamError
from connectors.mailchimp import MailchimpConnector
from tests.connectors.fakes.mailchimp import FakeMailchimp, problem

pytestmark = pytest.mark.anyio
TLS = ssl.create_default_context()  # one for every client: building one costs ~0.1 s


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeMailchimp]:
    fake = FakeMailchimp()
    with fake.router:
        yield fake
    # the documented shapes (research/messaging.md §2), whatever the test did
    for call in fake.router["member"].calls:
        body = json.loads(call.request.content)
        assert set(body) == {"email_address", "status_if_new", "merge_fields"}
        assert call.request.url.path.rsplit("/", 1)[1] == md5(body["email_address"])
    for call in fake.router["create-merge-field"].calls:
        assert set(json.loads(call.request.content)) == {"tag", "name", "type", "required", "public"}


def connector(key: str = FakeMailchimp.API_KEY, config: ConnectorConfig | None = None, **extra: str) -> MailchimpConnector:
    return MailchimpConnector(
        httpx.AsyncClient(verify=TLS),
        config or ConnectorConfig(),
        Credentials(shop_domain="shop.example", access_token=key, extra={"list_id": "a1b2c3d4e5", **extra}),
        attempts=3,
        retry_wait=wait_none(),
    )


def recipient(n: int) -> Recipient:
    return Recipient(
        key=f"user{n}@example.com",
        email=f"User{n}@Example.com",
        fields={"coupon_code": f"SAVE{n:04d}", "coupon_display": f"SAVE-{n:04d}", "claim_url": f"https://shop.example/c/{n}"},
    )


def md5(email: str) -> str:
    return hashlib.md5(email.lower().encode()).hexdigest()


def test_base_url_comes_from_the_key_suffix() -> None:
    assert connector("abc-us21")._base == "https://us21.api.mailchimp.com/3.0"
    assert connector("oauth-token-1234", dc="us3")._base == "https://us3.api.mailchimp.com/3.0"
    assert connector("token", dc="us3")._auth._header == "Bearer token"
    assert connector("abc-us21", ConnectorConfig(base_url="http://127.0.0.1:9/3.0/"))._base == "http://127.0.0.1:9/3.0"
    with pytest.raises(AuthError):
        connector("abc-evil.example.com/x")
    with pytest.raises(Rejected, match="list_id"):
        MailchimpConnector(httpx.AsyncClient(verify=TLS), ConnectorConfig(), Credentials(shop_domain="s", access_token="k-us1"))
    assert isinstance(connector(), MessagingConnector)


async def test_missing_merge_fields_are_created_once(fake: FakeMailchimp) -> None:
    mailchimp = connector()
    await mailchimp.push_recipients([recipient(1)])
    await mailchimp.push_recipients([recipient(2)])

    assert fake.router["merge-fields"].call_count == 1
    assert fake.router["merge-fields"].calls.last.request.url.params["count"] == "1000"
    created = [json.loads(c.request.content) for c in fake.router["create-merge-field"].calls]
    assert created == [
        {"tag": "COUPON", "name": "Coupon code", "type": "text", "required": False, "public": False},
        {"tag": "COUPONDISP", "name": "Coupon code (display)", "type": "text", "required": False, "public": False},
        {"tag": "CLAIMURL", "name": "Coupon link", "type": "url", "required": False, "public": False},
    ]
    assert {"FNAME", "LNAME", "COUPON", "COUPONDISP", "CLAIMURL"} == fake.tags()


async def test_existing_merge_fields_are_not_recreated(fake: FakeMailchimp) -> None:
    fake.merge_fields.append({**fake.merge_fields[0], "merge_id": 9, "tag": "COUPON", "name": "Coupon"})
    await connector().push_recipients([Recipient(key="a@example.com", email="a@example.com", fields={"coupon_code": "A"})])
    assert fake.router["create-merge-field"].call_count == 0


async def test_members_are_upserted_by_subscriber_hash(fake: FakeMailchimp) -> None:
    results = await connector().push_recipients([recipient(1), recipient(2)])

    assert fake.router["member"].call_count == 2
    request = fake.router["member"].calls[0].request
    assert request.url.path == f"/3.0/lists/a1b2c3d4e5/members/{md5('user1@example.com')}"
    assert request.headers["authorization"].startswith("Basic ")
    assert json.loads(request.content) == {
        "email_address": "User1@Example.com",
        "status_if_new": "transactional",
        "merge_fields": {"COUPON": "SAVE0001", "COUPONDISP": "SAVE-0001", "CLAIMURL": "https://shop.example/c/1"},
    }
    assert [(r.key, r.ok, r.provider_id) for r in results] == [
        ("user1@example.com", True, md5("user1@example.com")),
        ("user2@example.com", True, md5("user2@example.com")),
    ]
    assert fake.members[md5("user1@example.com")]["merge_fields"]["COUPON"] == "SAVE0001"


async def test_status_if_new_is_configurable(fake: FakeMailchimp) -> None:
    await connector(status_if_new="subscribed").push_recipients([recipient(1)])
    assert json.loads(fake.router["member"].calls.last.request.content)["status_if_new"] == "subscribed"


async def test_per_member_errors_fail_only_that_member(fake: FakeMailchimp) -> None:
    abuse = problem("problem_invalid_resource.json", 400)
    fake.script("member", abuse)
    people = [recipient(1), Recipient(key="cust-9", fields={"coupon_code": "X"}), recipient(2)]
    results = await connector(concurrency="1").push_recipients(people)

    assert [r.ok for r in results] == [False, False, True]
    assert results[0].error == (
        "The resource submitted could not be validated. For field-specific details, see the 'errors' array."
        " (email_address: This value should be a valid email.)"
    )
    assert results[1].error == "no email address"
    assert fake.router["member"].call_count == 2  # the recipient without email was never sent


async def test_429_then_success(fake: FakeMailchimp) -> None:
    fake.script("member", problem("problem_too_many_requests.json", 429))
    results = await connector().push_recipients([recipient(1)])
    assert fake.router["member"].call_count == 2
    assert results[0].ok


async def test_5xx_then_success(fake: FakeMailchimp) -> None:
    fake.script("member", httpx.Response(500, json={"title": "Internal Server Error", "status": 500, "detail": "oops"}))
    assert (await connector().push_recipients([recipient(1)]))[0].ok
    assert fake.router["member"].call_count == 2


async def test_exhausted_retries_raise(fake: FakeMailchimp) -> None:
    fake.script("member", *[problem("problem_too_many_requests.json", 429)] * 3)
    with pytest.raises(RateLimited, match="10 simultaneous connections"):
        await connector().push_recipients([recipient(1)])
    assert fake.router["member"].call_count == 3

    fake.script("member", *[httpx.Response(503, text="unavailable")] * 3)
    with pytest.raises(UpstreamError):
        await connector().push_recipients([recipient(1)])
    assert fake.router["member"].call_count == 6


async def test_bad_key_and_unknown_list_raise(fake: FakeMailchimp) -> None:
    with pytest.raises(AuthError, match="API key may be invalid"):
        await connector("ffffffffffffffffffffffffffffffff-us6").push_recipients([recipient(1)])
    with pytest.raises(NotFound):
        await connector(list_id="nope").push_recipients([recipient(1)])
    assert fake.router["merge-fields"].call_count == 2  # neither was retried


async def test_concurrency_stays_within_the_limit(fake: FakeMailchimp) -> None:
    await connector(concurrency="3").push_recipients([recipient(n) for n in range(20)])
    assert fake.max_in_flight == 3
    fake.max_in_flight = 0
    await connector(concurrency="50").push_recipients([recipient(n) for n in range(30)])
    assert fake.max_in_flight == MailchimpConnector.MAX_CONCURRENCY


def test_unknown_keys_get_a_ten_character_tag() -> None:
    assert MailchimpConnector.merge_field("loyalty_tier_name") == ("LOYALTY_TI", "Loyalty tier name", "text")
    assert all(len(tag) <= 10 for tag, _, _ in MailchimpConnector.MERGE_FIELDS.values())
