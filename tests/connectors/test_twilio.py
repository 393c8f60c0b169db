"""Twilio: form-encoded message creation checked against Twilio's published spec
(tests/contracts/twilio), what is retried and what is not, concurrency, and the status-callback
signature against Twilio's own test vectors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import pytest
from tenacity import wait_none

from connectors.base import ConnectorConfig, Credentials, MessagingConnector, Recipient
from connectors.errors import AuthError, BadSignature, ConnectorError
from connectors.twilio import TwilioConnector, compute_signature
from tests.connectors.fakes.twilio import FakeTwilio, error, fixture
from tests.contracts import body_errors, load_contract, openapi, validate_request

SPEC = "twilio/twilio_api_v2010.json.gz"
MESSAGES = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
pytestmark = pytest.mark.anyio
TLS = ssl.create_default_context()  # one for every client: building one costs ~0.1 s


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    with fake.router:
        yield fake
    api, spec = openapi(SPEC), load_contract(SPEC)
    for call in fake.router["messages"].calls:  # every message we sent, whatever the test did
        validate_request(api, call.request)
        sent = form(call.request)
        assert body_errors(spec, MESSAGES, "post", sent, "application/x-www-form-urlencoded") == []
        # rules the spec states in prose only
        assert ("From" in sent) != ("MessagingServiceSid" in sent)
        assert sent.get("Body")


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


async def test_5xx_and_read_timeout_are_not_retried(fake: FakeTwilio) -> None:
    fake.script(error("error_20500.json"), httpx.ReadTimeout("read timed out"))
    results = await connector(concurrency="1").push_recipients([recipient(1), recipient(2)])
    assert fake.router["messages"].call_count == 2
    assert [r.ok for r in results] == [False, False]
    assert results[0].error == (
        "20500: Internal Server Error (HTTP 500) (the message may have been sent; not retried, to avoid a duplicate SMS)"
    )
    assert "may have been sent" in (results[1].error or "")


async def test_exhausted_429s_fail_that_recipient(fake: FakeTwilio) -> None:
    fake.script(*[error("error_20429.json")] * 3)
    results = await connector().push_recipients([recipient(1)])
    assert fake.router["messages"].call_count == 3
    assert results[0].error == "20429: Too Many Requests (HTTP 429)"


async def test_invalid_number_fails_alone_and_bad_credentials_raise(fake: FakeTwilio) -> None:
    people = [recipient(1), Recipient(key="+1555", fields={"coupon_code": "X"}), Recipient(key="cust-3")]
    results = await connector().push_recipients(people)
    assert [r.ok for r in results] == [True, False, False]
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
