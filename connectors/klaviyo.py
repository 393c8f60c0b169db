"""Klaviyo: each recipient's code as profile properties, and code pools for the Coupons API.

Auth and version: `Authorization: Klaviyo-API-Key <private key>` (Credentials.access_token) and a
`revision` header pinned to REVISION, the `info.version` of the published spec our tests validate
against (tests/contracts/klaviyo). Base URL https://a.klaviyo.com, or ConnectorConfig.base_url.

Settings (Credentials.extra, falling back to ConnectorConfig.extra):
    list_id     optional; every imported profile is also added to this list

Merge fields become profile properties of the same name (templates: `{{ person.coupon_code }}`):
    coupon_code, coupon_display, coupon_expires_at, claim_url → properties.<same name>
    (other keys pass through unchanged). Profiles are matched on email, phone_number (E.164) and
    external_id; see connectors.http.identifiers for a recipient that has none of them set.

push_recipients: POST /api/profile-bulk-import-jobs, at most 10,000 profiles and 5 MB per job and
100 KB per profile (a recipient over that fails alone). Import is asynchronous: the answer is
"accepted" with provider_id = the job id; job_results() later turns the finished job and its
import errors into per-recipient results. The bulk API ignores nulls, so it never clears a field.

upload_coupon_codes: creates the coupon (external_id = coupon_id) if it is missing, then
POST /api/coupon-code-bulk-create-jobs with at most 1,000 codes per job (Klaviyo queues at most
100 jobs at once). A code without expires_at gets Klaviyo's default of one year. Klaviyo, not
us, assigns these codes to profiles when it sends (`{% coupon_code 'Name' %}`).

Exactly once: a coupon code's id is `<coupon id>-<unique code>`, one per coupon, so a code can
be looked up (coupon_code_exists). submit_coupon_codes retries the POST only when it provably
was not processed (429, no connection); an ambiguous failure (5xx, timeout, broken connection)
is raised for the caller to look the codes up before sending them again. coupon_job_outcome
reads a finished job with the ids of the codes it created (`include=coupon-codes`);
count_unassigned counts the coupon's codes Klaviyo has not given out yet.

Rate limits are per account and per endpoint, in fixed 1 s and 1 min windows (LIMITS); one
RatePacer per endpoint keeps us inside them. A 429 carries only Retry-After (no RateLimit-*
headers): the pacer holds every caller back that long and the request is retried.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import httpx
from tenacity.wait import wait_base

from connectors.base import CodeSpec, ConnectorConfig, Credentials, PushResult, Recipient, RecipientResult, retry_after_seconds
from connectors.errors import AuthError, NotFound, RateLimited, Rejected
from connectors.http import (
    RETRYABLE,
    NotSent,
    RatePacer,
    Sleep,
    Wait,
    identifiers,
    raise_for_status,
    retrying,
    send,
    split_encoded,
)

JSON_API = "application/vnd.api+json"


class KlaviyoAuth(httpx.Auth):
    def __init__(self, api_key: str) -> None:
        self._header = f"Klaviyo-API-Key {api_key}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


@dataclass(frozen=True)
class KlaviyoJob:
    """An asynchronous Klaviyo job (profile import or coupon-code creation) as last seen."""

    id: str
    status: str  # queued, processing, complete, cancelled
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.status in ("complete", "cancelled")


class KlaviyoConnector:
    name: ClassVar[str] = "klaviyo"
    REVISION: ClassVar[str] = "2026-07-15"
    API_BASE: ClassVar[str] = "https://a.klaviyo.com"
    BATCH_SIZE: ClassVar[int] = 10_000  # profiles per bulk import job
    MAX_JOB_BYTES: ClassVar[int] = 5_000_000  # "5MB" per request, read as decimal megabytes to stay under either reading
    MAX_PROFILE_BYTES: ClassVar[int] = 100_000
    COUPON_CODES_PER_JOB: ClassVar[int] = 1_000
    # (burst per 1 s, steady per 1 min) per endpoint, from the spec's x-klaviyo-ratelimit
    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "profile-import": (10, 150),  # POST /api/profile-bulk-import-jobs
        "profile-import-read": (10, 150),  # GET the job and its import errors
        "coupon-read": (75, 750),  # GET /api/coupons/{id}
        "coupon-write": (3, 60),  # POST /api/coupons
        "coupon-code-jobs": (75, 750),  # POST and GET /api/coupon-code-bulk-create-jobs
        "coupon-code-read": (350, 3500),  # GET /api/coupon-codes/{id}
        "coupon-code-list": (75, 750),  # GET /api/coupons/{id}/coupon-codes
        "account-read": (1, 15),  # GET /api/accounts (the admin's "test connection")
    }
    CODES_PER_PAGE: ClassVar[int] = 100  # the most page[size] allows

    def __init__(
        self,
        client: httpx.AsyncClient,
        config: ConnectorConfig,
        credentials: Credentials | None = None,
        *,
        attempts: int = 5,
        retry_wait: wait_base | Wait | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        pacers: Mapping[str, RatePacer] | None = None,
    ) -> None:
        if credentials is None or not credentials.access_token:
            raise AuthError("Klaviyo needs a private API key")
        settings = {**config.extra, **credentials.extra}
        self._client = client
        self._base = (config.base_url or self.API_BASE).rstrip("/")
        self._auth = KlaviyoAuth(credentials.access_token)
        self._list_id = settings.get("list_id") or None
        self._attempts = attempts
        self._wait = retry_wait
        self._sleep = sleep
        # Limits are per account: share one set of pacers (new_pacers) between the connectors of an account.
        self._pacers = dict(pacers) if pacers is not None else self.new_pacers(clock=clock, sleep=sleep)
        self._known_coupons: set[str] = set()

    @classmethod
    def new_pacers(cls, *, clock: Callable[[], float] = time.monotonic, sleep: Sleep = asyncio.sleep) -> dict[str, RatePacer]:
        return {
            key: RatePacer.per_second_and_minute(burst, steady, clock=clock, sleep=sleep)
            for key, (burst, steady) in cls.LIMITS.items()
        }

    async def check_connection(self) -> str:
        """A cheap authenticated read (GET /api/accounts): the account's name, or a ConnectorError."""
        response = await self._request("account-read", "GET", "/api/accounts")
        accounts = response.json().get("data") or [{}]
        contact = (accounts[0].get("attributes") or {}).get("contact_information") or {}
        return str(contact.get("organization_name") or contact.get("default_sender_name") or "Klaviyo account")

    # --- profiles ------------------------------------------------------------------------------

    async def push_recipients(self, recipients: Sequence[Recipient]) -> list[RecipientResult]:
        if len(recipients) > 500:
            # Encoding 10,000 profiles is ~0.2 s of CPU: one encoder thread keeps the event loop
            # free to read other calls' responses (each one's arrival frees a pacer slot), and
            # keeps the calls in order, so the first is ready first.
            results, encoded = await asyncio.get_running_loop().run_in_executor(_encoder(), self._encode, recipients)
        else:
            results, encoded = self._encode(recipients)
        for job in self._split(encoded):
            job_id = await self._submit_import(job)
            for index, _ in job:
                results[index] = RecipientResult(recipients[index].key, ok=True, provider_id=job_id)
        return [result for result in results if result is not None]

    def _encode(self, recipients: Sequence[Recipient]) -> tuple[list[RecipientResult | None], list[tuple[int, bytes]]]:
        """The refusals, and each other recipient's profile as JSON (measured once, sent as is)."""
        results: list[RecipientResult | None] = [None] * len(recipients)
        encoded: list[tuple[int, bytes]] = []
        for index, recipient in enumerate(recipients):
            blob = self._profile(recipient)
            if blob is None:
                results[index] = RecipientResult(recipient.key, ok=False, error="no email, phone number or external id")
                continue
            if len(blob) > self.MAX_PROFILE_BYTES:
                error = f"profile is {len(blob)} bytes, over Klaviyo's 100 KB"
                results[index] = RecipientResult(recipient.key, ok=False, error=error)
                continue
            encoded.append((index, blob))
        return results, encoded

    async def import_job(self, job_id: str) -> KlaviyoJob:
        response = await self._request("profile-import-read", "GET", f"/api/profile-bulk-import-jobs/{quote(job_id, safe='')}")
        return _job(response.json()["data"])

    async def job_results(self, job_id: str, recipients: Sequence[Recipient]) -> list[RecipientResult] | None:
        """Per-recipient results of a finished import job (None while it is queued or running).

        `recipients` are those push_recipients accepted into this job. Klaviyo's import errors
        carry the profile that failed; an error we cannot match to a recipient fails every
        recipient not otherwise known to have failed, since re-importing them is harmless."""
        job = await self.import_job(job_id)
        if not job.done:
            return None
        if job.status == "cancelled":
            cancelled = "Klaviyo cancelled the import job"
            return [RecipientResult(r.key, ok=False, provider_id=job_id, error=cancelled) for r in recipients]
        failures: dict[int, str] = {}
        unmatched: list[str] = []
        if job.failed:
            lookup = _lookup(recipients)
            async for payload, detail in self._import_errors(job_id):
                matched = [lookup[ident] for ident in _payload_identifiers(payload) if ident in lookup]
                if matched:
                    failures[matched[0]] = detail
                else:
                    unmatched.append(detail)
        results = []
        for index, recipient in enumerate(recipients):
            error = failures.get(index)
            if error is None and unmatched:
                error = f"{len(unmatched)} import error(s) could not be matched to a recipient, e.g. {unmatched[0]}"
            results.append(RecipientResult(recipient.key, ok=error is None, provider_id=job_id, error=error))
        return results

    def _profile(self, recipient: Recipient) -> bytes | None:
        """`{"type": "profile", "attributes": {identifiers..., "properties": fields}}` as JSON,
        written out directly: this runs once per recipient, 100,000 times for a large push."""
        email, phone, external_id = identifiers(recipient)
        parts = []
        if email:
            parts.append('"email":' + _json(email))
        if phone:
            parts.append('"phone_number":' + _json(phone))
        if external_id:
            parts.append('"external_id":' + _json(external_id))
        if not parts:
            return None
        if recipient.fields:
            parts.append('"properties":' + _json(dict(recipient.fields)))
        return ('{"type":"profile","attributes":{' + ",".join(parts) + "}}").encode()

    def _split(self, encoded: list[tuple[int, bytes]]) -> Iterator[list[tuple[int, bytes]]]:
        """Cut the encoded profiles into jobs of at most BATCH_SIZE profiles and MAX_JOB_BYTES."""
        return split_encoded(encoded, max_items=self.BATCH_SIZE, max_bytes=self.MAX_JOB_BYTES, overhead=len(self._envelope(b"")))

    def _envelope(self, profiles: bytes) -> bytes:
        # Assembled from the already-encoded profiles, so each is serialised once (measured, then sent).
        lists = b""
        if self._list_id:
            lists = b',"relationships":{"lists":{"data":[{"type":"list","id":' + _json(self._list_id).encode() + b"}]}}"
        return b'{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":[' + profiles + b"]}}" + lists + b"}}"

    async def _submit_import(self, job: list[tuple[int, bytes]]) -> str:
        body = self._envelope(b",".join(blob for _, blob in job))
        response = await self._request("profile-import", "POST", "/api/profile-bulk-import-jobs", content=body)
        return str(response.json()["data"]["id"])

    async def _import_errors(self, job_id: str) -> AsyncIterator[tuple[Mapping[str, Any], str]]:
        url: str | None = f"{self._base}/api/profile-bulk-import-jobs/{quote(job_id, safe='')}/import-errors?page%5Bsize%5D=100"
        while url:
            response = await self._request("profile-import-read", "GET", url)
            document = response.json()
            for item in document.get("data") or []:
                attributes = item.get("attributes") or {}
                detail = attributes.get("detail") or attributes.get("title") or "import error"
                yield attributes.get("original_payload") or {}, str(detail)
            url = (document.get("links") or {}).get("next")

    # --- coupons -------------------------------------------------------------------------------

    async def ensure_coupon(self, coupon_id: str, description: str | None = None) -> str:
        """Create the coupon `coupon_id` (its external id) unless it exists; return its id."""
        if coupon_id in self._known_coupons:
            return coupon_id
        try:
            await self._request("coupon-read", "GET", f"/api/coupons/{quote(coupon_id, safe='')}")
        except NotFound:
            attributes: dict[str, Any] = {"external_id": coupon_id}
            if description:
                attributes["description"] = description
            body = {"data": {"type": "coupon", "attributes": attributes}}
            try:
                await self._request("coupon-write", "POST", "/api/coupons", content=_dump(body))
            except Rejected as exc:
                if exc.status != 409:  # 409: created meanwhile by someone else
                    raise
        self._known_coupons.add(coupon_id)
        return coupon_id

    async def upload_coupon_codes(self, coupon_id: str, codes: Sequence[CodeSpec]) -> list[PushResult]:
        """Add codes to the coupon's pool; one result per code, in order (platform_id = job id)."""
        await self.ensure_coupon(coupon_id)
        results: list[PushResult] = []
        for start in range(0, len(codes), self.COUPON_CODES_PER_JOB):
            chunk = codes[start : start + self.COUPON_CODES_PER_JOB]
            job_id = await self.submit_coupon_codes(coupon_id, chunk)
            results.extend(PushResult(spec.code, ok=True, platform_id=job_id) for spec in chunk)
        return results

    async def submit_coupon_codes(self, coupon_id: str, codes: Sequence[CodeSpec]) -> str:
        """One bulk create job of at most COUPON_CODES_PER_JOB codes; its job id. Retried here only
        when Klaviyo provably did not take it (429, no connection): after a 5xx or a timeout the
        job may exist, and the caller looks its codes up before sending them again."""
        if not 1 <= len(codes) <= self.COUPON_CODES_PER_JOB:
            raise ValueError(f"a coupon code job holds 1 to {self.COUPON_CODES_PER_JOB} codes")
        body = {
            "data": {
                "type": "coupon-code-bulk-create-job",
                "attributes": {"coupon-codes": {"data": [_coupon_code(coupon_id, spec) for spec in codes]}},
            }
        }
        response = await self._request(
            "coupon-code-jobs", "POST", "/api/coupon-code-bulk-create-jobs", content=_dump(body), retry_on=_NOT_TAKEN
        )
        return str(response.json()["data"]["id"])

    async def coupon_job(self, job_id: str) -> KlaviyoJob:
        return (await self.coupon_job_outcome(job_id))[0]

    async def coupon_job_outcome(self, job_id: str) -> tuple[KlaviyoJob, frozenset[str]]:
        """The job as last seen, and the ids (`<coupon>-<unique code>`) of the codes it created."""
        path = f"/api/coupon-code-bulk-create-jobs/{quote(job_id, safe='')}?include=coupon-codes"
        data = (await self._request("coupon-code-jobs", "GET", path)).json()["data"]
        linked = ((data.get("relationships") or {}).get("coupon-codes") or {}).get("data") or []
        return _job(data), frozenset(str(item["id"]) for item in linked)

    async def coupon_code_exists(self, coupon_id: str, unique_code: str) -> bool:
        """Whether the coupon holds this code (created by any job, ours or not)."""
        try:
            code_id = quote(coupon_code_id(coupon_id, unique_code), safe="")
            await self._request("coupon-code-read", "GET", f"/api/coupon-codes/{code_id}")
        except NotFound:
            return False
        return True

    async def count_unassigned(self, coupon_id: str, *, upto: int) -> int:
        """How many of the coupon's codes Klaviyo has not given to a profile yet, counted up to
        `upto` (a page of 100 per request: a large pool costs no more than the threshold needs)."""
        query = {"filter": "equals(status,'UNASSIGNED')", "fields[coupon-code]": "status", "page[size]": str(self.CODES_PER_PAGE)}
        url: str | None = f"{self._base}/api/coupons/{quote(coupon_id, safe='')}/coupon-codes?{urlencode(query)}"
        count = 0
        while url and count < upto:
            document = (await self._request("coupon-code-list", "GET", url)).json()
            count += len(document.get("data") or [])
            url = (document.get("links") or {}).get("next")
        return min(count, upto)

    # --- HTTP ----------------------------------------------------------------------------------

    async def _request(
        self,
        limit: str,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        retry_on: tuple[type[Exception], ...] = RETRYABLE,
    ) -> httpx.Response:
        pacer = self._pacers[limit]
        url = path if path.startswith("http") else self._base + path
        headers = {"revision": self.REVISION, "accept": JSON_API}
        if content is not None:
            headers["content-type"] = JSON_API

        async def attempt() -> httpx.Response:
            async with pacer.slot():
                response = await send(self._client, method, url, content=content, headers=headers, auth=self._auth)
            if response.status_code == 429:
                pacer.hold(retry_after_seconds(response.headers) or 1.0)
            return raise_for_status(response, platform=self.name, message=_message)

        return await retrying(attempt, attempts=self._attempts, wait=self._wait, sleep=self._sleep, retry_on=retry_on)


# What a non-idempotent request may be sent again after: Klaviyo did not process it.
_NOT_TAKEN: tuple[type[Exception], ...] = (RateLimited, NotSent)


def coupon_code_id(coupon_id: str, unique_code: str) -> str:
    """Klaviyo's id of a coupon code: the coupon's id and the code, joined by a hyphen."""
    return f"{coupon_id}-{unique_code}"


_ENCODER: list[ThreadPoolExecutor] = []


def _encoder() -> ThreadPoolExecutor:
    if not _ENCODER:
        _ENCODER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="klaviyo-encode"))
    return _ENCODER[0]


_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _dump(body: Any) -> bytes:
    return _json(body).encode()


def _coupon_code(coupon_id: str, spec: CodeSpec) -> dict[str, Any]:
    attributes: dict[str, Any] = {"unique_code": spec.display or spec.code}
    if spec.expires_at is not None:
        expires = spec.expires_at if spec.expires_at.tzinfo else spec.expires_at.replace(tzinfo=UTC)
        attributes["expires_at"] = expires.astimezone(UTC).isoformat()
    return {
        "type": "coupon-code",
        "attributes": attributes,
        "relationships": {"coupon": {"data": {"type": "coupon", "id": coupon_id}}},
    }


def _job(data: Mapping[str, Any]) -> KlaviyoJob:
    attributes = data.get("attributes") or {}
    errors = tuple(str(e.get("detail") or e.get("title") or e) for e in attributes.get("errors") or ())
    return KlaviyoJob(
        id=str(data.get("id")),
        status=str(attributes.get("status")),
        total=int(attributes.get("total_count") or 0),
        completed=int(attributes.get("completed_count") or 0),
        failed=int(attributes.get("failed_count") or 0),
        errors=errors,
    )


def _lookup(recipients: Sequence[Recipient]) -> dict[str, int]:
    lookup: dict[str, int] = {}
    for index, recipient in enumerate(recipients):
        for ident in identifiers(recipient):
            if ident:
                lookup.setdefault(ident.lower(), index)
    return lookup


def _payload_identifiers(payload: Mapping[str, Any]) -> list[str]:
    # The spec types original_payload only as an object: look for identifiers on it and on its attributes.
    found = []
    for source in (payload, payload.get("attributes") or {}):
        if isinstance(source, Mapping):
            found += [str(source[key]).lower() for key in ("email", "phone_number", "external_id") if source.get(key)]
    return found


def _message(response: httpx.Response) -> str:
    """JSON:API errors: `{"errors": [{"status", "code", "title", "detail"}]}`."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return str(first.get("detail") or first.get("title") or first)
    except (ValueError, AttributeError, IndexError, TypeError):
        return response.text[:300] or response.reason_phrase
