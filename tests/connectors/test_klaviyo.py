"""Klaviyo: bulk profile import, Coupons API, pacing and retries; every request checked against
Klaviyo's published spec (tests/contracts/klaviyo)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
import pytest
from tenacity import wait_none

from connectors.base import CodeSpec, ConnectorConfig, Credentials, MessagingConnector, Recipient
from connectors.errors import AuthError, Rejected, UpstreamError
from connectors.klaviyo import KlaviyoConnector
from tests.connectors.fakes.klaviyo import JSON_API, FakeKlaviyo, fixture
from tests.contracts import body_errors, load_contract, openapi, validate_request, validate_response

SPEC = "klaviyo/klaviyo_openapi_stable.json.gz"
pytestmark = pytest.mark.anyio
TLS = ssl.create_default_context()  # one for every client: building one costs ~0.1 s


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def fake() -> Iterator[FakeKlaviyo]:
    fake = FakeKlaviyo()
    with fake.router:
        yield fake
    api = openapi(SPEC)
    revision = load_contract(SPEC)["info"]["version"]
    for request in fake.requests:  # whatever a test did, every request we sent must match the contract
        validate_request(api, request)
        # openapi-core lets a missing `revision` through (the spec gives it a default): check it here
        assert request.headers.get("revision") == revision


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime()


def connector(time_: FakeTime, cls: type[KlaviyoConnector] = KlaviyoConnector, **extra: str) -> KlaviyoConnector:
    return cls(
        httpx.AsyncClient(verify=TLS),
        ConnectorConfig(),
        Credentials(shop_domain="shop.example", access_token="pk_test_123", extra=extra),
        attempts=3,
        retry_wait=wait_none(),
        clock=time_.clock,
        sleep=time_.sleep,
    )


def recipient(n: int, **fields: str) -> Recipient:
    return Recipient(
        key=f"user{n}@example.com",
        email=f"user{n}@example.com",
        fields={"coupon_code": f"SAVE{n:04d}", "coupon_display": f"SAVE-{n:04d}", **fields},
    )


def test_revision_is_the_contracts_version() -> None:
    assert load_contract(SPEC)["info"]["version"] == KlaviyoConnector.REVISION
    assert isinstance(connector(FakeTime()), MessagingConnector)


async def test_push_recipients_sends_one_bulk_import_job(fake: FakeKlaviyo, time_: FakeTime) -> None:
    people = [
        recipient(1, coupon_expires_at="2026-12-31T23:59:59+00:00", claim_url="https://shop.example/c/abc"),
        Recipient(key="+15555550100", fields={"coupon_code": "SMS1"}),
        Recipient(key="cust-7", external_id="cust-7", fields={"coupon_code": "EXT7"}),
    ]
    results = await connector(time_, list_id="VRgFBd").push_recipients(people)

    assert fake.router["import"].call_count == 1
    request = fake.router["import"].calls.last.request
    assert request.headers["authorization"] == "Klaviyo-API-Key pk_test_123"
    assert request.headers["revision"] == "2026-07-15"
    assert request.headers["content-type"] == JSON_API["content-type"]
    body = json.loads(request.content)
    assert body_errors(load_contract(SPEC), "/api/profile-bulk-import-jobs", "post", body, "application/vnd.api+json") == []
    profiles = body["data"]["attributes"]["profiles"]["data"]
    assert profiles[0] == {
        "type": "profile",
        "attributes": {
            "email": "user1@example.com",
            "properties": {
                "coupon_code": "SAVE0001",
                "coupon_display": "SAVE-0001",
                "coupon_expires_at": "2026-12-31T23:59:59+00:00",
                "claim_url": "https://shop.example/c/abc",
            },
        },
    }
    assert profiles[1]["attributes"]["phone_number"] == "+15555550100"
    assert profiles[2]["attributes"]["external_id"] == "cust-7"
    assert body["data"]["relationships"] == {"lists": {"data": [{"type": "list", "id": "VRgFBd"}]}}

    job_id = next(iter(fake.jobs))
    assert [(r.key, r.ok, r.provider_id) for r in results] == [(p.key, True, job_id) for p in people]


async def test_recipient_without_identifier_or_too_large_fails_alone(fake: FakeKlaviyo, time_: FakeTime) -> None:
    people = [recipient(1), Recipient(key="", fields={"coupon_code": "X"}), recipient(2, note="x" * 100_001)]
    results = await connector(time_).push_recipients(people)

    assert [r.ok for r in results] == [True, False, False]
    assert results[1].error == "no email, phone number or external id"
    assert "100 KB" in (results[2].error or "")
    assert len(fake.imported_profiles()) == 1


async def test_jobs_split_at_batch_size_and_payload_limit(fake: FakeKlaviyo, time_: FakeTime) -> None:
    class Small(KlaviyoConnector):
        BATCH_SIZE: ClassVar[int] = 2

    results = await connector(time_, Small).push_recipients([recipient(n) for n in range(5)])
    assert fake.router["import"].call_count == 3
    assert len({r.provider_id for r in results}) == 3

    class Tight(KlaviyoConnector):
        MAX_JOB_BYTES: ClassVar[int] = 400  # about two profiles with the envelope

    results = await connector(time_, Tight).push_recipients([recipient(n) for n in range(5)])
    sizes = [len(c.request.content) for c in fake.router["import"].calls[3:]]
    assert sizes and max(sizes) <= 400
    assert len(fake.imported_profiles()) == 10
    assert all(r.ok for r in results)


async def test_large_pushes_encode_off_the_event_loop(fake: FakeKlaviyo, time_: FakeTime) -> None:
    people = [recipient(n) for n in range(1200)] + [Recipient(key="")]
    results = await connector(time_).push_recipients(people)
    assert fake.router["import"].call_count == 1
    assert [p["attributes"]["email"] for p in fake.imported_profiles()] == [p.email for p in people[:-1]]
    assert [r.ok for r in results] == [True] * 1200 + [False]


async def test_429_with_retry_after_holds_then_succeeds(fake: FakeKlaviyo, time_: FakeTime) -> None:
    fake.script("import", httpx.Response(429, json=fixture("throttled.json"), headers={"Retry-After": "7", **JSON_API}))
    results = await connector(time_).push_recipients([recipient(1)])

    assert fake.router["import"].call_count == 2
    assert results[0].ok
    # the pacer held every caller for Retry-After; the retry's own wait was the injected zero
    assert [s for s in time_.sleeps if s] == [7.0]


async def test_5xx_then_success(fake: FakeKlaviyo, time_: FakeTime) -> None:
    fake.script("import", httpx.Response(503, json={"errors": [{"detail": "unavailable"}]}))
    results = await connector(time_).push_recipients([recipient(1)])
    assert fake.router["import"].call_count == 2
    assert results[0].ok


async def test_retries_exhausted_raise_the_last_error(fake: FakeKlaviyo, time_: FakeTime) -> None:
    fake.script("import", *[httpx.Response(502, json={"errors": [{"detail": "bad gateway"}]})] * 3)
    with pytest.raises(UpstreamError, match="bad gateway"):
        await connector(time_).push_recipients([recipient(1)])
    assert fake.router["import"].call_count == 3


async def test_auth_and_validation_errors_are_not_retried(fake: FakeKlaviyo, time_: FakeTime) -> None:
    fake.script("import", httpx.Response(401, json=fixture("unauthorized.json"), headers=JSON_API))
    with pytest.raises(AuthError, match="Missing or invalid private key"):
        await connector(time_).push_recipients([recipient(1)])
    invalid = {"errors": [{"id": "x", "status": 400, "code": "invalid", "title": "Invalid input.", "detail": "bad profile"}]}
    fake.script("import", httpx.Response(400, json=invalid, headers=JSON_API))
    with pytest.raises(Rejected, match="bad profile"):
        await connector(time_).push_recipients([recipient(1)])
    assert fake.router["import"].call_count == 2


async def test_pacer_keeps_inside_the_burst_window(fake: FakeKlaviyo, time_: FakeTime) -> None:
    klaviyo = connector(time_)
    await asyncio.gather(*(klaviyo.push_recipients([recipient(n)]) for n in range(12)))

    assert fake.router["import"].call_count == 12
    assert time_.sleeps and time_.now >= 1000.0 + 1.0  # the 11th and 12th waited out the first second


async def test_job_results_map_import_errors_to_recipients(fake: FakeKlaviyo, time_: FakeTime) -> None:
    klaviyo = connector(time_)
    people = [recipient(n) for n in range(150)]
    accepted = await klaviyo.push_recipients(people)
    job_id = accepted[0].provider_id
    assert job_id is not None
    assert await klaviyo.job_results(job_id, people) is None  # still queued

    fake.finish_jobs(
        failures={f"user{n}@example.com": "Invalid email address" for n in range(0, 150, 1) if n % 30 == 0 or n >= 40}
    )
    results = await klaviyo.job_results(job_id, people)

    assert results is not None
    failed = {r.key for r in results if not r.ok}
    assert failed == {f"user{n}@example.com" for n in range(150) if n % 30 == 0 or n >= 40}
    assert all(r.error == "Invalid email address" for r in results if not r.ok)
    assert fake.router["import-errors"].call_count == 2  # 111 errors, 100 a page
    for call in fake.router["import-errors"].calls:
        validate_response(openapi(SPEC), call.request, call.response)


async def test_job_results_cancelled_job_fails_everyone(fake: FakeKlaviyo, time_: FakeTime) -> None:
    klaviyo = connector(time_)
    people = [recipient(1), recipient(2)]
    job_id = (await klaviyo.push_recipients(people))[0].provider_id or ""
    fake.finish_jobs(status="cancelled")
    results = await klaviyo.job_results(job_id, people)
    assert results is not None
    assert [r.ok for r in results] == [False, False]


async def test_upload_coupon_codes_creates_missing_coupon_and_splits_jobs(fake: FakeKlaviyo, time_: FakeTime) -> None:
    klaviyo = connector(time_)
    expires = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    codes = [CodeSpec(code=f"SPR{n:05d}", display=f"SPR-{n:05d}", expires_at=expires if n % 2 else None) for n in range(2500)]
    results = await klaviyo.upload_coupon_codes("SPRING10", codes)

    assert fake.router["coupon"].call_count == 1
    assert fake.router["coupons"].call_count == 1
    assert json.loads(fake.router["coupons"].calls.last.request.content) == {
        "data": {"type": "coupon", "attributes": {"external_id": "SPRING10"}}
    }
    jobs = fake.router["coupon-jobs"].calls
    assert [len(json.loads(c.request.content)["data"]["attributes"]["coupon-codes"]["data"]) for c in jobs] == [1000, 1000, 500]
    spec = load_contract(SPEC)
    first = json.loads(jobs[0].request.content)
    assert body_errors(spec, "/api/coupon-code-bulk-create-jobs", "post", first, "application/vnd.api+json") == []
    assert first["data"]["attributes"]["coupon-codes"]["data"][:2] == [
        {
            "type": "coupon-code",
            "attributes": {"unique_code": "SPR-00000"},
            "relationships": {"coupon": {"data": {"type": "coupon", "id": "SPRING10"}}},
        },
        {
            "type": "coupon-code",
            "attributes": {"unique_code": "SPR-00001", "expires_at": "2026-12-31T23:59:00+00:00"},
            "relationships": {"coupon": {"data": {"type": "coupon", "id": "SPRING10"}}},
        },
    ]
    assert [r.code for r in results] == [c.code for c in codes]
    assert all(r.ok and r.platform_id in fake.coupon_jobs for r in results)
    for call in [*fake.router["coupons"].calls, *jobs]:
        validate_response(openapi(SPEC), call.request, call.response)

    # a second upload finds the coupon known and goes straight to the codes
    await klaviyo.upload_coupon_codes("SPRING10", codes[:1])
    assert fake.router["coupon"].call_count == 1
    job = await klaviyo.coupon_job(results[0].platform_id or "")
    assert job.done and job.total == 1000


async def test_ensure_coupon_tolerates_a_concurrent_create(fake: FakeKlaviyo, time_: FakeTime) -> None:
    fake.coupons.add("SPRING10")
    fake.script("coupon", httpx.Response(404, json=fixture("not_found.json"), headers=JSON_API))
    assert await connector(time_).ensure_coupon("SPRING10") == "SPRING10"
    assert fake.router["coupons"].call_count == 1  # answered 409: already there


def spring(n: int) -> list[CodeSpec]:
    return [CodeSpec(code=f"SPR{i:05d}", display=f"SPR-{i:05d}") for i in range(n)]


async def test_a_coupon_code_job_is_not_sent_again_after_an_ambiguous_failure(fake: FakeKlaviyo, time_: FakeTime) -> None:
    klaviyo = connector(time_)
    server_error = {"errors": [{"id": "x", "status": 500, "code": "error", "title": "Server error.", "detail": "boom"}]}
    fake.script("coupon-jobs", httpx.Response(500, json=server_error, headers=JSON_API))
    with pytest.raises(UpstreamError):
        await klaviyo.submit_coupon_codes("SPRING10", spring(3))
    assert fake.router["coupon-jobs"].call_count == 1  # the job may exist: the caller looks its codes up
    fake.script("coupon-jobs", httpx.ConnectTimeout("slow"))
    assert await klaviyo.submit_coupon_codes("SPRING10", spring(3))  # never reached Klaviyo: sent again here
    assert fake.router["coupon-jobs"].call_count == 3


async def test_a_throttled_coupon_code_job_waits_retry_after_then_goes(fake: FakeKlaviyo, time_: FakeTime) -> None:
    klaviyo = connector(time_)
    fake.script("coupon-jobs", httpx.Response(429, json=fixture("throttled.json"), headers={"Retry-After": "9", **JSON_API}))
    job_id = await klaviyo.submit_coupon_codes("SPRING10", spring(2))
    assert fake.router["coupon-jobs"].call_count == 2 and job_id in fake.coupon_jobs
    assert sum(time_.sleeps) >= 9
    assert len(fake.coupon_jobs) == 1


async def test_a_finished_job_names_the_codes_it_created(fake: FakeKlaviyo, time_: FakeTime) -> None:
    klaviyo = connector(time_)
    fake.coupon_codes["SPRING10"]["SPR-00001"] = "UNASSIGNED"  # there already: the job fails it
    fake.hold_coupon_jobs = True
    job_id = await klaviyo.submit_coupon_codes("SPRING10", spring(3))
    job, created = await klaviyo.coupon_job_outcome(job_id)
    assert not job.done and created == frozenset()
    fake.run_coupon_jobs()
    job, created = await klaviyo.coupon_job_outcome(job_id)
    assert job.done and (job.total, job.failed) == (3, 1) and "already exists" in job.errors[0]
    assert created == {"SPRING10-SPR-00000", "SPRING10-SPR-00002"}
    assert await klaviyo.coupon_code_exists("SPRING10", "SPR-00001")
    assert not await klaviyo.coupon_code_exists("SPRING10", "SPR-09999")
    api = openapi(SPEC)
    for name in ("coupon-job", "coupon-code"):
        for call in fake.router[name].calls:
            validate_response(api, call.request, call.response)


async def test_unassigned_codes_are_counted_up_to_the_bound(fake: FakeKlaviyo, time_: FakeTime) -> None:
    klaviyo = connector(time_)
    codes = fake.coupon_codes["SPRING10"]
    codes.update({f"C{n:04d}": "UNASSIGNED" for n in range(250)})
    codes.update({f"D{n:04d}": "ASSIGNED_TO_PROFILE" for n in range(40)})
    assert await klaviyo.count_unassigned("SPRING10", upto=1000) == 250
    assert fake.router["coupon-codes"].call_count == 3
    assert await klaviyo.count_unassigned("SPRING10", upto=50) == 50
    assert fake.router["coupon-codes"].call_count == 4  # one page was enough
    request = fake.router["coupon-codes"].calls.last.request
    assert request.url.params["filter"] == "equals(status,'UNASSIGNED')"
    for call in fake.router["coupon-codes"].calls:
        validate_response(openapi(SPEC), call.request, call.response)


def test_fixtures_are_documented_responses() -> None:
    api = openapi(SPEC)
    base = "https://a.klaviyo.com"
    cases: list[tuple[str, str, int, Any]] = [
        ("POST", "/api/profile-bulk-import-jobs", 202, fixture("bulk_import_job.json")),
        ("GET", "/api/coupons/SPRING10", 200, fixture("coupon.json")),
        ("POST", "/api/coupons", 201, fixture("coupon.json")),
        ("POST", "/api/coupon-code-bulk-create-jobs", 202, fixture("coupon_code_bulk_create_job.json")),
        ("GET", "/api/coupons/SPRING10", 404, fixture("not_found.json")),
        ("POST", "/api/profile-bulk-import-jobs", 429, fixture("throttled.json")),
    ]
    for method, path, status, body in cases:
        request = httpx.Request(method, base + path)
        validate_response(api, request, httpx.Response(status, json=body, headers=JSON_API))
