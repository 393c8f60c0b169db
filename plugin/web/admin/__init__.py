"""The merchant admin (HTML, server-rendered, htmx where partial updates pay), on three surfaces:
embedded in Shopify (App Bridge ID tokens), embedded in BigCommerce (a signed page token started
by the `load` callback) and standalone (users with roles, signed-cookie sessions). Entry layer:
pages read and act through services only (no SQL here).

Writing a page (plugin/web/admin/pages/<name>.py, then add <name> to PAGES below):

    from plugin.web.admin import AdminContext, Form, act, page, render

    async def show(request, ctx: AdminContext) -> Response:          # GET: ctx is authenticated
        return render(request, ctx, "admin/thing.html", things=..., nav="things")

    async def change(request, ctx: AdminContext, form: Form) -> Response:   # POST: CSRF checked
        try:
            await act(request, ctx, lambda s: service.change(s, ...), action="thing.changed", subject="thing:1")
        except PluginError as exc:
            return render(request, ctx, "admin/thing.html", form=form.fail(exc), status_code=422)
        return RedirectResponse(ctx.url("/admin/things"), status_code=303)

    routes = [page("/things", show, post=change, owner_only=False)]

- `AdminContext` (context.py): shop_id, actor (for the audit trail), role owner|staff, surface
  shopify|bigcommerce|standalone, csrf_token, and `ctx.url(path)` keeping what an embedded page
  must carry. `admin_context(request)` makes it or raises `Refused`; `page()` turns that into a
  redirect to sign-in, Shopify's token bounce page, or a 401.
- `render(request, ctx, template, **values)` (render.py): templates extend `admin/base.html`
  (navigation, App Bridge on Shopify, our own stylesheet elsewhere; `{% block content %}`) and
  every answer carries the surface's CSP frame-ancestors.
- Forms (forms.py): `{{ forms.csrf(ctx) }}` and `{{ forms.field(form, name, label) }}` from
  `admin/_forms.html`; `Form.fail(exc)` puts a service's refusal next to the field it names
  (`details["field"]`); `act()` runs a service call with its AuditEvent in one transaction.
"""

from __future__ import annotations

from importlib import import_module

from starlette.routing import BaseRoute, Mount, Route

from plugin.web.admin.context import AdminContext, Refused, admin_context
from plugin.web.admin.forms import Form, act
from plugin.web.admin.render import STATIC, render
from plugin.web.admin.routing import PREFIX, page
from plugin.web.admin.static import CachedStatic

__all__ = ["PAGES", "AdminContext", "Form", "Refused", "act", "admin_context", "page", "render", "routes"]

PAGES = (
    "account",
    "home",
    "campaigns",
    "codes",
    "syncs",
    "health",
    "distribution",
    "events",
    "settings",
    "sandbox",
    "results",
    "users",
)  # modules of plugin.web.admin.pages


def routes() -> list[BaseRoute]:
    """Everything under /admin: the vendored static files, then each page module's routes."""
    inner: list[BaseRoute] = [Mount("/static", app=CachedStatic(directory=str(STATIC)), name="admin_static")]
    for name in PAGES:
        inner.extend(import_module(f"plugin.web.admin.pages.{name}").routes)
    home = next(r for r in inner if isinstance(r, Route) and r.path == "/")
    # /admin itself (manifest.json's application URL, where installs land) without a redirect to /admin/
    return [Route(PREFIX, home.endpoint, methods=["GET"]), Mount(PREFIX, routes=inner)]
