"""Distribution: a campaign's claims and pushes (each recipient's status per provider), partners
with their keys and blocks, referral programs, Klaviyo pools with their upload status, and signed
links minted for the merchant (a recipient's claim link; a pull URL, with its own API key).
Minting a key (partner key, pull URL) is the owner's: the secret is shown once, on the answer."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from plugin import keyring
from plugin.campaigns.campaigns import campaign_summaries
from plugin.distribution import admin, klaviyopools, partners, pushes
from plugin.errors import PluginError
from plugin.settings import Settings
from plugin.store.models import utcnow
from plugin.store.units import in_thread
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import Form, act
from plugin.web.admin.pages.syncs import read
from plugin.web.admin.render import render
from plugin.web.admin.routing import PREFIX, page
from plugin.web.problems import problem

PAGE_SIZE = 25


def _int(form: Form, name: str, *, label: str) -> int | None:
    text = form.get(name).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        form.errors[name] = f"{label} must be a whole number"
        return None


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _campaign_id(request: Request, form: Form) -> int | None:
    return _int(Form(values={"campaign": form.get("campaign") or request.query_params.get("campaign", "")}), "campaign",
                label="campaign")  # fmt: skip


def _facts(session: Session, shop_id: int, campaign_id: int | None, query: Form) -> dict[str, Any]:
    campaigns = campaign_summaries(session, shop_id=shop_id)
    found: dict[str, Any] = {"campaigns": campaigns, "campaign_id": campaign_id}
    shop_partners = partners.list_partners(session, shop_id=shop_id)
    found["partners"] = [(p, admin.partner_keys(session, shop_id=shop_id, partner_id=int(p.id or 0))) for p in shop_partners]
    found["programs"] = admin.list_programs(session, shop_id=shop_id)
    found["pools"] = [
        (pool, klaviyopools.upload_counts(session, shop_id=shop_id, pool_id=int(pool.id or 0)))
        for pool in klaviyopools.list_pools(session, shop_id=shop_id)
    ]
    if campaign_id is not None:
        found["claims"] = admin.list_claims(session, shop_id=shop_id, campaign_id=campaign_id,
                                            cursor=query.get("claims_cursor") or None, limit=PAGE_SIZE)  # fmt: skip
        found["pushes"] = admin.list_pushes(
            session, shop_id=shop_id, campaign_id=campaign_id, provider=query.get("provider") or None,
            status=query.get("push_status") or None, cursor=query.get("push_cursor") or None, limit=PAGE_SIZE,
        )  # fmt: skip
        found["blocks"] = {
            p.id: partners.results(session, shop_id=shop_id, campaign_id=campaign_id, partner_id=p.id) for p in shop_partners
        }
    return found


async def _page(
    request: Request, ctx: AdminContext, *, form: Form | None = None, status_code: int = 200, **minted: Any
) -> Response:
    query = Form(values={k: v for k, v in request.query_params.items() if isinstance(v, str)})
    form = form or Form()
    campaign_id = _campaign_id(request, form)
    facts: dict[str, Any] = {}
    try:
        facts = await read(request, lambda s: _facts(s, ctx.shop_id, campaign_id, query))
    except PluginError as exc:
        if exc.status == 404:
            return problem(404, exc.reason, exc.message)
        query.fail(exc)
        status_code = 422
        facts = await read(request, lambda s: _facts(s, ctx.shop_id, None, query))
    engine = request.app.state.engine
    counts = (
        await in_thread(engine, lambda: pushes.delivery_counts(engine, shop_id=ctx.shop_id, campaign_id=campaign_id))
        if campaign_id is not None and "claims" in facts
        else {}
    )
    return render(
        request, ctx, "admin/distribution.html", status_code=status_code, nav="distribution", form=form, query=query,
        push_counts=counts, provider_options=[(p, p.capitalize()) for p in admin.PROVIDERS],
        push_status_options=[(s, s.capitalize()) for s in admin.PUSH_STATUSES],
        partner_options=[(str(p.id), p.name) for p, _keys in facts.get("partners", [])], **facts, **minted,
    )  # fmt: skip


async def show(request: Request, ctx: AdminContext) -> Response:
    return await _page(request, ctx)


async def claim_link(request: Request, ctx: AdminContext, form: Form) -> Response:
    campaign_id = _int(form, "campaign", label="campaign")
    if campaign_id is None:
        form.errors.setdefault("campaign", "choose a campaign")
        return await _page(request, ctx, form=form, status_code=422)
    settings = _settings(request)
    try:
        link = await act(
            request, ctx,
            lambda s: admin.mint_claim_link(s, public_url=settings.public_url, secret=keyring.signing_key(settings),
                                            shop_id=ctx.shop_id, campaign_id=campaign_id, recipient=form.get("recipient"),
                                            now=utcnow()),
            action="claim.link_minted", subject=f"campaign:{campaign_id}",
        )  # fmt: skip
    except PluginError as exc:
        if exc.status == 404:
            return problem(404, exc.reason, exc.message)
        return await _page(request, ctx, form=_on_field(form, exc, "recipient"), status_code=422)
    return await _page(request, ctx, form=form, claim_link=link)


async def pull_url(request: Request, ctx: AdminContext, form: Form) -> Response:
    campaign_id = _int(form, "campaign", label="campaign")
    days = _int(form, "days", label="days") or 90
    partner_id = _int(form, "partner", label="partner")
    if campaign_id is None or not form.ok:
        form.errors.setdefault("campaign", "choose a campaign")
        return await _page(request, ctx, form=form, status_code=422)
    settings = _settings(request)
    try:
        link = await act(
            request, ctx,
            lambda s: admin.mint_pull_url(s, public_url=settings.public_url, secret=keyring.signing_key(settings),
                                          shop_id=ctx.shop_id, campaign_id=campaign_id, days=days, now=utcnow(),
                                          partner_id=partner_id),
            action="pull_url.minted", subject=f"campaign:{campaign_id}", details={"days": days, "partner_id": partner_id},
        )  # fmt: skip
    except PluginError as exc:
        if exc.status == 404:
            return problem(404, exc.reason, exc.message)
        return await _page(request, ctx, form=_on_field(form, exc, "days"), status_code=422)
    return await _page(request, ctx, form=form, pull_url=link)


async def new_partner(request: Request, ctx: AdminContext, form: Form) -> Response:
    name = form.get("name")
    try:
        await act(request, ctx, lambda s: partners.create_partner(s, shop_id=ctx.shop_id, name=name),
                  action="partner.created", subject=lambda p: f"partner:{p.id}")  # fmt: skip
    except PluginError as exc:
        return await _page(request, ctx, form=_on_field(form, exc, "name"), status_code=422)
    return RedirectResponse(ctx.url(f"{PREFIX}/distribution", campaign=form.get("campaign") or None), status_code=303)


async def partner_key(request: Request, ctx: AdminContext, form: Form) -> Response:
    partner_id = int(request.path_params["partner_id"])
    try:
        key, secret = await act(
            request, ctx, lambda s: partners.create_partner_key(s, shop_id=ctx.shop_id, partner_id=partner_id),
            action="partner.key_created", subject=f"partner:{partner_id}",
        )  # fmt: skip
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message)
    return await _page(request, ctx, form=form, new_key=(partner_id, key.prefix, secret))


def _on_field(form: Form, exc: PluginError, default: str) -> Form:
    """A refusal that names no field is shown next to the form's main one."""
    name = exc.details.get("field")
    form.errors[name if isinstance(name, str) else default] = exc.message
    return form


routes = [
    page("/distribution", show, name="admin_distribution"),
    page("/distribution/claim-link", post=claim_link, name="admin_claim_link"),
    page("/distribution/pull-url", post=pull_url, owner_only=True, name="admin_pull_url"),
    page("/distribution/partners", post=new_partner, owner_only=True, name="admin_partner_new"),
    page("/distribution/partners/{partner_id:int}/keys", post=partner_key, owner_only=True, name="admin_partner_key"),
]
