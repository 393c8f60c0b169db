"""Twilio's Messages resource behind respx, answering like the published spec
(tests/contracts/twilio, twilio_api_v2010.json; the 201 body is the spec's own example) and
Twilio's error shape `{"code", "message", "more_info", "status"}` (fixtures/twilio).

It checks Basic auth (account SID and Auth Token, or an API key), an E.164 `To` (else 21211),
one of From/MessagingServiceSid and a Body. `max_in_flight` records the most concurrent sends.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import respx

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "twilio"
E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def error(name: str) -> httpx.Response:
    body = fixture(name)
    return httpx.Response(body["status"], json=body)


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
        self._scripts: deque[httpx.Response | Exception] = deque()
        self._sids = (f"SM{n:032x}" for n in itertools.count(1))
        self.router.post(
            path__regex=r"^/2010-04-01/Accounts/(?P<account_sid>AC[0-9a-fA-F]{32})/Messages\.json$", name="messages"
        ).mock(side_effect=self._create)

    def script(self, *responses: httpx.Response | Exception) -> None:
        """Serve these (or raise these transport errors), in order, before answering normally."""
        self._scripts.extend(responses)

    async def _create(self, request: httpx.Request, account_sid: str) -> httpx.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(3):  # let other requests in, as a real server would
                await asyncio.sleep(0)
            if self._scripts:
                scripted = self._scripts.popleft()
                if isinstance(scripted, Exception):
                    raise scripted
                return scripted
            user, _, password = (
                base64.b64decode(request.headers.get("authorization", "Basic ").split(" ")[1]).decode().partition(":")
            )
            if (user, password) not in {(self.ACCOUNT_SID, self.AUTH_TOKEN), self.API_KEY} or account_sid != self.ACCOUNT_SID:
                return error("error_20003.json")
            form = {k: v[0] for k, v in parse_qs(request.content.decode(), keep_blank_values=True).items()}
            if not E164.match(form.get("To", "")):
                return error("error_21211.json")
            if bool(form.get("From")) == bool(form.get("MessagingServiceSid")) or not form.get("Body"):
                return httpx.Response(
                    400, json={"code": 21602, "message": "Message body is required.", "more_info": "", "status": 400}
                )
            message = fixture("message_created.json")
            sid = next(self._sids)
            message.update(
                sid=sid,
                account_sid=account_sid,
                to=form["To"],
                body=form["Body"],
                uri=f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json",
            )
            message["from"] = form.get("From")
            message["messaging_service_sid"] = form.get("MessagingServiceSid")
            self.messages.append(message)
            return httpx.Response(201, json=message)
        finally:
            self.in_flight -= 1
