"""Mailchimp (Marketing API 3.0): each recipient's code in the audience's merge fields.

Auth and base URL: an API key ends with its data centre (`…-us6`) and goes as HTTP Basic (any
user name, the key as password) to https://us6.api.mailchimp.com/3.0. An OAuth access token has
no suffix: it goes as a Bearer token and the data centre comes from the `dc` setting.
ConnectorConfig.base_url overrides the URL (tests, the sandbox).

Settings (Credentials.extra, falling back to ConnectorConfig.extra):
    list_id         required: the audience
    status_if_new   the status of a contact the audience doesn't have yet; default
                    "transactional" (no marketing consent assumed), "subscribed" only with consent
    concurrency     parallel requests, default 5, at most 10 (Mailchimp allows 10 connections a key)
    dc              the data centre (e.g. us6), for OAuth tokens

Merge fields (tags are at most 10 characters; templates write `*|COUPON|*`):
    coupon_code → COUPON (text)         coupon_expires_at → COUPONEXP (text, ISO 8601 as given)
    coupon_display → COUPONDISP (text)  claim_url → CLAIMURL (url)
    coupon_reminder_at → COUPONREM (text: when the code's expiry reminder fell due)
    any other key → its upper-cased letters, digits and "_", cut to 10 characters.
Missing merge fields are created (POST /lists/{id}/merge-fields) before the first push.

push_recipients: PUT /lists/{list_id}/members/{md5 of the lower-cased email} per recipient, with
`status_if_new` and `merge_fields`, up to `concurrency` at a time. Unlike batch subscribe
(POST /lists/{id} with update_existing), PUT never changes an existing member's subscription
status. A recipient without an email, or one Mailchimp answers 400 for (invalid address, the
anti-abuse "signed up to a lot of lists very recently"), fails alone and is not retried.
401/403 and an unknown list (404) raise. 429 and 5xx are retried with backoff (Mailchimp sends
no Retry-After); when the attempts run out the call raises and may be retried whole, since PUT
is idempotent. Errors are problem+json: {type, title, status, detail, instance[, errors]}.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Generator, Iterable, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
from tenacity.wait import wait_base

from connectors.base import ConnectorConfig, Credentials, Recipient, RecipientResult
from connectors.errors import AuthError, Rejected
from connectors.http import Sleep, Wait, identifiers, raise_for_status, retrying, send

_DATA_CENTRE = re.compile(r"^[a-z]+[0-9]+$")


class MailchimpAuth(httpx.Auth):
    """HTTP Basic with the API key as password, or Bearer for an OAuth token."""

    def __init__(self, key: str, *, oauth: bool) -> None:
        basic = base64.b64encode(f"couponry:{key}".encode()).decode()
        self._header = f"Bearer {key}" if oauth else f"Basic {basic}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class MailchimpConnector:
    name: ClassVar[str] = "mailchimp"
    API_VERSION: ClassVar[str] = "3.0"
    BATCH_SIZE: ClassVar[int] = 500
    MAX_CONCURRENCY: ClassVar[int] = 10
    TAG_LENGTH: ClassVar[int] = 10
    MERGE_FIELDS: ClassVar[dict[str, tuple[str, str, str]]] = {  # key → (tag, name, type)
        "coupon_code": ("COUPON", "Coupon code", "text"),
        "coupon_display": ("COUPONDISP", "Coupon code (display)", "text"),
        "coupon_expires_at": ("COUPONEXP", "Coupon expires", "text"),
        "claim_url": ("CLAIMURL", "Coupon link", "url"),
        "coupon_reminder_at": ("COUPONREM", "Coupon expiry reminder", "text"),
    }

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
            raise AuthError("Mailchimp needs an API key or OAuth token")
        settings = {**config.extra, **credentials.extra}
        key = credentials.access_token
        suffix = key.rpartition("-")[2]
        oauth = "-" not in key or not _DATA_CENTRE.match(suffix)
        dc = settings.get("dc", "") if oauth else suffix
        if not config.base_url and not _DATA_CENTRE.match(dc):
            raise AuthError("Mailchimp API key has no data centre suffix (…-us6), and no dc is set")
        self._base = (config.base_url or f"https://{dc}.api.mailchimp.com/{self.API_VERSION}").rstrip("/")
        self._list_id = quote(settings.get("list_id", ""), safe="")
        if not self._list_id:
            raise Rejected("Mailchimp needs the audience's list_id")
        self._status_if_new = settings.get("status_if_new") or "transactional"
        self._concurrency = max(1, min(int(settings.get("concurrency") or 5), self.MAX_CONCURRENCY))
        self._client = client
        self._auth = MailchimpAuth(key, oauth=oauth)
        self._attempts = attempts
        self._wait = retry_wait
        self._sleep = sleep
        self._tags: set[str] | None = None  # merge tags the audience has, once fetched

    async def push_recipients(self, recipients: Sequence[Recipient]) -> list[RecipientResult]:
        await self.ensure_merge_fields(key for r in recipients for key in r.fields)
        gate = asyncio.Semaphore(self._concurrency)

        async def one(recipient: Recipient) -> RecipientResult:
            async with gate:
                return await self._upsert(recipient)

        outcomes = await asyncio.gather(*(one(r) for r in recipients), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, AuthError)), errors[0])
        return [o for o in outcomes if isinstance(o, RecipientResult)]

    async def ensure_merge_fields(self, keys: Iterable[str]) -> dict[str, str]:
        """Create the merge fields these keys map to unless the audience has them; key → tag."""
        wanted = {key: self.merge_field(key) for key in keys}
        tags = await self._known_tags()
        for tag, name, kind in dict.fromkeys(wanted.values()):
            if tag in tags:
                continue
            body = {"tag": tag, "name": name, "type": kind, "required": False, "public": False}
            try:
                await self._request("POST", f"/lists/{self._list_id}/merge-fields", json=body)
            except Rejected:
                self._tags = None  # created meanwhile? look again, else it was a real refusal
                if tag not in await self._known_tags():
                    raise
            tags.add(tag)
        return {key: field[0] for key, field in wanted.items()}

    @classmethod
    def merge_field(cls, key: str) -> tuple[str, str, str]:
        if key in cls.MERGE_FIELDS:
            return cls.MERGE_FIELDS[key]
        tag = re.sub(r"[^A-Z0-9_]", "", key.upper())[: cls.TAG_LENGTH]
        return tag, key.replace("_", " ").capitalize(), "text"

    async def _known_tags(self) -> set[str]:
        if self._tags is None:
            response = await self._request("GET", f"/lists/{self._list_id}/merge-fields", params={"count": 1000})
            self._tags = {field["tag"] for field in response.json().get("merge_fields", [])}
        return self._tags

    async def _upsert(self, recipient: Recipient) -> RecipientResult:
        email = identifiers(recipient)[0]
        if not email:
            return RecipientResult(recipient.key, ok=False, error="no email address")
        subscriber_hash = hashlib.md5(email.lower().encode()).hexdigest()  # Mailchimp's id, not a security hash
        body = {
            "email_address": email,
            "status_if_new": self._status_if_new,
            "merge_fields": {self.merge_field(key)[0]: value for key, value in recipient.fields.items()},
        }
        try:
            response = await self._request("PUT", f"/lists/{self._list_id}/members/{subscriber_hash}", json=body)
        except Rejected as exc:
            return RecipientResult(recipient.key, ok=False, error=exc.message)
        return RecipientResult(recipient.key, ok=True, provider_id=str(response.json().get("id") or subscriber_hash))

    async def check_connection(self) -> str:
        """A cheap authenticated read (GET /ping): Mailchimp's health line, or a ConnectorError."""
        response = await self._request("GET", "/ping")
        return str(response.json().get("health_status") or "Mailchimp answered")

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self._base + path

        async def attempt() -> httpx.Response:
            response = await send(self._client, method, url, auth=self._auth, **kwargs)
            return raise_for_status(response, platform=self.name, message=_message)

        return await retrying(attempt, attempts=self._attempts, wait=self._wait, sleep=self._sleep)


def _message(response: httpx.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if not isinstance(problem, dict):
        return str(problem)[:300]
    text = str(problem.get("detail") or problem.get("title") or response.reason_phrase)
    fields = [f"{e.get('field')}: {e.get('message')}" for e in problem.get("errors") or () if isinstance(e, dict)]
    return f"{text} ({'; '.join(fields)})" if fields else text
