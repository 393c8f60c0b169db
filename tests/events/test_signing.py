"""Our signatures are Standard Webhooks': the spec's test vector, our own documented vector
(README, "Outbound events"), secrets the stock library reads, and requests it verifies."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import httpx
import pytest
import respx
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from connectors import standardwebhooks
from tests.events.receiver import Receiver

pytestmark = pytest.mark.anyio

# The spec's reference libraries' vector (standard-webhooks/libraries/python/tests: test_sign_function)
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# Our own vector, printed in the README for merchants writing a receiver without a library
OUR_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OUR_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
OUR_TIMESTAMP = 1765065600  # 2025-12-07T00:00:00Z
OUR_BODY = (
    b'{"type":"redemption.created","timestamp":"2025-12-07T00:00:00Z","data":{"redemption_id":1,"campaign_id":2,'
    b'"code":"SAVE10ABCD","order_id":"1001","amount":500,"subtotal":5000,"currency":"GBP","source":"api",'
    b'"channel":null,"flagged_reason":null}}'
)
OUR_SIGNATURE = "v1,A3SadjQO7HzqOxms1McxIjz/CVlrYWnwztk9LNPlFwE="  # also: openssl dgst -sha256 -mac HMAC


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_the_specs_vector() -> None:
    assert standardwebhooks.sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_our_documented_vector_and_the_stock_library_agree() -> None:
    ours = standardwebhooks.sign(OUR_SECRET, OUR_ID, OUR_TIMESTAMP, OUR_BODY)
    stock = Webhook(OUR_SECRET).sign(OUR_ID, datetime.fromtimestamp(OUR_TIMESTAMP, UTC), OUR_BODY)
    assert ours == stock == OUR_SIGNATURE


def test_a_change_to_any_signed_part_breaks_the_signature() -> None:
    base = standardwebhooks.sign(OUR_SECRET, OUR_ID, OUR_TIMESTAMP, OUR_BODY)
    assert standardwebhooks.sign(OUR_SECRET, OUR_ID + "x", OUR_TIMESTAMP, OUR_BODY) != base
    assert standardwebhooks.sign(OUR_SECRET, OUR_ID, OUR_TIMESTAMP + 1, OUR_BODY) != base
    assert standardwebhooks.sign(OUR_SECRET, OUR_ID, OUR_TIMESTAMP, OUR_BODY + b" ") != base
    assert standardwebhooks.sign(standardwebhooks.new_secret(), OUR_ID, OUR_TIMESTAMP, OUR_BODY) != base


def test_new_secrets_are_prefixed_base64_of_32_random_bytes_the_library_reads() -> None:
    secrets_ = {standardwebhooks.new_secret() for _ in range(50)}
    assert len(secrets_) == 50
    for secret in secrets_:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
        Webhook(secret)  # the stock library accepts it


async def test_a_delivery_carries_the_three_headers_and_the_stock_library_verifies_it() -> None:
    secret = standardwebhooks.new_secret()
    receiver = Receiver(secret)
    body = json.dumps({"type": "pool.low", "timestamp": "2026-12-07T00:00:00Z", "data": {"free": 3}}).encode()
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post("https://hooks.example.com/couponry").mock(side_effect=receiver.handle)
        async with httpx.AsyncClient() as http:
            outcome = await standardwebhooks.send(
                http, "https://hooks.example.com/couponry", secret=secret, msg_id="msg_a1", body=body
            )
    sent = route.calls.last.request
    assert outcome.delivered and outcome.status == 200 and outcome.error is None
    assert sent.headers["webhook-id"] == "msg_a1"
    assert abs(int(sent.headers["webhook-timestamp"]) - time.time()) < 5
    assert sent.headers["webhook-signature"].startswith("v1,")
    assert sent.headers["content-type"] == "application/json"
    assert receiver.processed == [json.loads(body)] and receiver.refused == []


async def test_the_receiver_refuses_a_replay_outside_the_tolerance_and_a_forged_body() -> None:
    secret = standardwebhooks.new_secret()
    receiver = Receiver(secret)
    body = b'{"type":"code.voided","timestamp":"2026-12-07T00:00:00Z","data":{"codes":["A"]}}'
    captured = httpx.Request(
        "POST",
        "https://hooks.example.com/x",
        content=body,
        headers=standardwebhooks.headers(secret, "msg_old", int(time.time()) - 6 * 60, body),
    )
    assert receiver.handle(captured).status_code == 400  # captured six minutes ago, replayed now
    assert receiver.refused == ["Message timestamp too old"]
    fresh = standardwebhooks.headers(secret, "msg_new", int(time.time()), body)
    forged = httpx.Request("POST", "https://hooks.example.com/x", content=body.replace(b'"A"', b'"B"'), headers=fresh)
    assert receiver.handle(forged).status_code == 400
    with pytest.raises(WebhookVerificationError):
        Webhook(standardwebhooks.new_secret()).verify(body, fresh)  # another endpoint's secret
    assert receiver.processed == []


@pytest.mark.parametrize(
    ("answer", "delivered", "error"),
    [
        (httpx.Response(204), True, None),
        (
            httpx.Response(301, headers={"location": "https://elsewhere.example/"}),
            False,
            "redirected to https://elsewhere.example/",
        ),
        (httpx.Response(410, text="gone"), False, "410 Gone"),
        (httpx.Response(503, headers={"retry-after": "30"}, text="busy"), False, "HTTP 503"),
    ],
)
async def test_outcomes_by_status(answer: httpx.Response, delivered: bool, error: str | None) -> None:
    with respx.mock(assert_all_called=True) as mock:
        mock.post("https://hooks.example.com/x").mock(return_value=answer)
        async with httpx.AsyncClient() as http:
            outcome = await standardwebhooks.send(
                http, "https://hooks.example.com/x", secret=OUR_SECRET, msg_id="msg_1", body=b"{}"
            )
    assert outcome.delivered is delivered
    assert (outcome.error is None) if error is None else (error in (outcome.error or ""))
    assert outcome.gone is (answer.status_code == 410)
    assert outcome.retry_after == (30.0 if answer.status_code == 503 else None)


async def test_timeouts_and_refused_connections_are_failed_attempts_not_exceptions() -> None:
    with respx.mock() as mock:
        mock.post("https://slow.example.com/").mock(side_effect=httpx.ReadTimeout("slow"))
        mock.post("https://down.example.com/").mock(side_effect=httpx.ConnectError("refused"))
        async with httpx.AsyncClient() as http:
            slow = await standardwebhooks.send(http, "https://slow.example.com/", secret=OUR_SECRET, msg_id="m", body=b"{}")
            down = await standardwebhooks.send(http, "https://down.example.com/", secret=OUR_SECRET, msg_id="m", body=b"{}")
    assert slow.status is None and slow.error == "timed out waiting for the endpoint"
    assert down.status is None and down.error == "could not connect: ConnectError"


async def test_an_endpoint_whose_name_now_resolves_to_a_private_address_is_never_connected_to() -> None:
    """DNS changes after the URL was checked: the app's client checks again when it connects."""
    from connectors.egress import AddressPolicy, shared_client

    async def rebound(host: str, port: int) -> list[str]:
        return ["10.0.0.7"]

    async with shared_client(AddressPolicy(resolve=rebound)) as http:
        outcome = await standardwebhooks.send(http, "https://hooks.example.com/x", secret=OUR_SECRET, msg_id="m", body=b"{}")
    assert not outcome.delivered and outcome.status is None
    assert outcome.error == "refused: hooks.example.com resolves to an address that is not public"
