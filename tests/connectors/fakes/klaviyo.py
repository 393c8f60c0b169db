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
        # coupon id → {unique code: status}; what Klaviyo holds once a job has run
        self.coupon_codes: dict[str, dict[str, str]] = defaultdict(dict)
        self.hold_coupon_jobs = False  # True: jobs stay "processing" until run_coupon_jobs()
        self.reject_codes: set[str] = set()  # unique codes a job refuses (an invalid code)
        self._scripts: dict[str, deque[httpx.Response | Exception]] = defaultdict(deque)
        self._lost: dict[str, deque[httpx.Response | Exception]] = defaultdict(deque)
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
        r.get(path__regex=r"^/api/coupon-codes/(?P<code_id>[^/]+)$", name="coupon-code").mock(
            side_effect=self._wrap("coupon-code", self._coupon_code)
        )
        r.get(path__regex=r"^/api/coupons/(?P<coupon_id>[^/]+)/coupon-codes$", name="coupon-codes").mock(
            side_effect=self._wrap("coupon-codes", self._coupon_codes_page)
        )

    def script(self, route: str, *responses: httpx.Response | Exception) -> None:
        """Serve these responses, in order, before the route answers normally again; an
        exception (e.g. httpx.ReadTimeout) is raised instead of answering."""
        self._scripts[route].extend(responses)

    def lose_answer(self, route: str, *answers: httpx.Response | Exception) -> None:
        """The route's next requests take effect, but the caller gets these instead of the answer
        (a 5xx or a timeout after the commit)."""
        self._lost[route].extend(answers)

    def finish_jobs(self, failures: dict[str, str] | None = None, status: str = "complete") -> None:
        """Complete every import job; profiles whose email is in `failures` fail with that detail."""
        failures = failures or {}
        for job in self.jobs.values():
            job["status"] = status
            job["errors"] = [
                (p, failures[p["attributes"].get("email")]) for p in job["profiles"] if p["attributes"].get("email") in failures
            ]

    def run_coupon_jobs(self) -> None:
        """Process every coupon code job: each code is created unless its coupon holds it already."""
        for job in self.coupon_jobs.values():
            if job["status"] == "complete":
                continue
            job["status"] = "complete"
            for n, item in enumerate(job["codes"]):
                coupon = item["relationships"]["coupon"]["data"]["id"]
                unique = item["attributes"]["unique_code"]
                if unique in self.reject_codes:
                    job["errors"].append((n, f"The unique code {unique} is invalid."))
                elif unique in self.coupon_codes[coupon]:
                    job["errors"].append((n, f"A coupon code with unique code {unique} already exists for coupon {coupon}."))
                else:
                    self.coupon_codes[coupon][unique] = "UNASSIGNED"
                    job["created"].append(f"{coupon}-{unique}")

    def imported_profiles(self) -> list[dict[str, Any]]:
        return [profile for job in self.jobs.values() for profile in job["profiles"]]

    # --- routes --------------------------------------------------------------------------------

    def _wrap(self, route: str, handler: Any) -> Any:
        def side_effect(request: httpx.Request, **kwargs: Any) -> httpx.Response:
            self.requests.append(request)
            if self._scripts[route]:
                scripted = self._scripts[route].popleft()
                if isinstance(scripted, Exception):
                    raise scripted
                return scripted
            if not request.headers.get("authorization", "").startswith("Klaviyo-API-Key "):
                return httpx.Response(401, json=fixture("unauthorized.json"), headers=JSON_API)
            answer: httpx.Response = handler(request, **kwargs)
            if self._lost[route]:
                lost = self._lost[route].popleft()
                if isinstance(lost, Exception):
                    raise lost
                return lost
            return answer

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
        self.coupon_jobs[job_id] = {"codes": codes, "status": "queued", "created": [], "errors": []}
        document = fixture("coupon_code_bulk_create_job.json")
        document["data"]["id"] = job_id
        document["data"]["attributes"]["total_count"] = len(codes)
        return httpx.Response(202, json=document, headers=JSON_API)

    def _coupon_job(self, request: httpx.Request, job_id: str) -> httpx.Response:
        if job_id not in self.coupon_jobs:
            return httpx.Response(404, json=fixture("not_found.json"), headers=JSON_API)
        if not self.hold_coupon_jobs:
            self.run_coupon_jobs()
        job = self.coupon_jobs[job_id]
        document = fixture("coupon_code_bulk_create_job.json")
        data = document["data"]
        data["id"] = job_id
        data["links"]["self"] = f"{self.BASE_URL}/api/coupon-code-bulk-create-jobs/{job_id}"
        done = job["status"] == "complete"
        data["attributes"].update(
            status=job["status"] if done else "processing",
            total_count=len(job["codes"]),
            completed_count=len(job["created"]),
            failed_count=len(job["errors"]),
            completed_at="2026-07-20T10:01:00+00:00" if done else None,
            errors=[
                {"id": f"e{n}", "code": "invalid", "title": "Invalid input.", "detail": detail,
                 "source": {"pointer": f"/data/attributes/coupon-codes/data/{n}"}}
                for n, detail in job["errors"]
            ],
        )  # fmt: skip
        if "coupon-codes" in request.url.params.get("include", ""):
            data["relationships"] = {"coupon-codes": {"data": [{"type": "coupon-code", "id": i} for i in job["created"]]}}
            document["included"] = [self._code_resource(i) for i in job["created"]]
        return httpx.Response(200, json=document, headers=JSON_API)

    def _code_resource(self, code_id: str) -> dict[str, Any]:
        coupon, _, unique = code_id.partition("-")
        return {
            "type": "coupon-code",
            "id": code_id,
            "attributes": {"unique_code": unique, "expires_at": None, "status": self.coupon_codes[coupon].get(unique)},
            "links": {"self": f"{self.BASE_URL}/api/coupon-codes/{code_id}"},
        }

    def _coupon_code(self, request: httpx.Request, code_id: str) -> httpx.Response:
        coupon, _, unique = code_id.partition("-")
        if unique not in self.coupon_codes.get(coupon, {}):
            return httpx.Response(404, json=fixture("not_found.json"), headers=JSON_API)
        return httpx.Response(200, json={"data": self._code_resource(code_id)}, headers=JSON_API)

    def _coupon_codes_page(self, request: httpx.Request, coupon_id: str) -> httpx.Response:
        wanted = request.url.params.get("filter", "")
        codes = sorted(u for u, st in self.coupon_codes.get(coupon_id, {}).items() if f"'{st}'" in wanted or not wanted)
        size = int(request.url.params.get("page[size]", "100"))
        start = int(request.url.params.get("page[cursor]", "0"))
        url = f"{self.BASE_URL}/api/coupons/{coupon_id}/coupon-codes"
        links = {"self": url}
        if start + size < len(codes):
            links["next"] = str(request.url.copy_merge_params({"page[cursor]": str(start + size)}))
        page = [self._code_resource(f"{coupon_id}-{u}") for u in codes[start : start + size]]
        return httpx.Response(200, json={"data": page, "links": links}, headers=JSON_API)
