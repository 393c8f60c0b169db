"""Rendering admin pages: Jinja2 templates under plugin/web/templates/admin, and the headers
every HTML answer carries (CSP frame-ancestors per surface, no caching, no sniffing)."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from plugin.rules.refusals import format_money
from plugin.web.admin.context import AdminContext, Surface, frame_ancestors

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATIC = Path(__file__).resolve().parent.parent / "static"
STATIC_PREFIX = "/admin/static"
APP_BRIDGE = "https://cdn.shopify.com/shopifycloud/app-bridge.js"

templates = Jinja2Templates(directory=str(TEMPLATES))


@cache
def static_url(path: str) -> str:
    """A vendored file's address with its content hash, so it can be cached for a year."""
    digest = hashlib.sha256((STATIC / path).read_bytes()).hexdigest()[:12]
    return f"{STATIC_PREFIX}/{path}?v={digest}"


templates.env.globals.update(static_url=static_url, app_bridge_src=APP_BRIDGE)
templates.env.filters["money"] = format_money  # minor units in a currency: {{ 1250|money('GBP') }}


def security_headers(surface: Surface, shop_domain: str = "") -> dict[str, str]:
    """Shopify pages load App Bridge from Shopify's CDN (it must stay current; it cannot be
    vendored) and only Shopify's admin may frame them; elsewhere nothing leaves our origin."""
    ancestors = frame_ancestors(surface, shop_domain) if shop_domain or surface == "standalone" else "'none'"
    if surface == "shopify":
        policy = f"frame-ancestors {ancestors}; object-src 'none'; base-uri 'self'"
    else:
        policy = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"form-action 'self'; object-src 'none'; base-uri 'none'; frame-ancestors {ancestors}"
        )
    return {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }


def render(request: Request, ctx: AdminContext, template: str, *, status_code: int = 200, **values: Any) -> HTMLResponse:
    """An admin page for this caller: the template gets `ctx` and `values`; headers for ctx's surface."""
    response = templates.TemplateResponse(
        request, template, {"ctx": ctx, **values}, status_code=status_code, headers=security_headers(ctx.surface, ctx.shop_domain)
    )
    return response


def render_public(
    request: Request,
    template: str,
    *,
    surface: Surface = "standalone",
    shop_domain: str = "",
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    """A page shown before anyone is signed in (sign-in, setup, the Shopify bounce)."""
    return templates.TemplateResponse(
        request, template, {"ctx": None, **values}, status_code=status_code, headers=security_headers(surface, shop_domain)
    )
