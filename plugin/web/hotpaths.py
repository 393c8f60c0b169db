"""An ASGI front for the checkout calls: most of the traffic, and the latency shoppers feel.

`POST /api/v1/validate`, `/redemptions` and `/reservations` go straight to their endpoint,
skipping Starlette's middleware stack and its two levels of route matching (a third of the
framework's cost per request). They answer exactly as through the router: the same endpoint
function, the same problem+json for the app's errors; anything unexpected is logged and
answered 500. Every other request (and the lifespan) goes through Starlette unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from plugin.errors import PluginError
from plugin.web.problems import http_error_handler, plugin_error_handler, problem, validation_problem

log = logging.getLogger(__name__)
Endpoint = Callable[[Request], Awaitable[Response]]


class App(Starlette):
    """The Starlette app, answering the `(method, path)` pairs of `hot_paths` directly."""

    hot_paths: dict[tuple[str, str], Endpoint]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot_paths = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.hot_paths.get((scope.get("method", ""), scope["path"])) if scope["type"] == "http" else None
        if endpoint is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # what `request.app` reads
        request = Request(scope, receive)
        response = await _answer(endpoint, request)
        await response(scope, receive, send)


async def _answer(endpoint: Endpoint, request: Request) -> Response:
    try:
        return await endpoint(request)
    except PluginError as exc:
        return await plugin_error_handler(request, exc)
    except ValidationError as exc:
        return validation_problem(exc)
    except HTTPException as exc:
        return await http_error_handler(request, exc)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return problem(500, "internal_error", "An unexpected error occurred; it has been logged.")
