"""Braze: each recipient's code as custom attributes, through POST /users/track.

Auth: `Authorization: Bearer <REST API key>` (Credentials.access_token; the key needs the
`users.track` permission). The REST endpoint depends on the customer's instance
(e.g. https://rest.iad-01.braze.com): ConnectorConfig.base_url, else the `rest_endpoint` setting.

Settings (Credentials.extra, falling back to ConnectorConfig.extra):
    rest_endpoint   the instance's REST URL (required unless ConnectorConfig.base_url is set)
    batch_size      attribute objects per request, at most 75 (default); 50 for customers on the
                    "Monthly Active Users CY 24-25" plan, whose requests carry at most 50 updates

Merge fields become custom attributes of the same name (Liquid: `{{custom_attribute.${coupon_code}}}`):
    coupon_code, coupon_display, coupon_expires_at, claim_url → attributes.<same name>
    (other keys pass through). The user is named by external_id, else email, else phone
    (see connectors.http.identifiers); Braze creates the profile if there is none.

Answers: `{"message": "success", "attributes_processed": n, "errors": [{"type", "input_array",
"index"}]}`: an indexed error fails that recipient alone. A fatal error (4xx) whose errors are
indexed fails every recipient of the request, the indexed ones with their own reason; any other
4xx raises. Rate limit: 3,000 requests per 3 s for /users/track (legacy accounts; a RatePacer
keeps us under it). Responses carry X-RateLimit-Limit/-Remaining/-Reset, the reset in UTC epoch
seconds: a 429 waits until then.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, ClassVar

import httpx
from tenacity.wait import wait_base

from connectors.base import ConnectorConfig, Credentials, Recipient, RecipientResult
from connectors.errors import AuthError, Rejected
from connectors.http import RatePacer, Sleep, Wait, identifiers, raise_for_status, retrying, send


class BrazeAuth(httpx.Auth):
    def __init__(self, api_key: str) -> None:
        self._header = f"Bearer {api_key}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class BrazeConnector:
    name: ClassVar[str] = "braze"
    BATCH_SIZE: ClassVar[int] = 75  # attribute objects per /users/track request
    RATE_LIMIT: ClassVar[tuple[int, float]] = (3_000, 3.0)  # requests per 3 seconds

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
        wall_clock: Callable[[], float] = time.time,
        pacer: RatePacer | None = None,
    ) -> None:
        if credentials is None or not credentials.access_token:
            raise AuthError("Braze needs a REST API key")
        settings = {**config.extra, **credentials.extra}
        base = config.base_url or settings.get("rest_endpoint")
        if not base:
            raise Rejected("Braze needs the instance's REST endpoint (rest_endpoint)")
        self._url = base.rstrip("/") + "/users/track"
        self._batch = max(1, min(int(settings.get("batch_size") or self.BATCH_SIZE), self.BATCH_SIZE))
        self._client = client
        self._auth = BrazeAuth(credentials.access_token)
        self._attempts = attempts
        self._wait = retry_wait
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._pacer = pacer or RatePacer([self.RATE_LIMIT], clock=clock, sleep=sleep)

    async def push_recipients(self, recipients: Sequence[Recipient]) -> list[RecipientResult]:
        results: list[RecipientResult | None] = [None] * len(recipients)
        sendable: list[tuple[int, dict[str, Any]]] = []
        for index, recipient in enumerate(recipients):
            attributes = self._attributes(recipient)
            if attributes is None:
                results[index] = RecipientResult(recipient.key, ok=False, error="no external id, email or phone")
            else:
                sendable.append((index, attributes))
        for start in range(0, len(sendable), self._batch):
            chunk = sendable[start : start + self._batch]
            for (index, _), result in zip(chunk, await self._track([recipients[i] for i, _ in chunk], chunk), strict=True):
                results[index] = result
        return [result for result in results if result is not None]

    def _attributes(self, recipient: Recipient) -> dict[str, Any] | None:
        email, phone, external_id = identifiers(recipient)
        if external_id:
            ident = {"external_id": external_id}
        elif email:
            ident = {"email": email}
        elif phone:
            ident = {"phone": phone}
        else:
            return None
        return {**recipient.fields, **ident}

    async def _track(self, recipients: list[Recipient], chunk: list[tuple[int, dict[str, Any]]]) -> list[RecipientResult]:
        body = {"attributes": [attributes for _, attributes in chunk]}
        response = await self._post(body)
        answer = _json(response)
        errors: dict[int, str] = {}
        for error in answer.get("errors") or ():
            if isinstance(error, dict) and error.get("input_array", "attributes") == "attributes" and "index" in error:
                errors[int(error["index"])] = str(error.get("type") or "rejected")
        if response.status_code >= 400:  # fatal, with indexed errors: nothing in this request was processed
            fatal = str(answer.get("message") or response.reason_phrase)
            return [RecipientResult(r.key, ok=False, error=errors.get(i, fatal)) for i, r in enumerate(recipients)]
        return [RecipientResult(r.key, ok=i not in errors, error=errors.get(i)) for i, r in enumerate(recipients)]

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        async def attempt() -> httpx.Response:
            async with self._pacer.slot():
                response = await send(self._client, "POST", self._url, json=body, auth=self._auth)
            if response.status_code == 429:
                self._pacer.hold(self._retry_after(response) or 1.0)
            if response.status_code == 400 and _indexed_errors(response):
                return response
            return raise_for_status(response, platform=self.name, message=_message, retry_after=self._retry_after)

        return await retrying(attempt, attempts=self._attempts, wait=self._wait, sleep=self._sleep)

    def _retry_after(self, response: httpx.Response) -> float | None:
        reset = response.headers.get("x-ratelimit-reset")
        try:
            return max(0.0, float(reset) - self._wall_clock()) if reset else None
        except ValueError:
            return None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except json.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _indexed_errors(response: httpx.Response) -> bool:
    return any(isinstance(e, dict) and "index" in e for e in _json(response).get("errors") or ())


def _message(response: httpx.Response) -> str:
    body = _json(response)
    message = body.get("message") or response.text[:300] or response.reason_phrase
    errors = body.get("errors")
    return f"{message}: {errors}"[:300] if errors else str(message)
