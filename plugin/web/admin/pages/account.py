"""Standalone sign-in, sign-out and the owner set-up (a one-time link printed by
`couponry admin setup-token`, or the signed link a WooCommerce install returns to).

Sign-in and set-up come before any session, so their forms carry a double-submit CSRF token:
a random value in a SameSite=Strict cookie that the form must echo (no login CSRF)."""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from plugin.errors import PluginError
from plugin.settings import Settings
from plugin.shops import users
from plugin.store.models import AdminUser
from plugin.store.units import in_thread, reading, transaction
from plugin.web.admin.context import (
    AdminContext,
    clear_session_cookie,
    session_cookie_value,
    set_session_cookie,
)
from plugin.web.admin.forms import CSRF_FIELD, Form, read_form
from plugin.web.admin.render import render_public
from plugin.web.admin.routing import PREFIX, page, safe_next
from plugin.web.admin.signinlimit import SignInLimits, TooManySignIns
from plugin.web.clientaddr import address_key

PRE_CSRF_COOKIE = "couponry_form"


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _with_form_cookie(request: Request, response: Response, token: str) -> Response:
    response.set_cookie(
        PRE_CSRF_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        secure=_settings(request).public_url.startswith("https://"),
        samesite="strict",
        path=PREFIX,
    )
    return response


def _show(request: Request, template: str, form: Form, *, status_code: int = 200, **values: Any) -> Response:
    token = request.cookies.get(PRE_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = render_public(request, template, form=form, csrf_token=token, status_code=status_code, **values)
    return _with_form_cookie(request, response, token)


def _pre_csrf_ok(request: Request, form: Form) -> bool:
    cookie, sent = request.cookies.get(PRE_CSRF_COOKIE, ""), form.get(CSRF_FIELD)
    return bool(cookie) and hmac.compare_digest(cookie.encode(), sent.encode())


def _signed_in(request: Request, user: AdminUser, target: str) -> Response:
    assert user.id is not None
    response = RedirectResponse(safe_next(target), status_code=303)
    set_session_cookie(response, _settings(request), session_cookie_value(_settings(request), user.id, user.session_epoch))
    return response


async def sign_in(request: Request) -> Response:
    if request.method == "GET":
        form = Form(values={"next": request.query_params.get("next", ""), "shop": request.query_params.get("shop", "")})
        return _show(request, "admin/sign_in.html", form)
    form = await read_form(request)
    if not _pre_csrf_ok(request, form):
        form.errors["_form"] = "this form is out of date: send it again"
        return _show(request, "admin/sign_in.html", form, status_code=403)
    engine, limits = request.app.state.engine, request.app.state.sign_in_limits
    assert isinstance(limits, SignInLimits)
    email, shop = form.get("email"), form.get("shop")
    address = address_key(request.client.host if request.client else "unknown")

    def work() -> AdminUser:
        with transaction(engine) as session:
            attempt = limits.attempt(users.sign_in_shops(session, email=email, shop_domain=shop), email, address)
            limits.check(attempt)  # before the password: a lock holds even for the right one
            try:
                user = users.authenticate(session, email=email, password=form.get("password"), shop_domain=shop)
            except PluginError as exc:
                if exc.reason == "bad_credentials":
                    limits.failed(attempt)
                raise
            session.expunge(user)
            return user

    try:
        user = await in_thread(engine, work)
    except TooManySignIns as exc:
        form.values.pop("password", None)
        locked = _show(request, "admin/sign_in.html", form.fail(exc), status_code=429)
        locked.headers["Retry-After"] = str(exc.retry_after)
        return locked
    except PluginError as exc:
        form.values.pop("password", None)
        return _show(request, "admin/sign_in.html", form.fail(exc), status_code=422)
    return _signed_in(request, user, form.get("next"))


async def setup(request: Request) -> Response:
    settings, engine = _settings(request), request.app.state.engine
    token = request.query_params.get("token", "")

    def check() -> users.SetupGrant:
        with reading(engine) as session:
            return users.read_setup_token(session, settings, token)

    try:
        grant = await in_thread(engine, check)
    except PluginError as exc:
        return _show(request, "admin/setup.html", Form(), status_code=400, link_error=exc.message, token="")
    if request.method == "GET":
        return _show(request, "admin/setup.html", Form(), token=token, grant=grant)
    form = await read_form(request)
    if not _pre_csrf_ok(request, form):
        form.errors["_form"] = "this form is out of date: send it again"
        return _show(request, "admin/setup.html", form, status_code=403, token=token, grant=grant)

    def work() -> AdminUser:
        with transaction(engine) as session:
            user = users.create_owner(
                session, settings, token, email=form.get("email"), password=form.get("password"), confirm=form.get("confirm")
            )
            session.expunge(user)
            return user

    try:
        user = await in_thread(engine, work)
    except PluginError as exc:
        for secret in ("password", "confirm"):
            form.values.pop(secret, None)
        if exc.reason == "bad_link":
            return _show(request, "admin/setup.html", form, status_code=400, link_error=exc.message, token="")
        return _show(request, "admin/setup.html", form.fail(exc), status_code=422, token=token, grant=grant)
    return _signed_in(request, user, f"{PREFIX}/")


async def sign_out(request: Request, ctx: AdminContext, form: Form) -> Response:
    settings, engine = _settings(request), request.app.state.engine
    user_id = ctx.user_id
    if user_id is None:
        return RedirectResponse(ctx.url(f"{PREFIX}/"), status_code=303)  # the platform signs its users out

    def work() -> None:
        with transaction(engine) as session:
            users.sign_out(session, user_id=user_id, shop_id=ctx.shop_id)

    await in_thread(engine, work)
    response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
    clear_session_cookie(response, settings)
    return response


routes = [
    Route("/sign-in", sign_in, methods=["GET", "POST"], name="admin_sign_in"),
    Route("/setup", setup, methods=["GET", "POST"], name="admin_setup"),
    page("/sign-out", post=sign_out, name="admin_sign_out"),
]
