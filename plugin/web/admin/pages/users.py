"""People (standalone surface): who may sign in to the shop's admin, and, for owners, inviting
someone with a role (a signed one-time link for their email, shown once, handed on by the
owner), changing a role and removing a login. Each change is one audit row naming the owner.
Embedded surfaces have no users of ours: Shopify and BigCommerce decide who opens the app."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from plugin.errors import NotFound, PluginError
from plugin.settings import Settings
from plugin.shops import users
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import Form, act
from plugin.web.admin.pages.syncs import read
from plugin.web.admin.render import render
from plugin.web.admin.routing import PREFIX, page
from plugin.web.problems import problem

PATH = f"{PREFIX}/users"
ROLE_LABELS = (("staff", "Staff: runs campaigns, codes and syncs"), ("owner", "Owner: also keys, settings and people"))


async def _page(
    request: Request, ctx: AdminContext, *, form: Form | None = None, row_errors: dict[int, str] | None = None,
    status_code: int = 200, **values: Any,
) -> Response:  # fmt: skip
    people = await read(request, lambda s: users.list_users(s, shop_id=ctx.shop_id)) if not ctx.embedded else []
    return render(
        request, ctx, "admin/users.html", nav="users", people=people, form=form or Form(values={"role": "staff"}),
        row_errors=row_errors or {}, roles=ROLE_LABELS, status_code=status_code, **values,
    )  # fmt: skip


def _embedded(ctx: AdminContext) -> Response | None:
    if ctx.embedded:
        return problem(409, "not_standalone", "people who open Couponry from your store's admin are managed there")
    return None


async def show(request: Request, ctx: AdminContext) -> Response:
    return await _page(request, ctx)


async def invite(request: Request, ctx: AdminContext, form: Form) -> Response:
    if refused := _embedded(ctx):
        return refused
    settings: Settings = request.app.state.settings
    email, role = form.get("email"), form.get("role")
    assert ctx.user_id is not None
    by = ctx.user_id
    try:
        link = await act(
            request, ctx,
            lambda s: users.invite_link(s, settings, shop_id=ctx.shop_id, email=email, role=role, invited_by=by),
            action="admin_user.invited", subject=f"admin_invite:{users.normalise_email(email)}",
            details={"email": users.normalise_email(email), "role": role},
        )  # fmt: skip
    except PluginError as exc:
        return await _page(request, ctx, form=form.fail(exc), status_code=422)
    # shown once, on this answer only (never in a redirect's address, never stored)
    return await _page(request, ctx, invite_link=link, invited=users.normalise_email(email), status_code=201)


def _user_id(request: Request) -> int:
    return int(request.path_params["user_id"])


async def change_role(request: Request, ctx: AdminContext, form: Form) -> Response:
    if refused := _embedded(ctx):
        return refused
    user_id, role = _user_id(request), form.get("role")
    details: dict[str, object] = {"to": role}

    def work(session: Session) -> None:
        user, previous = users.set_role(session, shop_id=ctx.shop_id, user_id=user_id, role=role)
        details.update({"email": user.email, "from": previous})

    try:
        await act(request, ctx, work, action="admin_user.role_changed", subject=f"admin_user:{user_id}", details=details)
    except NotFound as exc:
        return problem(404, exc.reason, exc.message)
    except PluginError as exc:
        return await _page(request, ctx, row_errors={user_id: exc.message}, status_code=exc.status)
    return RedirectResponse(ctx.url(PATH), status_code=303)


async def remove(request: Request, ctx: AdminContext, form: Form) -> Response:
    if refused := _embedded(ctx):
        return refused
    user_id = _user_id(request)
    details: dict[str, object] = {}

    def work(session: Session) -> None:
        user = users.remove_user(session, shop_id=ctx.shop_id, user_id=user_id, by_user_id=ctx.user_id)
        details["email"] = user.email

    try:
        await act(request, ctx, work, action="admin_user.removed", subject=f"admin_user:{user_id}", details=details)
    except NotFound as exc:
        return problem(404, exc.reason, exc.message)
    except PluginError as exc:
        return await _page(request, ctx, row_errors={user_id: exc.message}, status_code=exc.status)
    return RedirectResponse(ctx.url(PATH), status_code=303)


routes = [
    page("/users", show, name="admin_users"),
    page("/users/invite", post=invite, owner_only=True, name="admin_user_invite"),
    page("/users/{user_id:int}/role", post=change_role, owner_only=True, name="admin_user_role"),
    page("/users/{user_id:int}/remove", post=remove, owner_only=True, name="admin_user_remove"),
]
