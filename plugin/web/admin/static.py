"""The vendored files (htmx, our stylesheet and scripts): served with a year's caching, since
their addresses carry a content hash (render.static_url); without one, an hour."""

from __future__ import annotations

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

YEAR = 365 * 24 * 3600


class CachedStatic(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            versioned = b"v=" in scope.get("query_string", b"")
            response.headers["Cache-Control"] = f"public, max-age={YEAR}, immutable" if versioned else "public, max-age=3600"
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response
