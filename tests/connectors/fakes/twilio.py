"""Twilio's Messages resource behind respx, answering like the published spec
(tests/contracts/twilio, twilio_api_v2010.json; the 201 body is the spec's own example) and
Twilio's error shape `{"code", "message", "more_info", "status"}` (fixtures/twilio).

It checks Basic auth (account SID and Auth Token, or an API key), an E.164 `To` (else 21211),
one of From/MessagingServiceSid and a Body. `max_in_flight` records the most concurrent requests.

`messages` records every message *created* (committed), whatever answer the client then got:
exactly-once tests count them. The list (GET Messages.json) filters by To and From, newest first,
in pages of PageSize with `next_page_uri` (Page, PageToken), as the spec's examples show; a
message is created `queued`, with no `date_sent`.

Faults: `script(...)` serves responses or raises transport errors in order, before answering
normally; a script entry LOST ("commit, then the answer is lost": a read timeout) or LOST_500
("commit, then a 500") creates the message first. `fault`, a callable given (method, To, n-th
request of that method for that number), returns such an entry or None, for seeded fault mixes.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode

import httpx
import respx

from tests.contracts import body_errors, load_contract, openapi, validate_request, validate_response

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "twilio"
E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def error(name: str) -> httpx.Response:
    body = fixture(name)
    return httpx.Response(body["status"], json=body)


LOST = "lost"  # commit, then the answer is lost (read timeout)
LOST_500 = "lost_500"  # commit, then answer 500
Scripted = httpx.Response | Exception | Literal["lost", "lost_500"]


class FakeTwilio:
    BASE_URL = "https://api.twilio.com"
    ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
    AUTH_TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    API_KEY = ("SK" + "fedcba9876543210" * 2, "api-key-secret")

    def __init__(self) -> None:
        # One route; tests assert its calls themselves.
        self.router = respx.mock(base_url=self.BASE_URL, assert_all_called=False)
        self.messages: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.invalid: set[str] = set()  # numbers refused with 21211, as a number that can't get SMS
        self.fault: Callable[[str, str, int], Scripted | None] | None = None
        self.faults: Counter[str] = Counter()  # served faults by kind, e.g. "POST lost"
        self._requests: Counter[tuple[str, str]] = Counter()
        self._scripts: deque[Scripted] = deque()
        self._list_scripts: deque[Scripted] = deque()
        self._sids = (f"SM{n:032x}" for n in itertools.count(1))
        path = r"^/2010-04-01/Accounts/(?P<account_sid>AC[0-9a-fA-F]{32})/Messages\.json$"
        self.router.post(path__regex=path, name="messages").mock(side_effect=self._create)
        self.router.get(path__regex=path, name="list").mock(side_effect=self._list)

    def script(self, *responses: Scripted) -> None:
        """Serve these to message creations (or raise these transport errors; LOST and LOST_500
        create the message first), in order, before answering normally."""
        self._scripts.extend(responses)

    def script_list(self, *responses: httpx.Response | Exception) -> None:
        """The same for list requests."""
        self._list_scripts.extend(responses)

    def add_message(self, to: str, body: str, created: datetime, sender: str = "+14155552345") -> dict[str, Any]:
        """A message created earlier (by us or anyone), as the list will show it."""
        message = self._message(self.ACCOUNT_SID, {"To": to, "From": sender, "Body": body}, created)
        message["status"], message["date_sent"] = "delivered", format_datetime(created)
        return message

    def created_for(self, to: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["to"] == to and m["direction"] == "outbound-api"]

    async def _enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        for _ in range(3):  # let other requests in, as a real server would
            await asyncio.sleep(0)

    def _next_fault(self, method: str, to: str) -> Scripted | None:
        scripts = self._scripts if method == "POST" else self._list_scripts
        if scripts:
            return scripts.popleft()
        if self.fault is None:
            return None
        self._requests[method, to] += 1
        return self.fault(method, to, self._requests[method, to])

    def _authorised(self, request: httpx.Request, account_sid: str) -> bool:
        user, _, password = base64.b64decode(request.headers.get("authorization", "Basic ").split(" ")[1]).decode().partition(":")
        return (user, password) in {(self.ACCOUNT_SID, self.AUTH_TOKEN), self.API_KEY} and account_sid == self.ACCOUNT_SID

    def _message(self, account_sid: str, form: dict[str, str], created: datetime) -> dict[str, Any]:
        message: dict[str, Any] = fixture("message_created.json")
        sid = next(self._sids)
        message.update(
            sid=sid,
            account_sid=account_sid,
            to=form["To"],
            body=form["Body"],
            uri=f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json",
            date_created=format_datetime(created.replace(microsecond=0)),  # RFC 2822, to the second
            date_updated=format_datetime(created.replace(microsecond=0)),
            date_sent=None,  # queued: not sent yet
        )
        message["from"] = form.get("From")
        message["messaging_service_sid"] = form.get("MessagingServiceSid")
        self.messages.append(message)
        return message

    async def _create(self, request: httpx.Request, account_sid: str) -> httpx.Response:
        await self._enter()
        try:
            form = {k: v[0] for k, v in parse_qs(request.content.decode(), keep_blank_values=True).items()}
            scripted = self._next_fault("POST", form.get("To", ""))
            if isinstance(scripted, Exception):
                self.faults["POST " + type(scripted).__name__] += 1
                raise scripted
            if isinstance(scripted, httpx.Response):
                self.faults[f"POST {scripted.status_code}"] += 1
                return scripted
            if not self._authorised(request, account_sid):
                return error("error_20003.json")
            if not E164.match(form.get("To", "")) or form.get("To") in self.invalid:
                return error("error_21211.json")
            if bool(form.get("From")) == bool(form.get("MessagingServiceSid")) or not form.get("Body"):
                return httpx.Response(
                    400, json={"code": 21602, "message": "Message body is required.", "more_info": "", "status": 400}
                )
            message = self._message(account_sid, form, datetime.now(UTC))
            if scripted is not None:  # committed, but the answer is lost
                self.faults["POST " + scripted] += 1
                if scripted == LOST:
                    raise httpx.ReadTimeout("read timed out")
                return error("error_20500.json")
            return httpx.Response(201, json=message)
        finally:
            self.in_flight -= 1

    async def _list(self, request: httpx.Request, account_sid: str) -> httpx.Response:
        await self._enter()
        try:
            query = request.url.params
            scripted = self._next_fault("GET", query.get("To", ""))
            if isinstance(scripted, Exception):
                self.faults["GET " + type(scripted).__name__] += 1
                raise scripted
            if isinstance(scripted, httpx.Response):
                self.faults[f"GET {scripted.status_code}"] += 1
                return scripted
            if not self._authorised(request, account_sid):
                return error("error_20003.json")
            found = [
                m
                for m in reversed(self.messages)  # newest first
                if m["account_sid"] == account_sid
                and ("To" not in query or m["to"] == query["To"])
                and ("From" not in query or m["from"] == query["From"])
            ]
            size, page = int(query.get("PageSize", "50")), int(query.get("Page", "0"))
            filters = {k: query[k] for k in ("To", "From") if k in query}
            base = f"/2010-04-01/Accounts/{account_sid}/Messages.json?"

            def uri(n: int, token: bool = False) -> str:
                extra = {"PageToken": f"PA{n:032x}"} if token else {}
                return base + urlencode({**filters, "PageSize": size, "Page": n, **extra})

            messages = found[page * size : (page + 1) * size]
            more = (page + 1) * size < len(found)
            return httpx.Response(
                200,
                json={
                    "end": page * size + max(0, len(messages) - 1),
                    "first_page_uri": uri(0),
                    "next_page_uri": uri(page + 1, token=True) if more else None,
                    "page": page,
                    "page_size": size,
                    "previous_page_uri": uri(page - 1, token=True) if page else None,
                    "messages": messages,
                    "start": page * size,
                    "uri": uri(page),
                },
            )
        finally:
            self.in_flight -= 1


SPEC = "twilio/twilio_api_v2010.json.gz"
MESSAGES = "/2010-04-01/Accounts/{AccountSid}/Messages.json"


def check_against_the_contract(fake: FakeTwilio) -> None:
    """Every request the fake served matches the operation of Twilio's spec, and every list page it
    answered is a documented answer. Call it while the router runs (it forgets calls when it stops)."""
    api, spec = openapi(SPEC), load_contract(SPEC)
    form_schema = spec["paths"][MESSAGES]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    form_schema = form_schema["properties"]
    for call in fake.router["list"].calls:  # every lookup, and the fake's answers to it
        validate_request(api, call.request)
        assert "DateSent" not in str(call.request.url)  # a date, and queued messages have none
        if call.has_response and call.response.status_code == 200:
            validate_response(api, call.request, call.response)
    for call in fake.router["messages"].calls:  # every message we sent, whatever the test did
        validate_request(api, call.request)
        sent: dict[str, Any] = {k: v[0] for k, v in parse_qs(call.request.content.decode()).items()}
        for name, schema in form_schema.items():  # a form carries text only: read numbers as the spec types them
            if name in sent and schema.get("type") == "integer":
                sent[name] = int(sent[name])
        assert body_errors(spec, MESSAGES, "post", sent, "application/x-www-form-urlencoded") == []
        # rules the spec states in prose only
        assert ("From" in sent) != ("MessagingServiceSid" in sent)
        assert sent.get("Body")
