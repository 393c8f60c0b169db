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
    concurrency            requests in flight at once for the account, shared by every sender of
                           it in the process and lowered on a 429 (default 5; connectors/concurrency.py)
    redis_url              optional: hold that limit in Redis, shared by every worker process

Merge fields: the body template reads coupon_code, coupon_display (falls back to coupon_code),
coupon_expires_at and claim_url; the recipient's phone (or a key starting with "+") is `To`.

push_recipients: one POST /2010-04-01/Accounts/{AccountSid}/Messages.json (form-encoded) per
recipient; provider_id = the message SID. Errors are `{"code", "message", "more_info", "status"}`.
Each recipient's outcome is one of:
  sent       201: ok, with the SID
  failed     a definite refusal (4xx, e.g. 21211 invalid number, 21611 sender queue full), at once
  unsent     (pending) nothing was created: a 429 (error 20429: too many concurrent requests, never
             processed) or a request that never left, still so after `attempts` tries
  unknown    (pending) a 5xx, a timeout or a connection broken after the request left: Twilio may
             have created the message. Never resent blindly: the caller tries again later with
             Recipient.attempted_at, and this connector first lists Messages.json filtered by To and
             From, newest first, and matches the body's code and a creation time after that
             attempt. Found: sent with that SID; provably absent: sent now; can't tell: unknown.
401/403 raise. A 429 lowers the account's shared concurrency limit (connectors/concurrency.py), so
every sender of the account queues for a slot instead of each request pausing alone.

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
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx
from tenacity import RetryCallState, wait_exponential_jitter
from tenacity.wait import wait_base

from connectors.base import ConnectorConfig, Credentials, Recipient, RecipientResult
from connectors.concurrency import account_limit
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
    # Looking up an earlier attempt's message: newest pages of the messages to one number from our
    # sender; creation times are Twilio's clock, to the second, so ours is trusted within a minute.
    LOOKUP_PAGE_SIZE: ClassVar[int] = 50
    LOOKUP_PAGES: ClassVar[int] = 3
    CLOCK_SKEW: ClassVar[timedelta] = timedelta(seconds=60)

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
        self._base = (config.base_url or self.API_BASE).rstrip("/")
        self._url = f"{self._base}/{self.API_VERSION}/Accounts/{self._account_sid}/Messages.json"
        self._status_callback = settings.get("status_callback")
        self._validity_period = settings.get("validity_period")
        self._body = settings.get("body")
        # one limit for every sender of this account: in the process, or in Redis for all of them
        self._limit = account_limit(
            f"{self._base} {self._account_sid}", max(1, int(settings.get("concurrency") or 5)), settings.get("redis_url")
        )
        self._client = client
        self._attempts = attempts
        self._wait: wait_base | Wait = retry_wait or wait_exponential_jitter(initial=1, max=30)
        self._sleep = sleep

    async def push_recipients(self, recipients: Sequence[Recipient]) -> list[RecipientResult]:
        outcomes = await asyncio.gather(*(self._deliver(r) for r in recipients), return_exceptions=True)
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

    async def _deliver(self, recipient: Recipient) -> RecipientResult:
        phone = identifiers(recipient)[1]
        if not phone:
            return RecipientResult(recipient.key, ok=False, error="no phone number")
        try:
            body = self.message_body(recipient)
        except (KeyError, IndexError, ValueError) as exc:
            return RecipientResult(recipient.key, ok=False, error=f"message template: {exc!r}")
        if recipient.attempted_at is not None:
            # An earlier attempt may have created the message: send again only if it provably did not.
            try:
                found = await self._find_sent(recipient, phone, recipient.attempted_at)
            except AuthError:
                raise
            except ConnectorError as exc:
                retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
                return _unknown(recipient, f"could not look for the earlier message: {exc}", retry_after)
            if found is not None:
                return found
        form = {"To": phone, **self._sender, "Body": body}
        if self._status_callback:
            form["StatusCallback"] = self._status_callback
        if self._validity_period:
            form["ValidityPeriod"] = str(self._validity_period)
        return await self._create(recipient, form)

    async def _create(self, recipient: Recipient, form: dict[str, str]) -> RecipientResult:
        async def attempt() -> httpx.Response:
            return await self._request("POST", self._url, data=form)

        try:
            # Only what Twilio never processed is retried here: a 429 (queued again behind the
            # account's lowered limit) or a request that never left.
            response = await retrying(
                attempt, attempts=self._attempts, wait=self._pause, retry_on=(RateLimited, NotSent), sleep=self._sleep
            )
        except AuthError:
            raise
        except RateLimited as exc:
            return RecipientResult(recipient.key, ok=False, error=str(exc), pending="unsent", retry_after=exc.retry_after)
        except NotSent as exc:
            return RecipientResult(recipient.key, ok=False, error=str(exc), pending="unsent")
        except Rejected as exc:
            return RecipientResult(recipient.key, ok=False, error=str(exc))
        except UpstreamError as exc:
            # A 5xx, a timeout or a broken connection after the request left: Twilio may have
            # created the message. The next attempt looks for it before sending again.
            return _unknown(recipient, f"{exc} (the message may have been sent; looked up before any resend)")
        return RecipientResult(recipient.key, ok=True, provider_id=str(response.json().get("sid")))

    async def _find_sent(self, recipient: Recipient, phone: str, since: datetime) -> RecipientResult | None:
        """The message an earlier attempt created for this recipient, as a final result; None when
        it provably does not exist; raises (UpstreamError) when the lookup cannot tell.

        Lists the messages to `phone` from our sender, newest first (DateSent can't narrow it:
        it is a date, and a queued message has none), and matches the body's whole code and a
        creation time after the first attempt (less CLOCK_SKEW). A page with nothing that recent,
        or the last page, ends the search; LOOKUP_PAGES pages of LOOKUP_PAGE_SIZE bound it."""
        codes = [
            re.compile(rf"(?<![0-9A-Za-z]){re.escape(code)}(?![0-9A-Za-z])")  # the whole code, not a part of a longer one
            for code in {recipient.fields.get("coupon_code"), recipient.fields.get("coupon_display")}
            if code
        ]
        if not codes:
            raise UpstreamError("no code to recognise the earlier message by")
        cutoff = since - self.CLOCK_SKEW
        params: dict[str, str] | None = {"To": phone, "PageSize": str(self.LOOKUP_PAGE_SIZE)}
        if "From" in self._sender:
            params = {**(params or {}), "From": self._sender["From"]}
        url, query = self._url, params
        for _ in range(self.LOOKUP_PAGES):
            # A 429 queues again behind the account's limit; any other failure leaves the outcome
            # unknown until the job's next run (the outbox's backoff).
            page = await retrying(
                partial(self._request, "GET", url, params=query),
                attempts=self._attempts,
                wait=self._pause,
                retry_on=(RateLimited,),
                sleep=self._sleep,
            )
            document: Any = page.json()
            recent = False
            for message in document.get("messages") or []:
                created = _rfc2822(message.get("date_created"))
                if created is not None and created < cutoff:
                    continue  # older than our first attempt: not ours to find
                recent = True
                if self._ours(message, phone) and any(code.search(message.get("body") or "") for code in codes):
                    return _found(recipient, message)
            next_page = document.get("next_page_uri")
            if not next_page or not recent:  # newest first: a page with nothing recent ends the search
                return None
            url, query = self._base + next_page, None  # the next page's URI carries the filters
        raise UpstreamError(f"the earlier message was not found in the {self.LOOKUP_PAGES} newest pages; not resent")

    def _ours(self, message: Mapping[str, Any], phone: str) -> bool:
        if message.get("to") != phone or not str(message.get("direction") or "").startswith("outbound"):
            return False
        if "MessagingServiceSid" in self._sender:
            return bool(message.get("messaging_service_sid") == self._sender["MessagingServiceSid"])
        return bool(message.get("from") == self._sender["From"])

    async def check_connection(self) -> str:
        """A cheap authenticated read (GET /Accounts/{sid}.json): the account's name and status."""
        response = await self._request("GET", f"{self._base}/{self.API_VERSION}/Accounts/{self._account_sid}.json")
        body = response.json()
        return f"{body.get('friendly_name') or self._account_sid} ({body.get('status') or 'unknown status'})"

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request inside the account's concurrency limit; a 429 lowers it for every sender."""
        async with self._limit.slot(self._sleep) as started_round:
            response = await send(self._client, method, url, auth=self._auth, **kwargs)
            try:
                raise_for_status(response, platform=self.name, message=_message)
            except RateLimited as exc:
                await self._limit.throttled(started_round, exc.retry_after)
                raise
            await self._limit.answered()
            return response

    def _pause(self, state: RetryCallState) -> float:
        """Between retries: none after a 429, whose retry queues behind the lowered account limit
        (which holds everyone when Twilio said how long); backoff for a connection never made."""
        outcome = state.outcome
        if outcome is not None and isinstance(outcome.exception(), RateLimited):
            return 0.0
        return float(self._wait(state))

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


def _unknown(recipient: Recipient, error: str, retry_after: float | None = None) -> RecipientResult:
    return RecipientResult(recipient.key, ok=False, error=error, pending="unknown", retry_after=retry_after)


def _found(recipient: Recipient, message: Mapping[str, Any]) -> RecipientResult:
    """The earlier attempt's message, found: sent with its SID (or failed, if Twilio failed it)."""
    sid = str(message.get("sid"))
    if message.get("status") in ("failed", "undelivered", "canceled"):
        error = f"Twilio {message.get('status')} it (error {message.get('error_code')})"
        return RecipientResult(recipient.key, ok=False, provider_id=sid, error=error)
    return RecipientResult(recipient.key, ok=True, provider_id=sid)


def _rfc2822(value: Any) -> datetime | None:
    """Twilio's dates: "Fri, 24 May 2019 17:44:46 +0000"."""
    if not isinstance(value, str):
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # "-0000": GMT, read as naive


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
