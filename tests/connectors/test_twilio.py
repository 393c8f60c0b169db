"""Twilio: form-encoded message creation and the message list checked against Twilio's published
spec (tests/contracts/twilio); what is retried, what is looked up before any resend and what fails
at once; the account's shared concurrency limit; and the status-callback signature against
Twilio's own test vectors."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import httpx
import pytest
from tenacity import wait_none

from connectors.base import ConnectorConfig, Credentials, MessagingConnector, Recipient
from connectors.concurrency import SharedConcurrencyLimit, account_limit, reset_account_limits
from connectors.errors import AuthError, BadSignature, ConnectorError
from connectors.twilio import TwilioConnector, compute_signature
from tests.connectors.fakes.twilio import LOST, LOST_500, FakeTwilio, Scripted, check_against_the_contract, error, fixture
from tests.contracts import load_contract

SPEC = "twilio/twilio_api_v2010.json.gz"
MESSAGES = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
pytestmark = pytest.mark.anyio
TLS = ssl.create_default_context()  # one for every client: building one costs ~0.1 s


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


@pytest.fixture(autouse=True)
def fresh_limits() -> None:
    """Each test starts with the account's full concurrency (limits live for the process)."""
    reset_account_limits()


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    with fake.router:
        yield fake
        check_against_the_contract(fake)  # inside: the router forgets its calls when it stops


def connector(**extra: str) -> TwilioConnector:
    settings = {"account_sid": FakeTwilio.ACCOUNT_SID, "from": "+14155552345", **extra}
    return TwilioConnector(
        httpx.AsyncClient(verify=TLS),
        ConnectorConfig(),
        Credentials(shop_domain="shop.example", access_token=FakeTwilio.AUTH_TOKEN, extra=settings),
        attempts=3,
        retry_wait=wait_none(),
    )


def recipient(n: int, **fields: str) -> Recipient:
    return Recipient(
        key=f"+1555555{n:04d}",
        phone=f"+1555555{n:04d}",
        fields={"coupon_code": f"SAVE{n}", "coupon_display": f"SAVE-{n}", **fields},
    )


async def test_message_carries_the_code(fake: FakeTwilio) -> None:
    twilio = connector(status_callback="https://app.example/hooks/twilio/status", validity_period="3600")
    results = await twilio.push_recipients([recipient(1, claim_url="https://shop.example/c/1")])

    request = fake.router["messages"].calls.last.request
    assert request.url == f"https://api.twilio.com/2010-04-01/Accounts/{FakeTwilio.ACCOUNT_SID}/Messages.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    user_pass = base64.b64encode(f"{FakeTwilio.ACCOUNT_SID}:{FakeTwilio.AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {user_pass}"
    assert form(request) == {
        "To": "+15555550001",
        "From": "+14155552345",
        "Body": "Your code: SAVE-1 https://shop.example/c/1",
        "StatusCallback": "https://app.example/hooks/twilio/status",
        "ValidityPeriod": "3600",
    }
    assert [(r.key, r.ok, r.provider_id) for r in results] == [("+15555550001", True, fake.messages[0]["sid"])]
    assert isinstance(twilio, MessagingConnector)


async def test_messaging_service_api_key_and_template(fake: FakeTwilio) -> None:
    sid, secret = FakeTwilio.API_KEY
    twilio = TwilioConnector(
        httpx.AsyncClient(verify=TLS),
        ConnectorConfig(),
        Credentials(
            shop_domain="shop.example",
            access_token=FakeTwilio.AUTH_TOKEN,
            extra={
                "account_sid": FakeTwilio.ACCOUNT_SID,
                "messaging_service_sid": "MG" + "a" * 32,
                "api_key_sid": sid,
                "api_key_secret": secret,
                "body": "{coupon_code} saves 10% until {coupon_expires_at}",
            },
        ),
    )
    results = await twilio.push_recipients(
        [recipient(1, coupon_expires_at="2026-12-31"), Recipient(key="+15555550002", fields={"coupon_code": "X"})]
    )
    sent = form(fake.router["messages"].calls.last.request)
    assert sent["MessagingServiceSid"] == "MG" + "a" * 32 and "From" not in sent
    assert sent["Body"] == "SAVE1 saves 10% until 2026-12-31"
    assert [r.ok for r in results] == [True, False]
    assert "coupon_expires_at" in (results[1].error or "")
    with pytest.raises(ValueError, match="unsupported"):
        connector(body="{coupon_code.__class__}").message_body(recipient(1))
    assert fake.router["messages"].call_count == 1  # the second never rendered, so never sent


async def test_20429_is_retried(fake: FakeTwilio) -> None:
    fake.script(error("error_20429.json"))
    results = await connector().push_recipients([recipient(1)])
    assert fake.router["messages"].call_count == 2
    assert results[0].ok


async def test_connection_never_made_is_retried(fake: FakeTwilio) -> None:
    fake.script(httpx.ConnectError("connection refused"))
    results = await connector().push_recipients([recipient(1)])
    assert fake.router["messages"].call_count == 2
    assert results[0].ok


async def test_ambiguous_answers_are_neither_failed_nor_resent(fake: FakeTwilio) -> None:
    """A 5xx, a timeout after the request left, a dropped connection: Twilio may have the message,
    so the recipient is not failed and nothing is sent again in this call."""
    fake.script(error("error_20500.json"), httpx.ReadTimeout("read timed out"), httpx.RemoteProtocolError("dropped"))
    results = await connector(concurrency="1").push_recipients([recipient(1), recipient(2), recipient(3)])
    assert fake.router["messages"].call_count == 3
    assert fake.router["list"].call_count == 0
    assert [(r.ok, r.pending) for r in results] == [(False, "unknown")] * 3
    assert results[0].error == (
        "20500: Internal Server Error (HTTP 500) (the message may have been sent; looked up before any resend)"
    )
    assert "timed out" in (results[1].error or "") and "broke the connection" in (results[2].error or "")


def again(person: Recipient, attempted_at: datetime) -> Recipient:
    return dataclasses.replace(person, attempted_at=attempted_at)


@pytest.mark.parametrize("lost", [LOST, LOST_500])
async def test_a_lost_answer_is_found_and_not_resent(fake: FakeTwilio, lost: Scripted) -> None:
    twilio, person, first = connector(), recipient(1), datetime.now(UTC)
    fake.script(lost)  # Twilio commits the message, then the answer is lost
    [result] = await twilio.push_recipients([person])
    assert result.pending == "unknown" and len(fake.created_for(person.key)) == 1

    [result] = await twilio.push_recipients([again(person, first)])
    assert fake.router["list"].call_count == 1
    assert fake.router["messages"].call_count == 1  # not sent a second time
    assert (result.ok, result.provider_id, result.pending) == (True, fake.messages[0]["sid"], None)
    lookup = fake.router["list"].calls.last.request.url.params
    assert dict(lookup) == {"To": person.key, "From": "+14155552345", "PageSize": "50"}


async def test_a_messaging_service_sender_is_looked_up_by_its_sid(fake: FakeTwilio) -> None:
    service = "MG" + "a" * 32
    twilio = connector(**{"from": "", "messaging_service_sid": service})
    person, first = recipient(1), datetime.now(UTC)
    fake.add_message(person.key, "Your code: SAVE-1", first)["messaging_service_sid"] = "MG" + "b" * 32  # another service
    fake.script(LOST)
    await twilio.push_recipients([person])
    [result] = await twilio.push_recipients([again(person, first)])
    assert dict(fake.router["list"].calls.last.request.url.params) == {"To": person.key, "PageSize": "50"}  # no From
    assert (fake.router["list"].call_count, fake.router["messages"].call_count) == (1, 1)
    assert result.ok and result.provider_id == fake.created_for(person.key)[-1]["sid"]


@pytest.mark.parametrize(
    "fault", [error("error_20500.json"), httpx.ReadTimeout("read timed out"), httpx.RemoteProtocolError("dropped")]
)
async def test_what_provably_was_not_created_is_resent(fake: FakeTwilio, fault: Scripted) -> None:
    twilio, person, first = connector(), recipient(1), datetime.now(UTC)
    fake.script(fault)  # answered before anything was created
    await twilio.push_recipients([person])
    [result] = await twilio.push_recipients([again(person, first)])
    assert (fake.router["list"].call_count, fake.router["messages"].call_count) == (1, 2)
    assert result.ok and result.provider_id == fake.messages[0]["sid"]
    assert len(fake.created_for(person.key)) == 1


async def test_the_lookup_matches_the_code_and_a_creation_after_the_first_attempt(fake: FakeTwilio) -> None:
    twilio, person, first = connector(), recipient(7), datetime.now(UTC)
    fake.add_message(person.key, "Your code: SAVE-7", first - timedelta(days=2))  # before our attempt
    fake.add_message(person.key, "Your code: SAVE-77", first)  # another code that contains ours
    fake.add_message(person.key, "Your code: SAVE-8", first)  # another code
    fake.add_message(person.key, "Your code: SAVE-7", first, sender="+14155550000")  # another sender
    [result] = await twilio.push_recipients([again(person, first)])
    assert (fake.router["list"].call_count, fake.router["messages"].call_count) == (1, 1)  # none matched: sent
    assert result.ok and result.provider_id == fake.messages[-1]["sid"]
    # a message Twilio already failed is found as such and not resent
    failed = recipient(9)
    fake.add_message(failed.key, "Your code: SAVE-9", datetime.now(UTC)).update(status="undelivered", error_code=30003)
    [result] = await twilio.push_recipients([again(failed, first)])
    assert fake.router["messages"].call_count == 1
    assert (result.ok, result.pending, result.error) == (False, None, "Twilio undelivered it (error 30003)")


async def test_the_lookup_reads_a_bounded_number_of_pages(fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TwilioConnector, "LOOKUP_PAGE_SIZE", 2)
    twilio, person, first = connector(), recipient(1), datetime.now(UTC)
    fake.add_message(person.key, "Your code: SAVE-1", first)
    for n in range(3):  # newer messages push ours to the second page
        fake.add_message(person.key, f"Your code: OTHER-{n}", first)
    [result] = await twilio.push_recipients([again(person, first)])
    assert result.ok and result.provider_id == fake.messages[0]["sid"]
    assert (fake.router["list"].call_count, fake.router["messages"].call_count) == (2, 0)
    assert "PageToken" in fake.router["list"].calls.last.request.url.params

    for n in range(3, 7):  # now it is beyond the third page: can't tell, so not resent
        fake.add_message(person.key, f"Your code: OTHER-{n}", first)
    [result] = await twilio.push_recipients([again(person, first)])
    assert (result.ok, result.pending) == (False, "unknown") and "3 newest pages" in (result.error or "")
    assert (fake.router["list"].call_count, fake.router["messages"].call_count) == (2 + 3, 0)

    # the list's order is Twilio's (a queued message has no date_sent): an older message listed
    # before ours does not end the search on its page
    queued = recipient(3)
    ours = fake.add_message(queued.key, "Your code: SAVE-3", first)
    fake.add_message(queued.key, "Your code: OTHER", first - timedelta(days=1))
    [result] = await twilio.push_recipients([again(queued, first)])
    assert (result.ok, result.provider_id) == (True, ours["sid"])
    assert (fake.router["list"].call_count, fake.router["messages"].call_count) == (5 + 1, 0)

    # a page of older messages ends the search
    old = recipient(2)
    for n in range(5):
        fake.add_message(old.key, f"Your code: OTHER-{n}", first - timedelta(hours=1))
    [result] = await twilio.push_recipients([again(old, first)])
    assert result.ok and (fake.router["list"].call_count, fake.router["messages"].call_count) == (6 + 1, 1)


async def test_a_failed_lookup_leaves_it_unknown(fake: FakeTwilio) -> None:
    fake.script_list(error("error_20429.json"))  # never processed: queued again behind the account's limit
    [result] = await connector().push_recipients([again(recipient(1), datetime.now(UTC))])
    assert result.ok and (fake.router["list"].call_count, fake.router["messages"].call_count) == (2, 1)

    for fault in (error("error_20500.json"), httpx.ReadTimeout("read timed out")):  # left to the job's next run
        fake.script_list(fault)
        [result] = await connector().push_recipients([again(recipient(2), datetime.now(UTC))])
        assert (result.ok, result.pending) == (False, "unknown") and "could not look" in (result.error or "")
    assert (fake.router["list"].call_count, fake.router["messages"].call_count) == (4, 1)


async def test_exhausted_429s_leave_the_recipient_unsent(fake: FakeTwilio) -> None:
    fake.script(*[error("error_20429.json")] * 3)
    results = await connector().push_recipients([recipient(1)])
    assert fake.router["messages"].call_count == 3
    assert (results[0].ok, results[0].pending) == (False, "unsent")
    assert results[0].error == "20429: Too Many Requests (HTTP 429)"
    assert fake.messages == []


async def test_invalid_number_fails_alone_and_bad_credentials_raise(fake: FakeTwilio) -> None:
    people = [recipient(1), Recipient(key="+1555", fields={"coupon_code": "X"}), Recipient(key="cust-3")]
    results = await connector().push_recipients(people)
    assert [(r.ok, r.pending) for r in results] == [(True, None), (False, None), (False, None)]
    assert results[1].error == "21211: Invalid 'To' Phone Number: +1555 (HTTP 400)"
    assert results[2].error == "no phone number"
    assert fake.router["messages"].call_count == 2

    bad = TwilioConnector(
        httpx.AsyncClient(verify=TLS),
        ConnectorConfig(),
        Credentials(shop_domain="s", access_token="wrong", extra={"account_sid": FakeTwilio.ACCOUNT_SID, "from": "+14155552345"}),
    )
    with pytest.raises(AuthError, match="20003: Authenticate"):
        await bad.push_recipients([recipient(1)])


async def test_sends_concurrently_within_the_limit(fake: FakeTwilio) -> None:
    await connector(concurrency="4").push_recipients([recipient(n) for n in range(TwilioConnector.BATCH_SIZE)])
    assert fake.max_in_flight == 4
    assert fake.router["messages"].call_count == TwilioConnector.BATCH_SIZE


async def test_senders_of_one_account_share_its_limit(fake: FakeTwilio) -> None:
    """Three senders (three jobs) of one account at once: together never more than its limit."""
    senders = [connector(concurrency="4") for _ in range(3)]
    pushes = [s.push_recipients([recipient(100 * i + n) for n in range(10)]) for i, s in enumerate(senders)]
    results = await asyncio.gather(*pushes)
    assert fake.max_in_flight == 4
    assert all(r.ok for rs in results for r in rs) and len(fake.messages) == fake.router["messages"].call_count == 30


async def test_a_429_lowers_the_limit_for_every_sender(fake: FakeTwilio) -> None:
    fake.script(error("error_20429.json"))
    results = await connector(concurrency="4").push_recipients([recipient(n) for n in range(4)])
    assert all(r.ok for r in results) and fake.router["messages"].call_count == 5  # the 429 was sent again
    limit = account_limit(f"{FakeTwilio.BASE_URL} {FakeTwilio.ACCOUNT_SID}", 4)
    assert limit.limit == 2
    fake.max_in_flight = 0
    await connector(concurrency="4").push_recipients([recipient(n) for n in range(10, 22)])  # another sender
    assert fake.max_in_flight == 2  # queued behind the lowered limit, not four at once
    assert fake.router["messages"].call_count == 5 + 12


REDIS_URL = os.environ.get("COUPONRY_TEST_REDIS_URL")
ACCOUNT = f"{FakeTwilio.BASE_URL} {FakeTwilio.ACCOUNT_SID}"


@pytest.fixture
async def processes() -> AsyncIterator[list[SharedConcurrencyLimit]]:
    """Worker processes' views of the account's limit in Redis, each with its own client."""
    if not REDIS_URL:
        pytest.skip("shared limit: set COUPONRY_TEST_REDIS_URL (as .ci/run does on its PostgreSQL pass)")
    held: list[SharedConcurrencyLimit] = []
    yield held
    await held[0].forget()
    for limit in held:
        await limit.aclose()


def in_another_process(held: list[SharedConcurrencyLimit], **extra: str) -> TwilioConnector:
    reset_account_limits()  # a new process: nothing held in memory, only Redis is shared
    twilio = connector(redis_url=REDIS_URL or "", **extra)
    limit = account_limit(ACCOUNT, 4, REDIS_URL)
    assert isinstance(limit, SharedConcurrencyLimit)
    held.append(limit)
    return twilio


async def test_worker_processes_share_the_account_limit_in_redis(
    fake: FakeTwilio, processes: list[SharedConcurrencyLimit]
) -> None:
    senders = [in_another_process(processes, concurrency="4") for _ in range(2)]
    await processes[0].forget()
    pushes = [s.push_recipients([recipient(100 * i + n) for n in range(8)]) for i, s in enumerate(senders)]
    await asyncio.gather(*pushes)
    assert fake.max_in_flight == 4  # not 4 per process
    fake.script(error("error_20429.json"))
    await senders[0].push_recipients([recipient(1000)])  # one process meets a 429 ...
    assert await processes[1].limit() == 2
    fake.max_in_flight = 0
    await senders[1].push_recipients([recipient(n) for n in range(2000, 2010)])  # ... the other queues behind it
    assert fake.max_in_flight == 2
    assert fake.router["messages"].call_count == 16 + 2 + 10


def test_settings_are_checked() -> None:
    with pytest.raises(AuthError, match="account_sid"):
        connector(account_sid="AC123")
    with pytest.raises(ConnectorError, match="exactly one"):
        connector(messaging_service_sid="MG" + "a" * 32)


# Status callbacks. Vectors from Twilio's own tests (twilio/twilio-python
# tests/unit/test_request_validator.py, the same example as Twilio's security docs): token 12345.
TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}


def signer() -> TwilioConnector:
    credentials = Credentials(shop_domain="s", access_token=TOKEN, extra={"account_sid": FakeTwilio.ACCOUNT_SID, "from": "+1415"})
    return TwilioConnector(httpx.AsyncClient(verify=TLS), ConnectorConfig(), credentials)


def test_signature_matches_twilios_vectors() -> None:
    assert compute_signature(TOKEN, URL, PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    twilio = signer()
    twilio.verify_signature(URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    twilio.verify_signature(URL.replace(".com", ".com:1234"), PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")  # port removed
    twilio.verify_signature(URL, PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=")  # signed with :443 added
    twilio.verify_signature(URL.replace("https", "http"), PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4=")  # :80 added
    # repeated names: values sorted, as pairs or as a mapping of lists
    pairs = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    twilio.verify_signature(URL, pairs, "IK+Dwps556ElfBT0I3Rgjkr1wJU=")
    twilio.verify_signature(
        URL, {"Sid": "CA123", "SidAccount": "AC123", "Digits": ["5678", "1234"]}, "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    )


def test_signature_of_a_status_callback_computed_independently() -> None:
    params = fixture("status_callback_undelivered.json")
    url = "https://app.example/hooks/twilio/status?shop=7"
    # the documented algorithm, written out: URL + name+value sorted by name, HMAC-SHA1, base64
    payload = url + "".join(name + params[name] for name in sorted(params))
    expected = base64.b64encode(hmac.new(TOKEN.encode(), payload.encode(), hashlib.sha1).digest()).decode()
    signer().verify_signature(url, params, expected)


def test_bad_signatures_are_refused() -> None:
    twilio = signer()
    for url, params, signature in [
        (URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8"),
        (URL, {**PARAMS, "Digits": "9999"}, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (URL.replace("https", "http"), PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (URL, PARAMS, ""),
    ]:
        with pytest.raises(BadSignature):
            twilio.verify_signature(url, params, signature)


def test_parse_status_callback() -> None:
    parsed = TwilioConnector.parse_status_callback(fixture("status_callback_undelivered.json"))
    assert parsed == ("SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "undelivered", "30003")
    assert TwilioConnector.parse_status_callback({"MessageSid": "SM1", "MessageStatus": "delivered"}).error_code is None
    with pytest.raises(ConnectorError):
        TwilioConnector.parse_status_callback({"MessageStatus": "sent"})


def test_fixtures_are_documented_responses() -> None:
    created = fixture("message_created.json")
    assert (
        created
        == load_contract(SPEC)["paths"][MESSAGES]["post"]["responses"]["201"]["content"]["application/json"]["examples"][
            "create"
        ]["value"]
    )
    for name in ("error_21211.json", "error_20429.json", "error_20003.json", "error_20500.json"):
        assert set(json.loads(error(name).content)) == {"code", "message", "more_info", "status"}
