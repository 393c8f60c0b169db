"""An in-memory Klaviyo behind respx, answering in the shapes of Klaviyo's published spec
(tests/contracts/klaviyo, revision 2026-07-15; response bodies from fixtures/klaviyo).

    fake = FakeKlaviyo()
    with fake.router:                      # patches httpx: every request reaches the fake
        ...
    fake.script("import", httpx.Response(429, ...))   # served before the route's normal answer
    fake.finish_jobs(failures={"a@x.com": "Invalid email address"})

Jobs stay "queued" until finish_jobs(). Every request is kept in `fake.requests`.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import httpx
import respx

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "klaviyo"
JSON_API = {"content-type": "application/vnd.api+json"}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class FakeKlaviyo:
    BASE_URL = "https://a.klaviyo.com"

    def __init__(self) -> None:
        # A fake serves many tests, each using some routes: tests assert the calls they care about.
        self.router = respx.mock(base_url=self.BASE_URL, assert_all_called=False)
        self.requests: list[httpx.Request] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.coupons: set[str] = set()
        self.coupon_jobs: dict[str, dict[str, Any]] = {}
        self._scripts: dict[str, deque[httpx.Response]] = defaultdict(deque)
        r = self.router
        r.post("/api/profile-bulk-import-jobs", name="import").mock(side_effect=self._wrap("import", self._create_import))
        r.get(path__regex=r"^/api/profile-bulk-import-jobs/(?P<job_id>[^/]+)/import-errors$", name="import-errors").mock(
            side_effect=self._wrap("import-errors", self._import_errors)
        )
        r.get(path__regex=r"^/api/profile-bulk-import-jobs/(?P<job_id>[^/]+)$", name="import-job").mock(
            side_effect=self._wrap("import-job", self._import_job)
        )
        r.get(path__regex=r"^/api/coupons/(?P<coupon_id>[^/]+)$", name="coupon").mock(
            side_effect=self._wrap("coupon", self._coupon)
        )
        r.post("/api/coupons", name="coupons").mock(side_effect=self._wrap("coupons", self._create_coupon))
        r.post("/api/coupon-code-bulk-create-jobs", name="coupon-jobs").mock(
            side_effect=self._wrap("coupon-jobs", self._create_coupon_job)
        )
        r.get(path__regex=r"^/api/coupon-code-bulk-create-jobs/(?P<job_id>[^/]+)$", name="coupon-job").mock(
            side_effect=self._wrap("coupon-job", self._coupon_job)
        )

    def script(self, route: str, *responses: httpx.Response) -> None:
        """Serve these responses, in order, before the route answers normally again."""
        self._scripts[route].extend(responses)

    def finish_jobs(self, failures: dict[str, str] | None = None, status: str = "complete") -> None:
        """Complete every import job; profiles whose email is in `failures` fail with that detail."""
        failures = failures or {}
        for job in self.jobs.values():
            job["status"] = status
            job["errors"] = [
                (p, failures[p["attributes"].get("email")]) for p in job["profiles"] if p["attributes"].get("email") in failures
            ]

    def imported_profiles(self) -> list[dict[str, Any]]:
        return [profile for job in self.jobs.values() for profile in job["profiles"]]

    # --- routes --------------------------------------------------------------------------------

    def _wrap(self, route: str, handler: Any) -> Any:
        def side_effect(request: httpx.Request, **kwargs: Any) -> httpx.Response:
            self.requests.append(request)
            if self._scripts[route]:
                return self._scripts[route].popleft()
            if not request.headers.get("authorization", "").startswith("Klaviyo-API-Key "):
                return httpx.Response(401, json=fixture("unauthorized.json"), headers=JSON_API)
            return handler(request, **kwargs)  # type: ignore[no-any-return]

        return side_effect

    def _create_import(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        profiles = body["data"]["attributes"]["profiles"]["data"]
        job_id = uuid.uuid4().hex.upper()[:26]
        self.jobs[job_id] = {"status": "queued", "profiles": profiles, "errors": []}
        return httpx.Response(202, json=self._job_document(job_id), headers=JSON_API)

    def _import_job(self, request: httpx.Request, job_id: str) -> httpx.Response:
        if job_id not in self.jobs:
            return httpx.Response(404, json=fixture("not_found.json"), headers=JSON_API)
        return httpx.Response(200, json=self._job_document(job_id), headers=JSON_API)

    def _import_errors(self, request: httpx.Request, job_id: str) -> httpx.Response:
        size = int(request.url.params.get("page[size]", "20"))
        start = int(request.url.params.get("page[cursor]", "0"))
        errors = self.jobs[job_id]["errors"]
        page = []
        for n, (profile, detail) in enumerate(errors[start : start + size], start):
            item = fixture("import_error.json")
            item["id"] = f"{job_id}-{n}"
            item["attributes"]["detail"] = detail
            item["attributes"]["original_payload"] = copy.deepcopy(profile["attributes"])
            page.append(item)
        url = f"{self.BASE_URL}/api/profile-bulk-import-jobs/{job_id}/import-errors"
        links = {"self": url}
        if start + size < len(errors):
            links["next"] = str(httpx.URL(url, params={"page[size]": size, "page[cursor]": start + size}))
        return httpx.Response(200, json={"data": page, "links": links}, headers=JSON_API)

    def _job_document(self, job_id: str) -> Any:
        job = self.jobs[job_id]
        document = fixture("bulk_import_job.json")
        data = document["data"]
        data["id"] = job_id
        data["links"]["self"] = f"{self.BASE_URL}/api/profile-bulk-import-jobs/{job_id}"
        total = len(job["profiles"])
        failed = len(job["errors"])
        done = job["status"] == "complete"
        data["attributes"].update(
            status=job["status"],
            total_count=total,
            completed_count=total - failed if done else 0,
            failed_count=failed,
            completed_at="2026-07-20T10:01:00+00:00" if done else None,
        )
        return document

    def _coupon(self, request: httpx.Request, coupon_id: str) -> httpx.Response:
        if coupon_id not in self.coupons:
            return httpx.Response(404, json=fixture("not_found.json"), headers=JSON_API)
        return httpx.Response(200, json=self._coupon_document(coupon_id), headers=JSON_API)

    def _create_coupon(self, request: httpx.Request) -> httpx.Response:
        coupon_id = json.loads(request.content)["data"]["attributes"]["external_id"]
        if coupon_id in self.coupons:
            conflict = {"errors": [{"id": "c0", "status": 409, "code": "conflict", "title": "Conflict.", "detail": "exists"}]}
            return httpx.Response(409, json=conflict, headers=JSON_API)
        self.coupons.add(coupon_id)
        return httpx.Response(201, json=self._coupon_document(coupon_id), headers=JSON_API)

    def _coupon_document(self, coupon_id: str) -> Any:
        document = fixture("coupon.json")
        document["data"]["id"] = document["data"]["attributes"]["external_id"] = coupon_id
        document["data"]["links"]["self"] = document["links"]["self"] = f"{self.BASE_URL}/api/coupons/{coupon_id}"
        return document

    def _create_coupon_job(self, request: httpx.Request) -> httpx.Response:
        codes = json.loads(request.content)["data"]["attributes"]["coupon-codes"]["data"]
        job_id = uuid.uuid4().hex.upper()[:26]
        self.coupon_jobs[job_id] = {"codes": codes}
        document = fixture("coupon_code_bulk_create_job.json")
        document["data"]["id"] = job_id
        document["data"]["attributes"]["total_count"] = len(codes)
        return httpx.Response(202, json=document, headers=JSON_API)

    def _coupon_job(self, request: httpx.Request, job_id: str) -> httpx.Response:
        document = fixture("coupon_code_bulk_create_job.json")
        document["data"]["id"] = job_id
        document["data"]["attributes"].update(status="complete", total_count=len(self.coupon_jobs[job_id]["codes"]))
        return httpx.Response(200, json=document, headers=JSON_API)
