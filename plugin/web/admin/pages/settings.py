"""Settings: the connected platform, the installation's messaging providers (masked, with a
"test connection"), API keys (created and shown once, revoked), what shoppers are told when a
code is refused, and the storefront origins. Reads through plugin.overview.settings; changes
through plugin.shops services, each with its audit event; changes are the owner's only."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from plugin.distribution.providers import CheckResult, check_provider
from plugin.errors import NotFound, PluginError
from plugin.overview.settings import ShopSettings, shop_settings
from plugin.settings import Settings
from plugin.shops import apikeys, shops, timezones
from plugin.store.models import Shop
from plugin.store.units import in_thread, reading
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import Form, act
from plugin.web.admin.render import render
from plugin.web.admin.routing import PREFIX, page
from plugin.web.problems import problem

PATH = f"{PREFIX}/settings"
KEY_SCOPES = ("checkout", "storefront", "distribution", "admin")


async def _facts(request: Request, ctx: AdminContext) -> ShopSettings:
    engine, settings = request.app.state.engine, request.app.state.settings
    assert isinstance(settings, Settings)

    def read() -> ShopSettings:
        with reading(engine) as session:
            return shop_settings(session, settings, ctx.shop_id)

    return await in_thread(engine, read)


async def _page(request: Request, ctx: AdminContext, *, status_code: int = 200, **values: Any) -> Response:
    facts = await _facts(request, ctx)
    forms = {name: values.pop(name, None) or Form() for name in ("key_form", "refusal_form", "origins_form", "timezone_form")}
    return render(
        request,
        ctx,
        "admin/settings.html",
        s=facts,
        scopes=KEY_SCOPES,
        zones=timezones.zone_names(),
        nav="settings",
        status_code=status_code,
        **forms,
        **values,
    )


def _done(ctx: AdminContext, anchor: str) -> Response:
    return RedirectResponse(ctx.url(PATH) + f"#{anchor}", status_code=303)


async def show(request: Request, ctx: AdminContext) -> Response:
    return await _page(request, ctx)


async def create_key(request: Request, ctx: AdminContext, form: Form) -> Response:
    data = await request.form()
    scopes = [str(v) for v in data.getlist("scopes")]
    name = form.get("name").strip()
    if not name:
        form.errors["name"] = "give the key a name, e.g. the system that will use it"
        return await _page(request, ctx, key_form=form, status_code=422)
    try:
        _key, secret = await act(
            request,
            ctx,
            lambda s: apikeys.create_key(s, shop_id=ctx.shop_id, name=name, scopes=scopes),
            action="apikey.created",
            subject=lambda made: f"apikey:{made[0].prefix}",
            details={"scopes": sorted(scopes), "name": name},
        )
    except PluginError as exc:
        return await _page(request, ctx, key_form=form.fail(exc), status_code=422)
    # shown once, in this answer only: never stored, never in a redirect's address
    return await _page(request, ctx, new_key=secret, new_key_name=name, status_code=201)


async def revoke_key(request: Request, ctx: AdminContext, form: Form) -> Response:
    prefix = str(request.path_params["prefix"])

    def revoke(session: Any) -> bool:
        if not apikeys.revoke_key(session, shop_id=ctx.shop_id, prefix=prefix):
            raise NotFound(f"no live key {prefix} in this shop")
        return True

    try:
        await act(request, ctx, revoke, action="apikey.revoked", subject=f"apikey:{prefix}")
    except NotFound as exc:
        return problem(404, "not_found", exc.message)
    return _done(ctx, "keys")


# the form and anchor of each shop setting, by its audit action's name
_FORMS = {"refusal_mode": "refusal", "allowed_origins": "origins", "timezone": "timezone"}


async def _save(
    request: Request, ctx: AdminContext, form: Form, change: Callable[[Session], object], *, what: str, details: dict[str, object]
) -> Response:
    """One shop setting (`what`: its action, form and anchor name) saved with its audit row, or the
    page again with the refusal beside its field."""
    try:
        await act(request, ctx, change, action=f"shop.{what}", subject=f"shop:{ctx.shop_id}", details=details)
    except PluginError as exc:
        return await _page(request, ctx, status_code=422, **{f"{_FORMS[what]}_form": form.fail(exc)})
    return _done(ctx, _FORMS[what])


async def set_refusals(request: Request, ctx: AdminContext, form: Form) -> Response:
    mode = form.get("mode")
    change = partial(shops.set_refusal_mode, shop_id=ctx.shop_id, mode=mode)
    return await _save(request, ctx, form, change, what="refusal_mode", details={"mode": mode})


async def set_origins(request: Request, ctx: AdminContext, form: Form) -> Response:
    origins = [line.strip() for line in form.get("origins").splitlines() if line.strip()]
    change = partial(shops.set_allowed_origins, shop_id=ctx.shop_id, origins=origins)
    return await _save(request, ctx, form, change, what="allowed_origins", details={"origins": origins})


async def set_timezone(request: Request, ctx: AdminContext, form: Form) -> Response:
    name = form.get("timezone")
    change = partial(timezones.set_timezone, shop_id=ctx.shop_id, name=name)
    return await _save(request, ctx, form, change, what="timezone", details={"timezone": name})


async def test_provider(request: Request, ctx: AdminContext, form: Form) -> Response:
    name = str(request.path_params["name"])
    engine, settings = request.app.state.engine, request.app.state.settings

    def load() -> Shop:
        with reading(engine) as session:
            shop = shops.get_shop(session, ctx.shop_id)
            session.expunge(shop)
            return shop

    shop = await in_thread(engine, load)
    try:
        result: CheckResult = await check_provider(settings, request.app.state.http, name, shop)
    except NotFound as exc:
        return problem(404, "not_found", exc.message)
    return await _page(request, ctx, checked=name, check=result)


routes = [
    page("/settings", show, name="admin_settings"),
    page("/settings/keys", post=create_key, owner_only=True),
    page("/settings/keys/{prefix}/revoke", post=revoke_key, owner_only=True),
    page("/settings/refusals", post=set_refusals, owner_only=True),
    page("/settings/origins", post=set_origins, owner_only=True),
    page("/settings/timezone", post=set_timezone, owner_only=True),
    page("/settings/providers/{name}/test", post=test_provider, owner_only=True),
]
