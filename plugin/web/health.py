"""`/healthz` and `/readyz`, for load balancers and orchestrators.

- `/healthz` (liveness): the process runs and its event loop answers. It touches nothing else,
  so a database outage never gets every web process restarted at once.
- `/readyz` (readiness): the database answers and is migrated to this version, and Redis answers
  when `REDIS_URL` is set. 503 names each check that failed: take the process out of rotation
  until it passes again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse

from plugin import __version__
from plugin.settings import Settings
from plugin.store.readiness import database_problem, redis_problem
from plugin.store.units import in_thread


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "version": __version__})


async def readyz(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    engine: Engine = request.app.state.engine
    checks: dict[str, dict[str, Any]] = {}
    problem = await in_thread(engine, lambda: database_problem(engine))
    checks["database"] = {"ok": problem is None, "dialect": engine.dialect.name} | ({"problem": problem} if problem else {})
    if settings.redis_url:
        problem = await redis_problem(settings.redis_url)
        checks["redis"] = {"ok": problem is None} | ({"problem": problem} if problem else {})
    failed = [name for name, check in checks.items() if not check["ok"]]
    body = {"status": "not ready" if failed else "ready", "failed": failed, "checks": checks, "version": __version__}
    return JSONResponse(body, status_code=503 if failed else 200)
