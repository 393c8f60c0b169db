"""SendGrid Marketing Campaigns behind respx, answering like its published specs
(tests/contracts/sendgrid: tsg_mc_contacts_v3.json, tsg_mc_custom_fields_v3.json; bodies from
fixtures/sendgrid, the field-definition ones being the specs' own examples).

It checks what SendGrid checks and we rely on: Bearer auth, custom fields known by id, at most
30,000 contacts and 6 MB per upsert, field names unique ignoring case. Upserts are jobs that stay
"pending" until finish_jobs(). Answers carry X-RateLimit-Limit/-Remaining/-Reset (Unix time).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import httpx
import respx

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sendgrid"
RESET_EPOCH = 1_800_000_000


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class FakeSendGrid:
    BASE_URL = "https://api.sendgrid.com"
    API_KEY = "SG.fake-key.0123456789"

    def __init__(self) -> None:
        # A fake serves many tests, each using some routes: tests assert the calls they care about.
        self.router = respx.mock(base_url=self.BASE_URL, assert_all_called=False)
        definitions = fixture("field_definitions.json")
        self.custom_fields: list[dict[str, Any]] = definitions["custom_fields"]
        self.reserved_fields: list[dict[str, Any]] = definitions["reserved_fields"]
        self.contacts: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._scripts: dict[str, deque[httpx.Response]] = defaultdict(deque)
        r = self.router
        r.get("/v3/marketing/field_definitions", name="fields").mock(side_effect=self._wrap("fields", self._fields))
        r.post("/v3/marketing/field_definitions", name="create-field").mock(
            side_effect=self._wrap("create-field", self._create_field)
        )
        r.put("/v3/marketing/contacts", name="upsert").mock(side_effect=self._wrap("upsert", self._upsert))
        r.get(path__regex=r"^/v3/marketing/contacts/imports/(?P<job_id>[^/]+)$", name="import").mock(
            side_effect=self._wrap("import", self._import)
        )

    def script(self, route: str, *responses: httpx.Response) -> None:
        """Serve these responses, in order, before the route answers normally again."""
        self._scripts[route].extend(responses)

    def finish_jobs(self, status: str = "completed", errored: int = 0) -> None:
        for job in self.jobs.values():
            job.update(status=status, errored=errored)

    def _wrap(self, route: str, handler: Any) -> Any:
        def side_effect(request: httpx.Request, **kwargs: Any) -> httpx.Response:
            if self._scripts[route]:
                return self._scripts[route].popleft()
            if request.headers.get("authorization") != f"Bearer {self.API_KEY}":
                return httpx.Response(401, json=fixture("unauthorized.json"))
            response: httpx.Response = handler(request, **kwargs)
            response.headers.update(
                {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "599", "X-RateLimit-Reset": str(RESET_EPOCH)}
            )
            return response

        return side_effect

    def _fields(self, request: httpx.Request) -> httpx.Response:
        body = {
            "custom_fields": self.custom_fields,
            "reserved_fields": self.reserved_fields,
            "_metadata": {"self": str(request.url)},
        }
        return httpx.Response(200, json=body)

    def _create_field(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        name, kind = body.get("name", ""), body.get("field_type")
        taken = {f["name"].lower() for f in [*self.custom_fields, *self.reserved_fields]}
        if (
            not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", name)
            or kind not in ("Text", "Number", "Date")
            or name.lower() in taken
        ):
            return httpx.Response(400, json={"errors": [{"field": "name", "message": "invalid or duplicate field name"}]})
        field = {
            **fixture("field_definition_created.json"),
            "id": f"e{len(self.custom_fields) + 1}_{kind[0]}",
            "name": name,
            "field_type": kind,
        }
        self.custom_fields.append({k: field[k] for k in ("id", "name", "field_type")})
        return httpx.Response(200, json=field)

    def _upsert(self, request: httpx.Request) -> httpx.Response:
        if len(request.content) > 6_000_000:
            return httpx.Response(413, json={"errors": [{"message": "request entity too large"}]})
        contacts = json.loads(request.content)["contacts"]
        ids = {f["id"] for f in self.custom_fields}
        unknown = {key for contact in contacts for key in contact.get("custom_fields", {})} - ids
        if not 1 <= len(contacts) <= 30_000 or unknown:
            return httpx.Response(
                400, json={"errors": [{"field": "custom_fields", "message": f"unknown custom fields {sorted(unknown)}"}]}
            )
        job_id = str(uuid.uuid4())
        self.jobs[job_id] = {"status": "pending", "contacts": contacts, "errored": 0}
        for contact in contacts:
            key = (contact.get("email") or contact.get("phone_number_id") or contact.get("external_id") or "").lower()
            self.contacts.setdefault(key, {}).update(contact)
        return httpx.Response(202, json={"job_id": job_id})

    def _import(self, request: httpx.Request, job_id: str) -> httpx.Response:
        if job_id not in self.jobs:
            return httpx.Response(404, json={"errors": [{"message": "job not found"}]})
        job = self.jobs[job_id]
        body = fixture("import_status.json")
        total = len(job["contacts"])
        body.update(id=job_id, status=job["status"])
        body["results"].update(
            requested_count=total, created_count=total - job["errored"], updated_count=0, errored_count=job["errored"]
        )
        return httpx.Response(200, json=body)
