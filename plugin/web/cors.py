"""CORS for `storefront` keys: the shop's own pages call `POST /api/v1/validate` from the browser.

The hot routes skip Starlette's middleware (plugin.web.hotpaths), so CORS is answered by the
routes themselves, the same way on the hot and the routed path:

- The preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) carries no API
  key (browsers never send credentials or the requested headers on it), so it cannot tell
  which shop is asking. It is answered the same for every origin of the right form: it allows
  `POST` with the `Authorization` and `Content-Type` headers (named: a `*` in
  `Access-Control-Allow-Headers` never covers `Authorization`), for `PREFLIGHT_MAX_AGE`
  seconds, and echoes the origin with `Vary: Origin`. That grants nothing: it only lets the
  browser send the real request.
- The real `POST` carries the key, hence the shop: a storefront-key request with an `Origin`
  the shop allows is answered with `Access-Control-Allow-Origin: <origin>` and `Vary: Origin`
  (on refusals too, so the page can read their reason); any other `Origin` is refused 403
  `origin_not_allowed`, before any work and without the CORS headers, so the browser hides
  even that answer from the page. No `Access-Control-Allow-Credentials`: the key is a bearer
  header, never a cookie.

A request without `Origin` (a server, curl) is not a CORS request and is answered as before;
other keys' answers never carry CORS headers (they are not meant for browsers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from plugin.shops.shops import normalise_origin
from plugin.web.problems import problem

PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse the preflight's answer
ALLOWED_HEADERS = "Authorization, Content-Type"


def preflight(methods: str) -> Callable[[Request], Awaitable[Response]]:
    """The `OPTIONS` endpoint of a route open to storefront keys, taking `methods`."""

    async def answer(request: Request) -> Response:
        headers = {"Allow": f"{methods}, OPTIONS"}
        origin = request.headers.get("origin")
        if origin is not None and normalise_origin(origin) == origin and "access-control-request-method" in request.headers:
            headers.update(
                {
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": methods,
                    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                    "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
                    "Vary": "Origin",
                }
            )
        return Response(status_code=204, headers=headers)

    return answer


def refused(origin: str) -> Response:
    return problem(
        403,
        "origin_not_allowed",
        f"This shop's storefront keys can't be used from {origin[:200]}; add it to the shop's allowed origins.",
        headers={"Vary": "Origin"},
    )


def allow(response: Response, origin: str) -> Response:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers.add_vary_header("Origin")
    return response
