"""A local fake of Klaviyo's bulk profile import endpoint that enforces its documented limits.

    POST /api/profile-bulk-import-jobs       202 + job; Klaviyo's limits for this endpoint:
        burst 10/s and steady 150/m, fixed windows (counted from the first request);
        over either: 429 with Retry-After (seconds) and no RateLimit-* headers;
        at most 10,000 profiles and 5 MB per request (400 / 413 beyond)
    GET  /api/profile-bulk-import-jobs/{id}  the job, complete
    GET  /_stats                             requests, accepted, throttled, profiles, rejected

Sources: the spec's x-klaviyo-ratelimit and description for bulk_import_profiles
(tests/contracts/klaviyo) and Klaviyo's rate-limit guide (research/messaging.md §1).

    .venv/bin/python bench/fake_klaviyo.py [--port 0]    # prints "PORT <n>" once listening
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import time
import uuid
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

LIMITS = ((10, 1.0), (150, 60.0))  # (requests, window seconds): burst and steady
MAX_PROFILES = 10_000
MAX_BYTES = 5_000_000
JSON_API = "application/vnd.api+json"


class FixedWindows:
    """Klaviyo's fixed-window limiter; windows start at the first request."""

    def __init__(self, limits: tuple[tuple[int, float], ...]) -> None:
        self.limits = limits
        self.start: float | None = None
        self.counts: dict[tuple[int, int], int] = {}

    def admit(self, now: float) -> float | None:
        """None if the request is admitted (and counted), else the seconds until it could be."""
        if self.start is None:
            self.start = now
        elapsed = now - self.start
        wait = 0.0
        for n, (limit, span) in enumerate(self.limits):
            window = int(elapsed // span)
            if self.counts.get((n, window), 0) >= limit:
                wait = max(wait, (window + 1) * span - elapsed)
        if wait > 0:
            return wait
        for n, (_, span) in enumerate(self.limits):
            key = (n, int(elapsed // span))
            self.counts[key] = self.counts.get(key, 0) + 1
        return None

    def remaining(self, now: float) -> tuple[int, int, float]:
        limit, span = self.limits[-1]
        elapsed = now - (self.start or now)
        window = int(elapsed // span)
        return limit, limit - self.counts.get((len(self.limits) - 1, window), 0), (window + 1) * span - elapsed


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"errors": [{"id": str(uuid.uuid4()), "status": status, "code": code, "title": detail, "detail": detail}]}
    return JSONResponse(body, status_code=status, headers=headers, media_type=JSON_API)


def create_app() -> Starlette:
    windows = FixedWindows(LIMITS)
    stats: dict[str, Any] = {"requests": 0, "accepted": 0, "throttled": 0, "rejected": 0, "profiles": 0, "max_bytes": 0}
    jobs: dict[str, int] = {}

    async def bulk_import(request: Request) -> Response:
        now = time.monotonic()  # counted on arrival, before the body is read
        stats["requests"] += 1
        if not request.headers.get("authorization", "").startswith("Klaviyo-API-Key ") or not request.headers.get("revision"):
            stats["rejected"] += 1
            return error(401, "not_authenticated", "Missing private key or revision header.")
        wait = windows.admit(now)
        if wait is not None:
            stats["throttled"] += 1
            seconds = max(1, math.ceil(wait))
            return error(
                429,
                "throttled",
                f"Request was throttled. Expected available in {seconds} second(s).",
                {"Retry-After": str(seconds)},
            )
        body = await request.body()
        stats["max_bytes"] = max(stats["max_bytes"], len(body))
        if len(body) > MAX_BYTES:
            stats["rejected"] += 1
            return error(413, "too_large", f"Payload of {len(body)} bytes is over 5MB.")
        profiles = json.loads(body)["data"]["attributes"]["profiles"]["data"]
        if not 1 <= len(profiles) <= MAX_PROFILES:
            stats["rejected"] += 1
            return error(400, "invalid", f"{len(profiles)} profiles: a job takes 1 to 10,000.")
        stats["accepted"] += 1
        stats["profiles"] += len(profiles)
        job_id = uuid.uuid4().hex.upper()[:26]
        jobs[job_id] = len(profiles)
        limit, remaining, reset = windows.remaining(now)
        headers = {"RateLimit-Limit": str(limit), "RateLimit-Remaining": str(remaining), "RateLimit-Reset": str(math.ceil(reset))}
        return JSONResponse(_job(request, job_id, len(profiles), "queued"), status_code=202, headers=headers, media_type=JSON_API)

    async def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if job_id not in jobs:
            return error(404, "not_found", "No such job.")
        return JSONResponse(_job(request, job_id, jobs[job_id], "complete"), media_type=JSON_API)

    async def get_stats(request: Request) -> Response:
        return JSONResponse(stats)

    return Starlette(
        routes=[
            Route("/api/profile-bulk-import-jobs", bulk_import, methods=["POST"]),
            Route("/api/profile-bulk-import-jobs/{job_id}", job, methods=["GET"]),
            Route("/_stats", get_stats, methods=["GET"]),
        ]
    )


def _job(request: Request, job_id: str, total: int, status: str) -> dict[str, Any]:
    url = f"{request.base_url}api/profile-bulk-import-jobs/{job_id}"
    done = status == "complete"
    attributes = {
        "status": status,
        "created_at": "2026-07-20T10:00:00+00:00",
        "total_count": total,
        "completed_count": total if done else 0,
        "failed_count": 0,
        "completed_at": "2026-07-20T10:00:01+00:00" if done else None,
        "expires_at": None,
        "started_at": None,
    }
    return {"data": {"type": "profile-bulk-import-job", "id": job_id, "attributes": attributes, "links": {"self": url}}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning", access_log=False))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
