"""Campaigns: the list (keyset pages, figures against budgets), create and edit (plain fields
for the common rules, a JSON editor for the rest, a live preview of the code format's sample
codes and guessability), the distribution settings (binding, what a cancelled order does to its
code, the campaign pool's low-stock alert and top-up), and pause / resume / end with the
platform's outcome."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from plugin.campaigns import campaigns as service
from plugin.campaigns import listing
from plugin.distribution import poolhealth
from plugin.errors import NotFound, PluginError
from plugin.overview.campaign import CampaignView, campaign_view, format_preview
from plugin.platforms import sync
from plugin.store.models import Campaign, utcnow
from plugin.store.units import in_thread, reading
from plugin.web.admin.answers import budgets, not_found
from plugin.web.admin.campaignform import (
    ALPHABETS,
    DISCOUNT_TYPES,
    FormErrors,
    form_from_rules,
    form_with_pool,
    format_from_form,
    pool_from_form,
    rules_from_form,
)
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import Form, act
from plugin.web.admin.render import render
from plugin.web.admin.routing import page

NAV = "campaigns"
ACTIONS = ("activate", "pause", "resume", "end")
PLANNED_DEFAULT = 10_000  # codes the preview assumes a new campaign will hold


def _read(request: Request, work: Any) -> Any:
    engine = request.app.state.engine

    def run() -> Any:
        with reading(engine) as session:
            result = work(session)
            session.expunge_all()  # the page renders the rows after the session closes
            return result

    return in_thread(engine, run)


# --- list ---------------------------------------------------------------------------------------


async def index(request: Request, ctx: AdminContext) -> Response:
    status = request.query_params.get("status") or None
    cursor = request.query_params.get("after") or None
    try:
        found = await _read(
            request, lambda s: listing.list_campaigns(s, shop_id=ctx.shop_id, now=utcnow(), status=status, cursor=cursor)
        )
    except PluginError as exc:
        return render(
            request,
            ctx,
            "admin/campaigns.html",
            page=None,
            error=exc.message,
            status=status,
            statuses=listing.STATUSES,
            nav=NAV,
            status_code=422,
        )
    return render(request, ctx, "admin/campaigns.html", page=found, error=None, status=status, statuses=listing.STATUSES, nav=NAV)


# --- create -------------------------------------------------------------------------------------


def _new_form() -> Form:
    return Form(
        values={
            "currency": "USD",
            "discount_type": "percentage",
            "uses_per_code": "1",
            "alphabet": "safe",
            "length": "10",
            "group_size": "0",
            "binding": "shareable",
            "on_cancel": "restore",
            "pool_alert_below": str(poolhealth.DEFAULT_ALERT_BELOW),
            "planned": str(PLANNED_DEFAULT),
        }
    )


def _editor(
    request: Request,
    ctx: AdminContext,
    form: Form,
    *,
    view: CampaignView | None = None,
    preview: Any = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        ctx,
        "admin/campaign_form.html",
        form=form,
        view=view,
        preview=preview,
        alphabets=ALPHABETS,
        discount_types=DISCOUNT_TYPES,
        nav=NAV,
        status_code=status_code,
    )


async def new(request: Request, ctx: AdminContext) -> Response:
    form = _new_form()  # the preview shows the default format's samples and odds from the start
    return _editor(request, ctx, form, preview=await _preview(request, ctx, Form(values=dict(form.values))))


async def create(request: Request, ctx: AdminContext, form: Form) -> Response:
    currency = form.get("currency", "USD").strip().upper()
    try:
        fmt = format_from_form(form)
        rules = rules_from_form(form, currency)
        pool = pool_from_form(form)
    except FormErrors:
        return _editor(request, ctx, form, preview=await _preview(request, ctx, Form(values=dict(form.values))), status_code=422)
    status = "active" if form.get("start") == "active" else "draft"

    def work(s: Session) -> Campaign:
        made = service.create_campaign(
            s, shop_id=ctx.shop_id, name=form.get("name"), code_format=fmt.to_dict(), currency=currency, rules=rules,
            status=status,
        )  # fmt: skip
        assert made.id is not None
        if pool != poolhealth.Policy():  # the defaults need no row
            _set_pool(s, ctx, made.id, pool)
        return made

    try:
        campaign: Campaign = await act(
            request, ctx, work, action="campaign.created", subject=lambda c: f"campaign:{c.id}", details=_pool_details(pool)
        )
    except PluginError as exc:
        _place(exc)
        preview = await _preview(request, ctx, Form(values=dict(form.values)))
        return _editor(request, ctx, form.fail(exc), preview=preview, status_code=422)
    return RedirectResponse(ctx.url(f"/admin/campaigns/{campaign.id}"), status_code=303)


def _set_pool(session: Session, ctx: AdminContext, campaign_id: int, pool: poolhealth.Policy) -> None:
    poolhealth.set_policy(session, shop_id=ctx.shop_id, campaign_id=campaign_id, alert_below=pool.alert_below,
                          topup_below=pool.topup_below, topup_count=pool.topup_count)  # fmt: skip


def _pool_details(pool: poolhealth.Policy) -> dict[str, object]:
    return {"pool": {"alert_below": pool.alert_below, "topup_below": pool.topup_below, "topup_count": pool.topup_count}}


def _place(exc: PluginError) -> None:
    """Put a service's refusal beside the field it is about."""
    field = {"invalid_name": "name", "invalid_policy": "pool_topup_count"}.get(exc.reason)
    if field:
        exc.details.setdefault("field", field)


async def _preview(request: Request, ctx: AdminContext, form: Form) -> Any:
    """The format's samples and guessing odds, or None with `form`'s errors saying why."""
    try:
        fmt = format_from_form(form)
    except FormErrors:
        return None
    raw = form.get("planned", str(PLANNED_DEFAULT)).strip()
    planned = int(raw) if raw.isdigit() and len(raw) < 10 else PLANNED_DEFAULT
    return await _read(
        request,
        lambda s: format_preview(s, shop_id=ctx.shop_id, fmt=fmt, planned=planned, budgets=budgets(request), now=utcnow()),
    )


async def preview(request: Request, ctx: AdminContext) -> Response:
    """The live preview (htmx, on every change of the format fields)."""
    form = Form(values=dict(request.query_params))
    found = await _preview(request, ctx, form)
    return render(request, ctx, "admin/_format_preview.html", preview=found, form=form)


# --- one campaign -------------------------------------------------------------------------------


def _id(request: Request) -> int:
    return int(request.path_params["campaign_id"])


async def _view(request: Request, ctx: AdminContext) -> CampaignView:
    campaign_id = _id(request)
    view: CampaignView = await _read(
        request, lambda s: campaign_view(s, shop_id=ctx.shop_id, campaign_id=campaign_id, budgets=budgets(request), now=utcnow())
    )
    return view


async def show(request: Request, ctx: AdminContext) -> Response:
    try:
        view = await _view(request, ctx)
    except NotFound as exc:
        return not_found(request, ctx, exc, nav=NAV)
    return _editor(request, ctx, await _edit_form(request, ctx, view), view=view)


async def _edit_form(request: Request, ctx: AdminContext, view: CampaignView) -> Form:
    c = view.campaign
    assert c.id is not None
    campaign_id = c.id
    pool = await _read(request, lambda s: poolhealth.campaign_policy(s, shop_id=ctx.shop_id, campaign_id=campaign_id))
    return form_with_pool(form_from_rules(c.name, c.currency, c.rules), pool)


async def edit(request: Request, ctx: AdminContext, form: Form) -> Response:
    try:
        view = await _view(request, ctx)
    except NotFound as exc:
        return not_found(request, ctx, exc, nav=NAV)
    campaign_id, currency = _id(request), view.campaign.currency
    try:
        rules = rules_from_form(form, currency)
        pool = pool_from_form(form)
    except FormErrors:
        return _editor(request, ctx, form, view=view, status_code=422)

    def work(s: Session) -> None:
        service.update_campaign(s, shop_id=ctx.shop_id, campaign_id=campaign_id, name=form.get("name"), rules=rules)
        _set_pool(s, ctx, campaign_id, pool)

    try:
        await act(request, ctx, work, action="campaign.updated", subject=f"campaign:{campaign_id}", details=_pool_details(pool))
    except PluginError as exc:
        _place(exc)
        return _editor(request, ctx, form.fail(exc), view=view, status_code=422)
    return RedirectResponse(ctx.url(f"/admin/campaigns/{campaign_id}", saved=1), status_code=303)


async def change_status(request: Request, ctx: AdminContext, form: Form) -> Response:
    """Pause, resume, end (or activate a draft); the page then shows what the platform did."""
    campaign_id, action = _id(request), form.get("action")
    if action not in ACTIONS:
        form.errors["action"] = "pause, resume, end or activate"
    else:
        try:
            await act(
                request,
                ctx,
                lambda s: service.change_status(s, shop_id=ctx.shop_id, campaign_id=campaign_id, action=action),
                action=f"campaign.{action}",
                subject=f"campaign:{campaign_id}",
            )
            return RedirectResponse(ctx.url(f"/admin/campaigns/{campaign_id}", changed=action), status_code=303)
        except NotFound as exc:
            return not_found(request, ctx, exc, nav=NAV)
        except PluginError as exc:
            form.errors["action"] = exc.message
    try:
        view = await _view(request, ctx)
    except NotFound as exc:
        return not_found(request, ctx, exc, nav=NAV)
    edit_form = await _edit_form(request, ctx, view)
    edit_form.errors["action"] = form.errors["action"]
    return _editor(request, ctx, edit_form, view=view, status_code=409)


async def sync_codes(request: Request, ctx: AdminContext, form: Form) -> Response:
    """Push the campaign's pending codes to the platform, and its failed ones again (what
    `couponry codes sync --retry-failed` does): generated or imported codes wait for this."""
    campaign_id = _id(request)
    try:
        again: int = await act(
            request,
            ctx,
            lambda s: sync.resync(s, shop_id=ctx.shop_id, campaign_id=campaign_id, failed_only=True),
            action="campaign.sync_queued",
            subject=f"campaign:{campaign_id}",
        )
        return RedirectResponse(ctx.url(f"/admin/campaigns/{campaign_id}", synced=again), status_code=303)
    except NotFound as exc:
        return not_found(request, ctx, exc, nav=NAV)
    except PluginError as exc:  # the platform can't hold these rules, or the app was uninstalled
        refusal = exc
    view = await _view(request, ctx)
    c = view.campaign
    edit_form = form_from_rules(c.name, c.currency, c.rules)
    edit_form.errors["sync"] = refusal.message
    return _editor(request, ctx, edit_form, view=view, status_code=409)


routes = [
    page("/campaigns", index, name="admin_campaigns"),
    page("/campaigns/new", new, post=create, name="admin_campaign_new"),
    page("/campaigns/preview", preview, name="admin_campaign_preview"),
    page("/campaigns/{campaign_id:int}", show, post=edit, name="admin_campaign"),
    page("/campaigns/{campaign_id:int}/status", post=change_status, name="admin_campaign_status"),
    page("/campaigns/{campaign_id:int}/sync", post=sync_codes, name="admin_campaign_sync"),
]
