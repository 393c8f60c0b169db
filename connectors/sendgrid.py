"""SendGrid Marketing Campaigns: each recipient's code in contact custom fields.

Auth: `Authorization: Bearer <API key>` (Credentials.access_token). Base URL
https://api.sendgrid.com, or ConnectorConfig.base_url.

Settings (Credentials.extra, falling back to ConnectorConfig.extra):
    list_id         optional: also add the contacts to this list (a UUID)
    on_behalf_of    optional: act for a subuser (the `on-behalf-of` header)

Merge fields become Text custom fields of the same name (templates: `{{coupon_code}}`):
    coupon_code, coupon_display, coupon_expires_at, claim_url → custom field of that name
    other keys: their letters, digits and "_" (names may not start with a digit).
Custom fields must exist before an upsert refers to them, and the upsert names them by id
(e.g. "e1_T"): GET /v3/marketing/field_definitions once, POST the missing ones. Names are
unique ignoring case; an account holds at most 500.
Contacts are matched on email, phone_number_id and external_id (see connectors.http.identifiers);
SendGrid wants every identifier a contact already has, and lower-cases emails.

push_recipients: PUT /v3/marketing/contacts with at most 30,000 contacts and 6 MB per request
(split as needed). It is asynchronous: 202 with a job_id, so the answer is "accepted" with
provider_id = the job id; job_results() reads GET /v3/marketing/contacts/imports/{id}
(pending, completed, errored, failed). The job reports counts and an errors file, not which
contact failed: an errored or failed job fails every recipient it carried, and re-pushing them is
harmless (an upsert of the same values).
Rate limits are not published per endpoint; every answer carries X-RateLimit-Limit/-Remaining/
-Reset (Unix time): a 429 waits until the reset and is retried.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
from tenacity.wait import wait_base

from connectors.base import ConnectorConfig, Credentials, Recipient, RecipientResult
from connectors.errors import AuthError
from connectors.http import Sleep, Wait, identifiers, raise_for_status, retrying, send, split_encoded


class SendGridAuth(httpx.Auth):
    def __init__(self, api_key: str, on_behalf_of: str | None = None) -> None:
        self._header = f"Bearer {api_key}"
        self._on_behalf_of = on_behalf_of

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        if self._on_behalf_of:
            request.headers["on-behalf-of"] = self._on_behalf_of
        yield request


class SendGridConnector:
    name: ClassVar[str] = "sendgrid"
    API_VERSION: ClassVar[str] = "v3"
    API_BASE: ClassVar[str] = "https://api.sendgrid.com"
    BATCH_SIZE: ClassVar[int] = 30_000  # contacts per upsert
    MAX_REQUEST_BYTES: ClassVar[int] = 6_000_000  # "6MB", read as decimal megabytes to stay under either reading
    FIELD_TYPE: ClassVar[str] = "Text"

    def __init__(
        self,
        client: httpx.AsyncClient,
        config: ConnectorConfig,
        credentials: Credentials | None = None,
        *,
        attempts: int = 5,
        retry_wait: wait_base | Wait | None = None,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if credentials is None or not credentials.access_token:
            raise AuthError("SendGrid needs an API key")
        settings = {**config.extra, **credentials.extra}
        self._base = (config.base_url or self.API_BASE).rstrip("/")
        self._list_id = settings.get("list_id") or None
        self._client = client
        self._auth = SendGridAuth(credentials.access_token, settings.get("on_behalf_of") or None)
        self._attempts = attempts
        self._wait = retry_wait
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._field_ids: dict[str, str] | None = None  # lower-cased name → id, once fetched

    async def push_recipients(self, recipients: Sequence[Recipient]) -> list[RecipientResult]:
        ids = await self.ensure_custom_fields(key for r in recipients for key in r.fields)
        results: list[RecipientResult | None] = [None] * len(recipients)
        encoded: list[tuple[int, bytes]] = []
        for index, recipient in enumerate(recipients):
            if index % 200 == 199:  # encoding is CPU work: let other calls read their responses meanwhile
                await asyncio.sleep(0)
            contact = self._contact(recipient, ids)
            if contact is None:
                results[index] = RecipientResult(recipient.key, ok=False, error="no email, phone number id or external id")
            else:
                encoded.append((index, json.dumps(contact, separators=(",", ":"), ensure_ascii=False).encode()))
        for chunk in self._split(encoded):
            job_id = await self._upsert(chunk)
            for index, _ in chunk:
                results[index] = RecipientResult(recipients[index].key, ok=True, provider_id=job_id)
        return [result for result in results if result is not None]

    async def ensure_custom_fields(self, keys: Iterable[str]) -> dict[str, str]:
        """Create the Text custom fields these keys map to unless they exist; key → field id."""
        known = await self._known_fields()
        ids: dict[str, str] = {}
        for key in dict.fromkeys(keys):
            name = self.field_name(key)
            if name.lower() not in known:
                body = {"name": name, "field_type": self.FIELD_TYPE}
                created = await self._request("POST", "/v3/marketing/field_definitions", json=body)
                known[name.lower()] = str(created.json()["id"])
            ids[key] = known[name.lower()]
        return ids

    @staticmethod
    def field_name(key: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_]", "_", key)[:100]
        return f"f_{name}" if name[:1].isdigit() or not name else name

    async def job_results(self, job_id: str, recipients: Sequence[Recipient]) -> list[RecipientResult] | None:
        """Per-recipient results of an upsert job (None while it is pending)."""
        job = (await self._request("GET", f"/v3/marketing/contacts/imports/{quote(job_id, safe='')}")).json()
        status = job.get("status")
        if status == "pending":
            return None
        if status == "completed":
            return [RecipientResult(r.key, ok=True, provider_id=job_id) for r in recipients]
        counts = job.get("results") or {}
        failed, requested = counts.get("errored_count", "?"), counts.get("requested_count", "?")
        error = f"SendGrid import {status}: {failed} of {requested} contacts failed"
        if counts.get("errors_url"):
            error += f" (details: {counts['errors_url']})"
        return [RecipientResult(r.key, ok=False, provider_id=job_id, error=error) for r in recipients]

    def _contact(self, recipient: Recipient, ids: dict[str, str]) -> dict[str, Any] | None:
        email, phone, external_id = identifiers(recipient)
        contact: dict[str, Any] = {}
        if email:
            contact["email"] = email
        if phone:
            contact["phone_number_id"] = phone
        if external_id:
            contact["external_id"] = external_id
        if not contact:
            return None
        if recipient.fields:
            contact["custom_fields"] = {ids[key]: value for key, value in recipient.fields.items()}
        return contact

    def _envelope(self, contacts: bytes) -> bytes:
        lists = b'"list_ids":' + json.dumps([self._list_id]).encode() + b"," if self._list_id else b""
        return b"{" + lists + b'"contacts":[' + contacts + b"]}"

    def _split(self, encoded: list[tuple[int, bytes]]) -> Iterator[list[tuple[int, bytes]]]:
        return split_encoded(
            encoded, max_items=self.BATCH_SIZE, max_bytes=self.MAX_REQUEST_BYTES, overhead=len(self._envelope(b""))
        )

    async def _upsert(self, chunk: list[tuple[int, bytes]]) -> str:
        body = self._envelope(b",".join(blob for _, blob in chunk))
        headers = {"content-type": "application/json"}
        response = await self._request("PUT", "/v3/marketing/contacts", content=body, headers=headers)
        return str(response.json()["job_id"])

    async def _known_fields(self) -> dict[str, str]:
        if self._field_ids is None:
            definitions = (await self._request("GET", "/v3/marketing/field_definitions")).json()
            self._field_ids = {str(f["name"]).lower(): str(f["id"]) for f in definitions.get("custom_fields") or ()}
        return self._field_ids

    async def check_connection(self) -> str:
        """A cheap authenticated read (GET /v3/marketing/field_definitions), or a ConnectorError."""
        response = await self._request("GET", f"/{self.API_VERSION}/marketing/field_definitions")
        custom = response.json().get("custom_fields") or []
        return f"SendGrid answered ({len(custom)} custom fields)"

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self._base + path

        async def attempt() -> httpx.Response:
            response = await send(self._client, method, url, auth=self._auth, **kwargs)
            return raise_for_status(response, platform=self.name, message=_message, retry_after=self._retry_after)

        return await retrying(attempt, attempts=self._attempts, wait=self._wait, sleep=self._sleep)

    def _retry_after(self, response: httpx.Response) -> float | None:
        reset = response.headers.get("x-ratelimit-reset")
        try:
            return max(0.0, float(reset) - self._wall_clock()) if reset else None
        except ValueError:
            return None


def _message(response: httpx.Response) -> str:
    """SendGrid errors: {"errors": [{"message", "field"?, "error_id"?}]}."""
    try:
        errors = response.json().get("errors") or []
        parts = [
            f"{e['field']}: {e['message']}" if e.get("field") else str(e.get("message")) for e in errors if isinstance(e, dict)
        ]
    except (ValueError, AttributeError):
        return response.text[:300] or response.reason_phrase
    return "; ".join(parts)[:300] or response.reason_phrase
