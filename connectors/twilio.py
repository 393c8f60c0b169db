"""Twilio (SMS): each recipient's code in a text message, and the status callbacks that follow.

Auth: HTTP Basic `AccountSid:AuthToken`, or `ApiKeySid:ApiKeySecret` when an API key is set;
status callbacks are signed with the Auth Token either way. Base URL https://api.twilio.com, or
ConnectorConfig.base_url.

Credentials: access_token = the Auth Token. Settings (Credentials.extra, falling back to
ConnectorConfig.extra):
    account_sid            required (AC + 32 hex)
    api_key_sid, api_key_secret   optional, used for Basic auth instead of SID/token
    from                   sender (E.164, short code or alphanumeric id) ...
    messaging_service_sid  ... or a Messaging Service (MG...): one of the two is required
    status_callback        optional URL for delivery status callbacks (StatusCallback)
    validity_period        optional seconds a message may wait in Twilio's queue (ValidityPeriod)
    body                   optional template, str.format fields from Recipient.fields; default
                           "Your code: {coupon_display}", plus " {claim_url}" when there is one
    concurrency            messages sent at once (default 5)

Merge fields: the body template reads coupon_code, coupon_display (falls back to coupon_code),
coupon_expires_at and claim_url; the recipient's phone (or a key starting with "+") is `To`.

push_recipients: one POST /2010-04-01/Accounts/{AccountSid}/Messages.json (form-encoded) per
recipient; provider_id = the message SID. Errors are `{"code", "message", "more_info", "status"}`.
A 429 (error 20429, too many concurrent requests) was never processed and is retried, as is a
request that never left; a 5xx or a timeout may have sent the message, so it is *not* retried
automatically (a second SMS with the same code is worse than a reported failure) and that
recipient fails with a note saying so. A 4xx fails that recipient alone (e.g. 21211 invalid
number, 21611 sender queue full); 401/403 raise.

verify_signature / parse_status_callback handle the status callbacks (MessageSid,
MessageStatus, ErrorCode): X-Twilio-Signature is base64(HMAC-SHA1(auth token, URL + each POST
parameter name and value, sorted by name)), compared in constant time, with and without the
default port in the URL as twilio-python does. Behind a TLS-terminating proxy pass the public
https URL Twilio called.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx
from tenacity.wait import wait_base

from connectors.base import ConnectorConfig, Credentials, Recipient, RecipientResult
from connectors.errors import AuthError, BadSignature, ConnectorError, RateLimited, Rejected, UpstreamError
from connectors.http import NotSent, Sleep, Wait, identifiers, raise_for_status, retrying, send

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")


class StatusCallback(NamedTuple):
    message_sid: str
    message_status: str  # queued, sending, sent, delivered, undelivered, failed, ...
    error_code: str | None


class TwilioConnector:
    name: ClassVar[str] = "twilio"
    API_VERSION: ClassVar[str] = "2010-04-01"
    API_BASE: ClassVar[str] = "https://api.twilio.com"
    BATCH_SIZE: ClassVar[int] = 20  # one message per request; a call sends up to `concurrency` at once
    SIGNATURE_HEADER: ClassVar[str] = "X-Twilio-Signature"
    DEFAULT_BODY: ClassVar[str] = "Your code: {coupon_display}"

    def __init__(
        self,
        client: httpx.AsyncClient,
        config: ConnectorConfig,
        credentials: Credentials | None = None,
        *,
        attempts: int = 5,
        retry_wait: wait_base | Wait | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if credentials is None or not credentials.access_token:
            raise AuthError("Twilio needs the account's Auth Token")
        settings = {**config.extra, **credentials.extra}
        self._account_sid = settings.get("account_sid", "")
        if not _ACCOUNT_SID.match(self._account_sid):
            raise AuthError("Twilio needs an account_sid (AC followed by 32 hex digits)")
        self._sender = {
            k: settings[s] for k, s in (("From", "from"), ("MessagingServiceSid", "messaging_service_sid")) if settings.get(s)
        }
        if len(self._sender) != 1:
            raise Rejected("Twilio needs exactly one of `from` or `messaging_service_sid`")
        self._auth_token = credentials.access_token
        key_sid, key_secret = settings.get("api_key_sid"), settings.get("api_key_secret")
        self._auth = (
            httpx.BasicAuth(key_sid, key_secret)
            if key_sid and key_secret
            else httpx.BasicAuth(self._account_sid, self._auth_token)
        )
        self._url = (
            f"{(config.base_url or self.API_BASE).rstrip('/')}/{self.API_VERSION}/Accounts/{self._account_sid}/Messages.json"
        )
        self._status_callback = settings.get("status_callback")
        self._validity_period = settings.get("validity_period")
        self._body = settings.get("body")
        self._concurrency = max(1, int(settings.get("concurrency") or 5))
        self._client = client
        self._attempts = attempts
        self._wait = retry_wait
        self._sleep = sleep

    async def push_recipients(self, recipients: Sequence[Recipient]) -> list[RecipientResult]:
        gate = asyncio.Semaphore(self._concurrency)

        async def one(recipient: Recipient) -> RecipientResult:
            async with gate:
                return await self._send(recipient)

        outcomes = await asyncio.gather(*(one(r) for r in recipients), return_exceptions=True)
        auth = next((o for o in outcomes if isinstance(o, AuthError)), None)
        if auth is not None:
            raise auth
        unexpected = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if unexpected is not None:
            raise unexpected
        return [o for o in outcomes if isinstance(o, RecipientResult)]

    def message_body(self, recipient: Recipient) -> str:
        fields = dict(recipient.fields)
        fields.setdefault("coupon_display", fields.get("coupon_code", ""))
        template = self._body or (self.DEFAULT_BODY + (" {claim_url}" if fields.get("claim_url") else ""))
        return _render(template, fields)

    async def _send(self, recipient: Recipient) -> RecipientResult:
        phone = identifiers(recipient)[1]
        if not phone:
            return RecipientResult(recipient.key, ok=False, error="no phone number")
        try:
            body = self.message_body(recipient)
        except (KeyError, IndexError, ValueError) as exc:
            return RecipientResult(recipient.key, ok=False, error=f"message template: {exc!r}")
        form = {"To": phone, **self._sender, "Body": body}
        if self._status_callback:
            form["StatusCallback"] = self._status_callback
        if self._validity_period:
            form["ValidityPeriod"] = str(self._validity_period)

        async def attempt() -> httpx.Response:
            response = await send(self._client, "POST", self._url, data=form, auth=self._auth)
            return raise_for_status(response, message=_message)

        try:
            # Only what Twilio never processed is retried: a 429 (20429) or a request that never left.
            response = await retrying(
                attempt, attempts=self._attempts, wait=self._wait, retry_on=(RateLimited, NotSent), sleep=self._sleep
            )
        except AuthError:
            raise
        except (NotSent, RateLimited, Rejected) as exc:
            return RecipientResult(recipient.key, ok=False, error=str(exc))
        except UpstreamError as exc:
            note = "the message may have been sent; not retried, to avoid a duplicate SMS"
            return RecipientResult(recipient.key, ok=False, error=f"{exc} ({note})")
        return RecipientResult(recipient.key, ok=True, provider_id=str(response.json().get("sid")))

    # --- status callbacks ----------------------------------------------------------------------

    def verify_signature(
        self, url: str, params: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]], signature: str
    ) -> None:
        """Raise BadSignature unless `signature` (the X-Twilio-Signature header) signs this callback.

        `url` is the full URL Twilio called (scheme, host, path and query); `params` the POST
        form fields, as a mapping (a value may be a list of repeated values) or as pairs."""
        pairs = _pairs(params)
        candidates = {_signature(self._auth_token, variant, pairs) for variant in _port_variants(url)}
        if not signature or not any(hmac.compare_digest(candidate, signature) for candidate in candidates):
            raise BadSignature("status callback signature does not match")

    @staticmethod
    def parse_status_callback(params: Mapping[str, str]) -> StatusCallback:
        sid, status = params.get("MessageSid") or params.get("SmsSid"), params.get("MessageStatus") or params.get("SmsStatus")
        if not sid or not status:
            raise ConnectorError("status callback without MessageSid or MessageStatus")
        return StatusCallback(sid, status, params.get("ErrorCode") or None)


def _render(template: str, fields: Mapping[str, str]) -> str:
    """str.format with plain field names only: a merchant's template can't reach attributes."""
    out = []
    for literal, field, spec, _ in string.Formatter().parse(template):
        out.append(literal)
        if field is not None:
            if not field.isidentifier():
                raise ValueError(f"unsupported template field {field!r}")
            out.append(format(fields[field], spec or ""))
    return "".join(out)


def compute_signature(auth_token: str, url: str, params: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature for a POST to `url` with these form fields."""
    return _signature(auth_token, url, _pairs(params))


def _pairs(params: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(params, Mapping):
        items: list[tuple[str, str]] = []
        for key, value in params.items():
            items += [(key, value)] if isinstance(value, str) else [(key, v) for v in value]
        return items
    return list(params)


def _signature(auth_token: str, url: str, pairs: list[tuple[str, str]]) -> str:
    # As twilio-python's RequestValidator: names sorted; a repeated name's distinct values sorted.
    values: dict[str, set[str]] = {}
    for key, value in pairs:
        values.setdefault(key, set()).add(value)
    payload = url + "".join(key + value for key in sorted(values) for value in sorted(values[key]))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as given, without its port, and with the scheme's default port added."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    without = urlunsplit(parts._replace(netloc=prefix + host))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with_port = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{port}"))
    return list(dict.fromkeys([url, without, with_port]))


def _message(response: httpx.Response) -> str:
    """Twilio errors: {"code": 21211, "message": "...", "more_info": "https://...", "status": 400}."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict) and body.get("message"):
        return f"{body['code']}: {body['message']}" if body.get("code") else str(body["message"])
    return str(body)[:300]
