"""The app factory: routes, middleware and a lifespan holding the engine and one HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from plugin import __version__
from plugin.db import make_engine, ping, run
from plugin.settings import Settings


async def healthz(request: Request) -> JSONResponse:
    engine: Engine = request.app.state.engine
    ok = await run(engine, lambda: ping(engine))
    body = {"status": "ok" if ok else "degraded", "version": __version__, "database": {"ok": ok, "dialect": engine.dialect.name}}
    return JSONResponse(body, status_code=200 if ok else 503)


def create_app(settings: Settings, *, engine: Engine | None = None) -> Starlette:
    """Build the ASGI app. Tests pass their own engine; `serve` lets the app make one."""
    engine = engine or make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as client:
            app.state.http = client
            yield

    routes = [Route("/healthz", healthz, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    return app
