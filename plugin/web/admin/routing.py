"""How a page module declares its routes: `page(path, endpoint)` wraps an endpoint taking
(request, ctx) so that it runs only for an authenticated caller, every POST passes the CSRF
check, and owner-only pages refuse staff."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from plugin.web.admin.context import AdminContext, Refused, admin_context
from plugin.web.admin.forms import Form, csrf_ok, read_form
from plugin.web.admin.render import render_public
from plugin.web.problems import problem

Endpoint = Callable[[Request, AdminContext], Awaitable[Response]]
FormEndpoint = Callable[[Request, AdminContext, Form], Awaitable[Response]]

PREFIX = "/admin"


def _is_partial(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def refusal(request: Request, refused: Refused) -> Response:
    """What an unauthenticated request gets: a standalone page load goes to sign in, a Shopify
    page load without a token gets the bounce page, everything else (htmx, POST, a bad token) a 401."""
    if refused.kind == "bounce" and request.method == "GET" and not _is_partial(request):
        shop = refused.shop if refused.shop and refused.shop.endswith(".myshopify.com") else ""
        api_key = request.app.state.settings.connector_config.get("shopify", {}).get("client_id", "")
        return render_public(request, "admin/bounce.html", surface="shopify", shop_domain=shop, api_key=api_key)
    if refused.kind == "sign_in" and request.method == "GET" and not _is_partial(request):
        after = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/sign-in?{urlencode({'next': after})}", status_code=303)
    answer = problem(401, "unauthenticated", refused.message)
    if refused.kind == "sign_in":
        answer.headers["HX-Redirect"] = f"{PREFIX}/sign-in"
    return answer


def safe_next(target: str) -> str:
    """Only a path inside the admin: never another site (an open redirect)."""
    if target.startswith(PREFIX) and "\\" not in target and "//" not in target:
        return target
    return f"{PREFIX}/"


def page(
    path: str,
    endpoint: Endpoint | None = None,
    *,
    post: FormEndpoint | None = None,
    owner_only: bool = False,
    name: str | None = None,
) -> Route:
    """A route under /admin: `endpoint` answers GET, `post` answers POST with the form already
    read and its CSRF token checked (403 otherwise)."""

    async def handle(request: Request) -> Response:
        try:
            ctx = await admin_context(request)
        except Refused as refused:
            return refusal(request, refused)
        if owner_only and not ctx.is_owner:
            return problem(403, "owner_only", "only the shop's owner may do this")
        if request.method == "POST":
            assert post is not None
            try:
                form = await read_form(request)
                if not csrf_ok(request, ctx.csrf_token, form):
                    return problem(403, "csrf_failed", "this form is out of date: reload the page and send it again")
                return await post(request, ctx, form)
            finally:
                await (await request.form()).close()  # uploaded files' temporary files
        assert endpoint is not None
        return await endpoint(request, ctx)

    methods: Sequence[str] = [m for m, f in (("GET", endpoint), ("POST", post)) if f is not None]
    return Route(path, handle, methods=list(methods), name=name)
