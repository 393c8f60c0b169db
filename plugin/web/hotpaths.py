"""An ASGI front for the calls that are most of the traffic and whose latency people feel:
the checkout calls (`POST /api/v1/validate`, `/redemptions`, `/reservations`), the pull
endpoint email platforms call once per recipient at send time, and the platforms' order
webhooks (`POST /webhooks/{platform}`, answered within the platform's timeout).

They go straight to their endpoint, skipping Starlette's middleware stack and its two levels of
route matching (a third of the framework's cost per request). They answer exactly as through
the router: the same endpoint function, matched by the same `Route` (path converters
included), the same problem+json for the app's errors; anything unexpected is logged and
answered 500. Every other request (and the lifespan) goes through Starlette unchanged.

Body limits (plugin/web/limits.py) are applied here, before either path, so hot and routed
requests are held to the same ones.

Before either, the client address is resolved once for every request: behind a proxy the
operator trusts (`COUPONRY_TRUSTED_PROXIES`) it is the address the proxy forwarded; otherwise
the connection's own, whatever `X-Forwarded-For` says (`plugin.web.clientaddr`).

And every request, hot or routed, is measured here (plugin.metrics: count and latency per route
template, method and status) and carries a request id: the caller's `X-Request-ID` (a proxy's)
when it is a sane token, else a new one; every log line written meanwhile names it (plugin.logs)
and the answer echoes it.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress
from time import perf_counter
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Mount, Route
from starlette.types import Message, Receive, Scope, Send

from plugin.errors import PluginError
from plugin.logs import REQUEST_ID, SHOP
from plugin.metrics import observe_request
from plugin.web.clientaddr import TrustedProxies
from plugin.web.limits import BodyLimits, BodyTooLarge, Guard, declared_length, refuse
from plugin.web.problems import http_error_handler, plugin_error_handler, problem, validation_problem

log = logging.getLogger(__name__)
Endpoint = Callable[[Request], Awaitable[Response]]


class App(Starlette):
    """The Starlette app, answering its hot routes (`add_hot_routes`) directly."""

    def __init__(self, *args: Any, trusted_proxies: TrustedProxies | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trusted_proxies = trusted_proxies or TrustedProxies(())
        self.hot_paths: dict[tuple[str, str], Endpoint] = {}  # (method, path) without parameters
        # (method, "/prefix/") -> (endpoint, name) for paths "/prefix/{name}": a last segment
        # taken whole, as the str convertor takes it, found without a regular expression
        self.hot_tails: dict[tuple[str, str], tuple[Endpoint, str]] = {}
        self.hot_templates: list[Route] = []  # other paths with parameters, matched in order
        self.body_limits = BodyLimits()
        self.hot_route_paths: dict[Endpoint, str] = {}  # endpoint -> its path template (the metrics' route label)

    def add_hot_routes(self, routes: list[Route]) -> None:
        for route in routes:
            methods = route.methods or ()
            prefix, _, last = route.path.rpartition("/")
            name = last[1:-1]
            self.hot_route_paths[route.endpoint] = route.path
            if not route.param_convertors:
                self.hot_paths.update({(method, route.path): route.endpoint for method in methods})
            elif list(route.param_convertors) == [name] and last == f"{{{name}}}" and "{" not in prefix:
                self.hot_tails.update({(method, prefix + "/"): (route.endpoint, name) for method in methods})
            else:
                self.hot_templates.append(route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.trusted_proxies and scope["type"] in ("http", "websocket"):
            self.trusted_proxies.resolve(scope)
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # what `request.app` reads
        started = perf_counter()
        root = scope.get("root_path", "")
        request_id = _request_id(scope["headers"])
        scope[REQUEST_ID_KEY] = (b"x-request-id", request_id.encode("ascii"))
        # Set, never reset: each request runs in a task of its own (the server's), whose
        # context ends with it; the next request on this task, if any, sets both again.
        REQUEST_ID.set(request_id)
        SHOP.set(None)
        try:
            await self._limited(scope, receive, send)
        finally:
            method = scope["method"]
            status = scope.get(STATUS_KEY, 500)  # 500: what the server answers when the app sent nothing
            observe_request(_route_label(scope, root), method if method in METHODS else "OTHER", status, perf_counter() - started)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.body_limits.limit(scope)
        declared = declared_length(scope)
        if declared is not None:  # the server delivers no more than it declares
            if declared > limit:
                scope[ROUTE_KEY] = REFUSED_ROUTE
                await self._refused(scope, declared, limit)
                await refuse(_answering(scope, send), limit)
            else:
                await self._dispatch(scope, receive, send)
            return
        guard = Guard(receive, send, limit)  # chunked: counted while it streams (`_dispatch` records the answer)
        with suppress(BodyTooLarge):  # answered below
            await self._dispatch(scope, guard.receive, guard.send)
        if guard.exceeded:
            scope[STATUS_KEY] = 413
            await guard.refuse()
            await self._refused(scope, guard.seen, limit)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._hot(scope)
        if endpoint is None:
            await super().__call__(scope, receive, _answering(scope, send))
            return
        scope[ROUTE_KEY] = self.hot_route_paths[endpoint]
        request = Request(scope, receive)
        response = await _answer(endpoint, request)
        # the answer is at hand: its status and the request id, without wrapping `send`
        response.raw_headers.append(scope[REQUEST_ID_KEY])
        scope[STATUS_KEY] = response.status_code
        await response(scope, receive, send)

    async def _refused(self, scope: Scope, size: int, limit: int) -> None:
        """Tell whoever keeps a record of refusals on this path (e.g. the webhook route)."""
        scope["app"] = self  # a mounted app may have put itself there
        for prefix, hear in self.body_limits.on_refused.items():
            if scope["path"].startswith(prefix):
                try:
                    await hear(scope, size, limit)
                except Exception:  # the refusal is answered whatever happens to its record
                    log.exception("recording a refused request to %s failed", scope["path"])

    def _hot(self, scope: Scope) -> Endpoint | None:
        endpoint = self.hot_paths.get((scope["method"], scope["path"]))
        if endpoint is not None:
            return endpoint
        head, _, tail = scope["path"].rpartition("/")
        tailed = self.hot_tails.get((scope["method"], head + "/")) if tail else None
        if tailed is not None:
            scope.update(endpoint=tailed[0], path_params={tailed[1]: tail})  # as the router would set them
            return tailed[0]
        for route in self.hot_templates:
            match, child = route.matches(scope)
            if match is Match.FULL:
                scope.update(child)  # path_params, as the router would set them
                found: Endpoint = route.endpoint
                return found
        return None


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: one label, "OTHER"
ROUTE_KEY = "couponry.route"  # a hot route's template, set before its endpoint runs
REFUSED_ROUTE = "<body too large>"  # refused before any route was matched
UNMATCHED_ROUTE = "<unmatched>"  # 404: no template, and a raw path would be a label per stranger's guess
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


STATUS_KEY = "couponry.status"  # the answer's status, for the metrics
REQUEST_ID_KEY = "couponry.request_id"  # the X-Request-ID header every answer carries
# New ids: this process's random prefix and a count (unique without a random read per request)
_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's `X-Request-ID` when it is a sane token (a proxy's, propagated), else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
            break
    return f"{_ID_PREFIX}{next(_ids):08x}"


def _answering(scope: Scope, send: Send) -> Send:
    """`send`, noting the answer's status and adding the request id to its headers."""

    async def answer(message: Message) -> None:
        if message["type"] == "http.response.start":
            scope[STATUS_KEY] = message["status"]
            message["headers"] = [*message.get("headers", ()), scope[REQUEST_ID_KEY]]
        await send(message)

    return answer


def _route_label(scope: Scope, root: str) -> str:
    """The matched route's path template (`/api/v1/campaigns/{campaign_id:int}`), never the raw path."""
    label = scope.get(ROUTE_KEY)
    if label is not None:
        return str(label)
    route = scope.get("route")
    if route is None:
        return UNMATCHED_ROUTE
    prefix = str(scope.get("root_path", ""))[len(root) :]  # the mounts' paths the router went through
    if isinstance(route, Mount):  # an app mounted whole (static files): its root_path is the mount
        return prefix + "/{path}"
    return prefix + str(getattr(route, "path", ""))


async def _answer(endpoint: Endpoint, request: Request) -> Response:
    try:
        return await endpoint(request)
    except BodyTooLarge:
        raise  # answered 413 by `App.__call__`
    except PluginError as exc:
        return await plugin_error_handler(request, exc)
    except ValidationError as exc:
        return validation_problem(exc)
    except HTTPException as exc:
        return await http_error_handler(request, exc)
    except ClientDisconnect:  # the client left before its body arrived: no one to answer, nothing to log
        return Response(status_code=499)  # nginx's "client closed request", for the metrics
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return problem(500, "internal_error", "An unexpected error occurred; it has been logged.")
