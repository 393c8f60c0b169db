"""Sending events to a merchant's endpoint, signed per Standard Webhooks (standardwebhooks.com).

    new_secret()                         `whsec_` + base64 of 32 random bytes (the spec asks 24..64)
    sign(secret, msg_id, timestamp, body) `v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`,
                                          keyed with the base64-decoded part after `whsec_`
    send(http, url, ...)                 one POST with `webhook-id`, `webhook-timestamp` and
                                          `webhook-signature`; the outcome, never an exception

Every attempt is signed afresh with its own timestamp (the spec: "the timestamp of the
attempt"); the id stays the message's, so a receiver that answered but whose answer we lost
sees the same `webhook-id` again and ignores it. A receiver refuses a timestamp more than five
minutes from its clock (the stock libraries' tolerance): a captured request cannot be replayed
later. Success is a 2xx; a redirect is a failure (the spec: update the URL instead); 410 Gone
means "stop sending"; 429 and 5xx may carry Retry-After. The host was named by a merchant: the
request goes through the public-addresses-only guard (connectors.egress, THIRD_PARTY).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import httpx

from connectors.base import retry_after_seconds
from connectors.egress import THIRD_PARTY, ForbiddenAddress

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
TIMEOUT = httpx.Timeout(15.0, connect=5.0)  # the spec recommends 15 to 30 s
SNIPPET = 300  # characters of the receiver's answer kept with the attempt
USER_AGENT = "Couponry-Webhooks/1"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    status: int | None  # the receiver's HTTP status; None when no answer came
    latency_ms: int
    error: str | None = None  # why it failed, for the merchant; None on success
    snippet: str = ""
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        """410: the receiver asks us to stop sending (the endpoint is disabled)."""
        return self.status == 410


async def send(
    http: httpx.AsyncClient, url: str, *, secret: str, msg_id: str, body: bytes, timestamp: int | None = None
) -> Outcome:
    timestamp = int(time.time()) if timestamp is None else timestamp
    started = time.perf_counter()

    def took() -> int:
        return int((time.perf_counter() - started) * 1000)

    try:
        response = await http.post(
            url,
            content=body,
            headers=headers(secret, msg_id, timestamp, body),
            timeout=TIMEOUT,
            follow_redirects=False,
            extensions={THIRD_PARTY: True},
        )
    except ForbiddenAddress as exc:
        return Outcome(None, took(), f"refused: {exc.message}")
    except httpx.TimeoutException:
        return Outcome(None, took(), "timed out waiting for the endpoint")
    except httpx.HTTPError as exc:
        return Outcome(None, took(), f"could not connect: {type(exc).__name__}")
    snippet = response.text[:SNIPPET]
    status = response.status_code
    if 200 <= status < 300:
        return Outcome(status, took(), None, snippet)
    if 300 <= status < 400:
        error = f"redirected to {response.headers.get('location', 'elsewhere')}: update the endpoint's URL"
    elif status == 410:
        error = "the endpoint answered 410 Gone: it asks us to stop sending"
    else:
        error = f"the endpoint answered HTTP {status}"
    return Outcome(status, took(), error, snippet, retry_after_seconds(response.headers))
