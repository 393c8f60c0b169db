"""Redemption syncs: the platform's order webhooks (stored deliveries) and the redemptions they
and the checkout API made, with their outcome; filters (platform, status, flagged, dates); one
stored delivery in full (or the word that it was redacted); roll back a redemption; misuse flags
explained in words (plugin.orders.listing.explain_flag)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from plugin.checkout.redemptions import rollback_redemption
from plugin.errors import InvalidInput, PluginError
from plugin.orders import listing
from plugin.orders.webhooks import get_delivery
from plugin.store.models import utcnow
from plugin.store.units import in_thread, reading
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import Form, act
from plugin.web.admin.render import render
from plugin.web.admin.routing import PREFIX, page
from plugin.web.problems import problem

T = TypeVar("T")
VIEWS = ("redemptions", "deliveries")
PLATFORMS = ("shopify", "bigcommerce", "woocommerce", "sandbox")
PAGE_SIZE = 50


async def read(request: Request, work: Callable[[Session], T]) -> T:
    engine = request.app.state.engine

    def run() -> T:
        with reading(engine) as session:
            result = work(session)
            session.expunge_all()  # rows stay readable in the template once the session is gone
            return result

    return await in_thread(engine, run)


def _day(form: Form, name: str) -> date | None:
    text = form.get(name).strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        form.errors[name] = "give a date as YYYY-MM-DD"
        return None


def _flagged(form: Form) -> bool | None:
    return {"yes": True, "no": False}.get(form.get("flagged"))


def _filters(form: Form) -> dict[str, Any]:
    """The filter values from the query; a bad one is put next to its field."""
    since, until = _day(form, "since"), _day(form, "until")
    if since and until and until < since:
        form.errors["until"] = "the end date is before the start date"
    if form.get("platform") and form.get("platform") not in PLATFORMS:
        form.errors["platform"] = f"platform must be one of {', '.join(PLATFORMS)}"
    return {
        "status": form.get("status") or None,
        "flagged": _flagged(form),
        "since": datetime(since.year, since.month, since.day, tzinfo=UTC) if since else None,
        # the end date is included: everything before the next midnight
        "until": datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1) if until else None,
    }


async def show(request: Request, ctx: AdminContext) -> Response:
    form = Form(values={k: v for k, v in request.query_params.items() if isinstance(v, str)})
    view = form.get("view") if form.get("view") in VIEWS else "redemptions"
    found = _filters(form)
    rows: Any = None
    if form.ok:
        try:
            rows = await read(request, lambda s: _page(s, ctx.shop_id, view, found, form))
        except InvalidInput as exc:
            form.errors["status" if exc.reason == "invalid_filter" else "_form"] = exc.message
    status = 200 if form.ok else 422
    statuses = listing.REDEMPTION_STATUSES if view == "redemptions" else listing.DELIVERY_STATUSES
    return render(
        request, ctx, "admin/syncs.html", status_code=status, nav="syncs", view=view, form=form, page=rows,
        explain=listing.explain_flag, query=_query(form, view),
        platform_options=[(p, p.capitalize()) for p in PLATFORMS],
        status_options=[(s, s.replace("_", " ").capitalize()) for s in statuses],
    )  # fmt: skip


def _query(form: Form, view: str) -> dict[str, str]:
    """The filters to keep on the next page's link (the embedded carry is added by ctx.url)."""
    kept = {k: form.get(k) for k in ("platform", "status", "flagged", "since", "until") if form.get(k)}
    return {"view": view, **kept}


def _page(session: Session, shop_id: int, view: str, found: dict[str, Any], form: Form) -> Any:
    cursor = form.get("cursor") or None
    if view == "deliveries":
        delivery_filter = listing.DeliveryFilter(platform=form.get("platform") or None, **found)
        return listing.list_deliveries(session, shop_id=shop_id, filter=delivery_filter, cursor=cursor, limit=PAGE_SIZE)
    redemption_filter = listing.RedemptionFilter(**found)
    return listing.list_redemptions(session, shop_id=shop_id, filter=redemption_filter, cursor=cursor, limit=PAGE_SIZE)


async def delivery(request: Request, ctx: AdminContext) -> Response:
    event_id = int(request.path_params["event_id"])
    try:
        event = await read(request, lambda s: get_delivery(s, ctx.shop_id, event_id))
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message)
    return render(request, ctx, "admin/delivery.html", nav="syncs", event=event, explain=listing.explain_flag)


class _AlreadyRolledBack(Exception):
    """The redemption was rolled back before: the transaction ends with nothing written."""


async def roll_back(request: Request, ctx: AdminContext, form: Form) -> Response:
    redemption_id = int(request.path_params["redemption_id"])
    reason = form.get("reason").strip()[:200]

    def work(session: Session) -> object:
        found = listing.get_redemption(session, shop_id=ctx.shop_id, redemption_id=redemption_id)  # another shop's: 404
        if found.status != "active":
            raise _AlreadyRolledBack
        # the service writes the one audit row (redemption.rolled_back, with this actor and reason)
        return rollback_redemption(
            session, shop_id=ctx.shop_id, redemption_id=redemption_id, now=utcnow(), actor=ctx.actor,
            reason=reason or "rolled back in the admin",
        )  # fmt: skip

    try:
        await act(request, ctx, work, action="redemption.rolled_back", subject=f"redemption:{redemption_id}",
                  details={"reason": reason})  # fmt: skip
    except _AlreadyRolledBack:
        pass  # a second click: nothing happens, nothing to audit
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message)
    return RedirectResponse(ctx.url(f"{PREFIX}/redemptions", rolled_back=redemption_id), status_code=303)


routes = [
    page("/redemptions", show, name="admin_syncs"),
    page("/redemptions/deliveries/{event_id:int}", delivery, name="admin_delivery"),
    page("/redemptions/{redemption_id:int}/rollback", post=roll_back, name="admin_rollback"),
]
