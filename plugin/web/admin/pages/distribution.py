"""Distribution: a campaign's claims and pushes (each recipient's status per provider), partners
with their keys and blocks, referral programs, Klaviyo pools with their upload status, and signed
links minted for the merchant (a recipient's claim link; a pull URL, with its own API key).
Minting a key (partner key, pull URL) is the owner's: the secret is shown once, on the answer.
Setting up (a partner's block, a referral program, a Klaviyo pool and its top-up policy) is the
owner's too; filling a pool and retrying its failed uploads are anyone's. Each goes through the
same service as the API, with one audit row."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from plugin import keyring
from plugin.campaigns.campaigns import campaign_summaries
from plugin.distribution import admin, klaviyopools, partners, poolhealth, pushes, referrals
from plugin.errors import NotFound, PluginError
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
    request: Request, ctx: AdminContext, *, form: Form | None = None, status_code: int = 200,
    pool_errors: dict[int, str] | None = None, **minted: Any,
) -> Response:  # fmt: skip
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
        partner_options=[(str(p.id), p.name) for p, _keys in facts.get("partners", [])], pool_errors=pool_errors or {},
        campaign_options=[(str(cid), name) for cid, name, _status, _count in facts.get("campaigns", [])], **facts, **minted,
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


def _back(ctx: AdminContext, campaign: int | None, anchor: str) -> Response:
    return RedirectResponse(ctx.url(f"{PREFIX}/distribution", campaign=campaign) + f"#{anchor}", status_code=303)


async def allocate(request: Request, ctx: AdminContext, form: Form) -> Response:
    """Move free codes of the chosen campaign into a partner's block (partners.allocate)."""
    campaign_id = _int(form, "campaign", label="campaign")
    partner_id = _int(form, "block_partner", label="partner")
    count = _int(form, "block_count", label="count")
    if campaign_id is None:
        form.errors.setdefault("block_partner", "choose a campaign first")
    if partner_id is None:
        form.errors.setdefault("block_partner", "choose a partner")
    if count is None:
        form.errors.setdefault("block_count", "how many codes, e.g. 500")
    if not form.ok or campaign_id is None or partner_id is None or count is None:
        return await _page(request, ctx, form=form, status_code=422)
    try:
        moved = await act(
            request, ctx,
            lambda s: partners.allocate(s, shop_id=ctx.shop_id, campaign_id=campaign_id, partner_id=partner_id, count=count),
            action="partner.codes_allocated", subject=f"partner:{partner_id}",
            details={"campaign_id": campaign_id, "requested": count},
        )  # fmt: skip
    except NotFound as exc:
        return problem(404, exc.reason, exc.message)
    except PluginError as exc:
        return await _page(request, ctx, form=_on_field(form, exc, "block_count"), status_code=422)
    return await _page(request, ctx, form=form, allocated=(partner_id, moved, count), status_code=201)


_PROGRAM_FIELDS = {"invalid_program": "reward_campaign", "unknown_provider": "program_provider"}


async def new_program(request: Request, ctx: AdminContext, form: Form) -> Response:
    """Make a campaign's shareable codes a referral program rewarded from another campaign."""
    campaign_id = _int(form, "program_campaign", label="campaign")
    reward_id = _int(form, "reward_campaign", label="reward campaign")
    provider = form.get("program_provider").strip() or None
    if campaign_id is None:
        form.errors.setdefault("program_campaign", "choose the campaign whose codes referrers share")
    if reward_id is None:
        form.errors.setdefault("reward_campaign", "choose the campaign rewards come from")
    if not form.ok or campaign_id is None or reward_id is None:
        return await _page(request, ctx, form=form, status_code=422)
    try:
        await act(
            request, ctx,
            lambda s: referrals.create_program(s, shop_id=ctx.shop_id, campaign_id=campaign_id, reward_campaign_id=reward_id,
                                               provider=provider),
            action="referral.program_set", subject=f"campaign:{campaign_id}",
            details={"reward_campaign_id": reward_id, "provider": provider},
        )  # fmt: skip
    except NotFound as exc:
        return problem(404, exc.reason, exc.message)
    except PluginError as exc:
        return await _page(request, ctx, form=_on_field(form, exc, _PROGRAM_FIELDS.get(exc.reason, "reward_campaign")),
                           status_code=422)  # fmt: skip
    return _back(ctx, campaign_id, "programs")


def _policy(form: Form, prefix: str) -> tuple[int, int | None, int]:
    alert = _int(form, f"{prefix}alert_below", label="alert below")
    topup_below = _int(form, f"{prefix}topup_below", label="top up below")
    topup_count = _int(form, f"{prefix}topup_count", label="top-up count")
    return (poolhealth.DEFAULT_ALERT_BELOW if alert is None else alert), topup_below, topup_count or 0


_POOL_FIELDS = {"invalid_coupon_id": "coupon_id", "coupon_in_use": "coupon_id", "invalid_description": "pool_description",
                "invalid_policy": "pool_topup_count", "invalid_count": "pool_count"}  # fmt: skip


async def new_pool(request: Request, ctx: AdminContext, form: Form) -> Response:
    """A Klaviyo coupon pool for a campaign (klaviyopools.create_pool), filled at once if asked."""
    campaign_id = _int(form, "pool_campaign", label="campaign")
    count = _int(form, "pool_count", label="codes")
    alert_below, topup_below, topup_count = _policy(form, "pool_")
    if campaign_id is None:
        form.errors.setdefault("pool_campaign", "choose the campaign whose codes Klaviyo hands out")
    if not form.ok or campaign_id is None:
        return await _page(request, ctx, form=form, status_code=422)
    coupon_id, description = form.get("coupon_id").strip(), form.get("pool_description").strip()

    def work(session: Session) -> tuple[int, int]:
        pool = klaviyopools.create_pool(
            session, shop_id=ctx.shop_id, campaign_id=campaign_id, coupon_id=coupon_id, description=description,
            alert_below=alert_below, topup_below=topup_below, topup_count=topup_count,
        )  # fmt: skip
        assert pool.id is not None
        added = klaviyopools.add_codes(session, shop_id=ctx.shop_id, pool_id=pool.id, count=count) if count else 0
        return pool.id, added

    try:
        pool_id, added = await act(
            request, ctx, work, action="klaviyo_pool.created", subject=lambda made: f"pool:{made[0]}",
            details={"campaign_id": campaign_id, "coupon_id": coupon_id, "codes": count or 0},
        )  # fmt: skip
    except NotFound as exc:
        return problem(404, exc.reason, exc.message)
    except PluginError as exc:
        return await _page(request, ctx, form=_on_field(form, exc, _POOL_FIELDS.get(exc.reason, "coupon_id")), status_code=422)
    if added:
        _wake(request)
    return _back(ctx, campaign_id, f"pool-{pool_id}")


def _wake(request: Request) -> None:
    worker = request.app.state.background.worker
    if worker is not None:
        worker.wake()  # the embedded default's in-process worker uploads at once


def _pool_id(request: Request) -> int:
    return int(request.path_params["pool_id"])


async def _pool_action(
    request: Request, ctx: AdminContext, form: Form, work: Any, *, action: str, details: dict[str, object]
) -> Response:
    pool_id = _pool_id(request)
    try:
        changed = await act(request, ctx, work, action=action, subject=f"pool:{pool_id}", details=details)
    except NotFound as exc:
        return problem(404, exc.reason, exc.message)
    except PluginError as exc:
        return await _page(request, ctx, form=form, pool_errors={pool_id: exc.message}, status_code=422)
    if isinstance(changed, int) and changed:
        _wake(request)
    return _back(ctx, _int(form, "campaign", label="campaign"), f"pool-{pool_id}")


async def pool_codes(request: Request, ctx: AdminContext, form: Form) -> Response:
    pool_id, raw = _pool_id(request), form.get("count").replace(",", "").strip()
    count = int(raw) if raw.isdigit() and len(raw) < 10 else 0  # 0 is refused by the service, beside the field
    details: dict[str, object] = {"requested": count}

    def work(session: Session) -> int:
        details["added"] = added = klaviyopools.add_codes(session, shop_id=ctx.shop_id, pool_id=pool_id, count=count)
        return added

    return await _pool_action(request, ctx, form, work, action="klaviyo_pool.codes_added", details=details)


async def pool_retry(request: Request, ctx: AdminContext, form: Form) -> Response:
    pool_id = _pool_id(request)
    details: dict[str, object] = {}

    def work(session: Session) -> int:
        details["requeued"] = requeued = klaviyopools.retry_failed(session, shop_id=ctx.shop_id, pool_id=pool_id)
        return requeued

    return await _pool_action(request, ctx, form, work, action="klaviyo_pool.retried", details=details)


async def pool_policy(request: Request, ctx: AdminContext, form: Form) -> Response:
    pool_id = _pool_id(request)
    alert_below, topup_below, topup_count = _policy(form, "")
    if not form.ok:
        return await _page(request, ctx, form=form, pool_errors={pool_id: "; ".join(form.errors.values())}, status_code=422)
    details: dict[str, object] = {"alert_below": alert_below, "topup_below": topup_below, "topup_count": topup_count}

    def work(session: Session) -> None:
        klaviyopools.set_policy(session, shop_id=ctx.shop_id, pool_id=pool_id, alert_below=alert_below,
                                topup_below=topup_below, topup_count=topup_count)  # fmt: skip

    return await _pool_action(request, ctx, form, work, action="klaviyo_pool.policy_set", details=details)


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
    page("/distribution/allocations", post=allocate, owner_only=True, name="admin_partner_allocate"),
    page("/distribution/programs", post=new_program, owner_only=True, name="admin_program_new"),
    page("/distribution/pools", post=new_pool, owner_only=True, name="admin_pool_new"),
    page("/distribution/pools/{pool_id:int}/policy", post=pool_policy, owner_only=True, name="admin_pool_policy"),
    page("/distribution/pools/{pool_id:int}/codes", post=pool_codes, name="admin_pool_codes"),
    page("/distribution/pools/{pool_id:int}/retry", post=pool_retry, name="admin_pool_retry"),
]
