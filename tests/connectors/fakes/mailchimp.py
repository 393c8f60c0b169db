"""An in-memory Mailchimp audience behind respx, in the shapes research/messaging.md §2 documents
(no machine-readable spec is published): merge fields, member upsert by subscriber hash,
problem+json errors. Bodies come from fixtures/mailchimp.

It checks what Mailchimp checks and we depend on: Basic auth with the key as password, the
subscriber hash is md5 of the lower-cased email, merge tags exist and are at most 10 characters,
`status_if_new` is a known status. `max_in_flight` records the most concurrent requests seen.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import httpx
import respx

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mailchimp"
PROBLEM = {"content-type": "application/problem+json; charset=utf-8"}
STATUSES = {"subscribed", "unsubscribed", "cleaned", "pending", "transactional"}
MERGE_TYPES = {"text", "number", "address", "phone", "date", "url", "imageurl", "radio", "dropdown", "birthday", "zip"}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def problem(name: str, status: int) -> httpx.Response:
    return httpx.Response(status, json=fixture(name), headers=PROBLEM)


class FakeMailchimp:
    BASE_URL = "https://us6.api.mailchimp.com/3.0"
    API_KEY = "0123456789abcdef0123456789abcdef-us6"

    def __init__(self, list_id: str = "a1b2c3d4e5") -> None:
        # A fake serves many tests, each using some routes: tests assert the calls they care about.
        self.router = respx.mock(base_url=self.BASE_URL, assert_all_called=False)
        self.list_id = list_id
        self.merge_fields: list[dict[str, Any]] = copy.deepcopy(fixture("merge_fields.json")["merge_fields"])
        self.members: dict[str, dict[str, Any]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._scripts: dict[str, deque[httpx.Response]] = defaultdict(deque)
        r = self.router
        merge_fields = r"^/lists/(?P<list_id>[^/]+)/merge-fields$"
        r.get(path__regex=merge_fields, name="merge-fields").mock(side_effect=self._wrap("merge-fields", self._list_fields))
        r.post(path__regex=merge_fields, name="create-merge-field").mock(
            side_effect=self._wrap("create-merge-field", self._create_field)
        )
        r.put(path__regex=r"^/lists/(?P<list_id>[^/]+)/members/(?P<subscriber_hash>[0-9a-f]{32})$", name="member").mock(
            side_effect=self._wrap("member", self._upsert)
        )

    def script(self, route: str, *responses: httpx.Response) -> None:
        """Serve these responses, in order, before the route answers normally again."""
        self._scripts[route].extend(responses)

    def tags(self) -> set[str]:
        return {field["tag"] for field in self.merge_fields}

    def _wrap(self, route: str, handler: Any) -> Any:
        async def side_effect(request: httpx.Request, list_id: str, **kwargs: Any) -> httpx.Response:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                for _ in range(3):  # let other requests in, as a real server would
                    await asyncio.sleep(0)
                if self._scripts[route]:
                    return self._scripts[route].popleft()
                scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
                password = base64.b64decode(credentials).decode().partition(":")[2] if scheme == "Basic" else ""
                if password != self.API_KEY:  # any user name, the key as password
                    return problem("problem_api_key_invalid.json", 401)
                if list_id != self.list_id:
                    return problem("problem_not_found.json", 404)
                return handler(request, **kwargs)  # type: ignore[no-any-return]
            finally:
                self.in_flight -= 1

        return side_effect

    def _list_fields(self, request: httpx.Request) -> httpx.Response:
        count = int(request.url.params.get("count", "10"))
        page = self.merge_fields[:count]
        return httpx.Response(200, json={"merge_fields": page, "list_id": self.list_id, "total_items": len(self.merge_fields)})

    def _create_field(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        tag, kind = body.get("tag", ""), body.get("type")
        if not body.get("name") or kind not in MERGE_TYPES or len(tag) > 10 or tag in self.tags():
            return problem("problem_invalid_resource.json", 400)
        field = {
            "merge_id": len(self.merge_fields) + 1,
            "tag": tag,
            "name": body["name"],
            "type": kind,
            "required": bool(body.get("required")),
            "default_value": "",
            "public": bool(body.get("public")),
            "display_order": len(self.merge_fields) + 2,
            "options": {},
            "help_text": "",
            "list_id": self.list_id,
            "_links": [],
        }
        self.merge_fields.append(field)
        return httpx.Response(200, json=field)

    def _upsert(self, request: httpx.Request, subscriber_hash: str) -> httpx.Response:
        body = json.loads(request.content)
        email = body.get("email_address", "")
        if hashlib.md5(email.lower().encode()).hexdigest() != subscriber_hash or "@" not in email:
            return problem("problem_invalid_resource.json", 400)
        unknown = set(body.get("merge_fields", {})) - self.tags()
        if unknown or body.get("status_if_new") not in STATUSES:
            invalid = fixture("problem_invalid_resource.json")
            invalid["detail"] = "Your merge fields were invalid."
            invalid["errors"] = [{"field": tag, "message": "unknown merge field"} for tag in sorted(unknown)]
            return httpx.Response(400, json=invalid, headers=PROBLEM)
        member = self.members.get(subscriber_hash) or {**fixture("member.json"), "status": body["status_if_new"]}
        member.update(id=subscriber_hash, email_address=email, list_id=self.list_id)
        member["merge_fields"] = {**member.get("merge_fields", {}), **body.get("merge_fields", {})}
        self.members[subscriber_hash] = member
        return httpx.Response(200, json=member)
