"""SendGrid: custom fields created when missing, contact upserts keyed by field id, size limits,
the asynchronous job, rate limits; every request checked against SendGrid's published specs
(tests/contracts/sendgrid)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from typing import ClassVar

import httpx
import pytest
from tenacity import wait_none
from tenacity.wait import wait_base

from connectors.base import ConnectorConfig, Credentials, MessagingConnector, Recipient
from connectors.errors import AuthError, Rejected, UpstreamError
from connectors.http import wait_retry_after
from connectors.sendgrid import SendGridConnector
from tests.connectors.fakes.sendgrid import RESET_EPOCH, FakeSendGrid, fixture
from tests.contracts import body_errors, load_contract, openapi, validate_request, validate_response

CONTACTS = "sendgrid/tsg_mc_contacts_v3.json"
FIELDS = "sendgrid/tsg_mc_custom_fields_v3.json"
LIST_ID = "ca7a3796-e8a8-4029-9ccb-df8937940562"
pytestmark = pytest.mark.anyio
TLS = ssl.create_default_context()  # one for every client: building one costs ~0.1 s


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def spec_for(request: httpx.Request) -> str:
    return FIELDS if "field_definitions" in request.url.path else CONTACTS


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    fake = FakeSendGrid()
    with fake.router:
        yield fake
    for route in fake.router.routes:  # every request we sent, whatever the test did
        for call in route.calls:
            validate_request(openapi(spec_for(call.request)), call.request)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)


def connector(
    cls: type[SendGridConnector] = SendGridConnector, sleep: Sleeps | None = None, wait: wait_base | None = None, **extra: str
) -> SendGridConnector:
    return cls(
        httpx.AsyncClient(verify=TLS),
        ConnectorConfig(),
        Credentials(shop_domain="shop.example", access_token=FakeSendGrid.API_KEY, extra=extra),
        attempts=3,
        retry_wait=wait or wait_none(),
        sleep=sleep or Sleeps(),
        wall_clock=lambda: RESET_EPOCH - 5.0,
    )


def recipient(n: int) -> Recipient:
    return Recipient(
        key=f"user{n}@example.com",
        email=f"user{n}@example.com",
        fields={"coupon_code": f"SAVE{n:04d}", "claim_url": f"https://s/c/{n}"},
    )


async def test_missing_custom_fields_are_created_then_contacts_upserted_by_field_id(fake: FakeSendGrid) -> None:
    sendgrid = connector(list_id=LIST_ID)
    results = await sendgrid.push_recipients([recipient(1), Recipient(key="+15555550100", fields={"coupon_code": "SMS"})])

    assert fake.router["fields"].call_count == 1
    created = [json.loads(c.request.content) for c in fake.router["create-field"].calls]
    assert created == [{"name": "coupon_code", "field_type": "Text"}, {"name": "claim_url", "field_type": "Text"}]
    for body in created:
        assert body_errors(load_contract(FIELDS), "/v3/marketing/field_definitions", "post", body) == []

    request = fake.router["upsert"].calls.last.request
    assert request.headers["authorization"] == f"Bearer {FakeSendGrid.API_KEY}"
    body = json.loads(request.content)
    assert body_errors(load_contract(CONTACTS), "/v3/marketing/contacts", "put", body) == []
    assert body == {
        "list_ids": [LIST_ID],
        "contacts": [
            {"email": "user1@example.com", "custom_fields": {"e3_T": "SAVE0001", "e4_T": "https://s/c/1"}},
            {"phone_number_id": "+15555550100", "custom_fields": {"e3_T": "SMS"}},
        ],
    }
    job_id = next(iter(fake.jobs))
    assert [(r.ok, r.provider_id) for r in results] == [(True, job_id), (True, job_id)]

    await sendgrid.push_recipients([recipient(2)])  # fields known now: no more definitions calls
    assert fake.router["fields"].call_count == 1
    assert fake.router["create-field"].call_count == 2
    assert isinstance(sendgrid, MessagingConnector)


async def test_existing_field_is_matched_ignoring_case(fake: FakeSendGrid) -> None:
    fake.custom_fields.append({"id": "e9_T", "name": "Coupon_Code", "field_type": "Text"})
    await connector().push_recipients([Recipient(key="a@example.com", email="a@example.com", fields={"coupon_code": "A"})])
    assert fake.router["create-field"].call_count == 0
    assert json.loads(fake.router["upsert"].calls.last.request.content)["contacts"][0]["custom_fields"] == {"e9_T": "A"}


async def test_upserts_split_at_batch_size_and_six_megabytes(fake: FakeSendGrid) -> None:
    class Small(SendGridConnector):
        BATCH_SIZE: ClassVar[int] = 2

    class Tight(SendGridConnector):
        MAX_REQUEST_BYTES: ClassVar[int] = 300

    results = await connector(Small).push_recipients([recipient(n) for n in range(5)])
    assert fake.router["upsert"].call_count == 3 and len({r.provider_id for r in results}) == 3
    await connector(Tight).push_recipients([recipient(n) for n in range(5)])
    assert max(len(c.request.content) for c in fake.router["upsert"].calls[3:]) <= 300
    assert sum(len(job["contacts"]) for job in fake.jobs.values()) == 10


async def test_job_results(fake: FakeSendGrid) -> None:
    sendgrid = connector()
    people = [recipient(1), recipient(2)]
    job_id = (await sendgrid.push_recipients(people))[0].provider_id or ""
    assert await sendgrid.job_results(job_id, people) is None

    fake.finish_jobs()
    done = await sendgrid.job_results(job_id, people)
    assert done is not None and all(r.ok for r in done)

    fake.finish_jobs(status="errored", errored=1)
    errored = await sendgrid.job_results(job_id, people)
    assert errored is not None and not any(r.ok for r in errored)
    assert (errored[0].error or "").startswith(
        "SendGrid import errored: 1 of 2 contacts failed (details: https://api.sendgrid.com/"
    )
    for call in fake.router["import"].calls:
        validate_response(openapi(CONTACTS), call.request, call.response)


async def test_recipient_without_identifier_fails_alone(fake: FakeSendGrid) -> None:
    results = await connector().push_recipients([Recipient(key="", fields={"coupon_code": "X"}), recipient(1)])
    assert [r.ok for r in results] == [False, True]
    assert len(json.loads(fake.router["upsert"].calls.last.request.content)["contacts"]) == 1


async def test_429_waits_for_the_reset_then_succeeds(fake: FakeSendGrid) -> None:
    sleeps = Sleeps()
    fake.script(
        "upsert", httpx.Response(429, json=fixture("too_many_requests.json"), headers={"X-RateLimit-Reset": str(RESET_EPOCH)})
    )
    # the default wait: until X-RateLimit-Reset, 5 s after the injected wall clock
    results = await connector(sleep=sleeps, wait=wait_retry_after()).push_recipients([recipient(1)])
    assert fake.router["upsert"].call_count == 2
    assert results[0].ok
    assert sleeps.calls == [5.0]


async def test_5xx_then_success_and_exhausted(fake: FakeSendGrid) -> None:
    fake.script("upsert", httpx.Response(500, json={"errors": [{"message": "internal"}]}))
    assert (await connector().push_recipients([recipient(1)]))[0].ok
    assert fake.router["upsert"].call_count == 2

    fake.script("upsert", *[httpx.Response(503, json={"errors": [{"message": "unavailable"}]})] * 3)
    with pytest.raises(UpstreamError, match="unavailable"):
        await connector().push_recipients([recipient(1)])
    assert fake.router["upsert"].call_count == 5


async def test_auth_and_validation_errors(fake: FakeSendGrid) -> None:
    fake.script("fields", httpx.Response(401, json=fixture("unauthorized.json")))
    with pytest.raises(AuthError, match="authorization required"):
        await connector().push_recipients([recipient(1)])
    fake.script("upsert", httpx.Response(400, json=fixture("bad_request.json")))
    with pytest.raises(Rejected, match=r"contacts\[0\].email: email is invalid"):
        await connector().push_recipients([recipient(1)])
    assert fake.router["upsert"].call_count == 1


async def test_on_behalf_of_a_subuser(fake: FakeSendGrid) -> None:
    await connector(on_behalf_of="subuser-1").push_recipients([recipient(1)])
    assert {c.request.headers.get("on-behalf-of") for c in fake.router["upsert"].calls} == {"subuser-1"}


def test_field_names_follow_sendgrids_rules() -> None:
    assert SendGridConnector.field_name("coupon_code") == "coupon_code"
    assert SendGridConnector.field_name("2nd-code") == "f_2nd_code"
