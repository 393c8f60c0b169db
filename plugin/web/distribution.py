"""Distribution over HTTP: the API handlers (listed in plugin.web.api.ENDPOINTS), the signed pull
URL that email platforms call per recipient, and the claim page behind a signed claim link.

    GET /api/v1/campaigns/{id}/pull?recipient=   API key (Bearer), scope distribution
    GET /pull/{token}?recipient=                 signed pull URL: the token names the campaign
    GET /claim/{token}                           the small page revealing one recipient's code

A pull answers the same body on every call for a recipient (Braze caches by URL and retries);
an exhausted pool answers 409 problem+json with reason `pool_exhausted` and raises an alert.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from plugin import keyring
from plugin.campaigns import results as results_service
from plugin.campaigns.lookup import get_campaign
from plugin.distribution import claims as distribution
from plugin.distribution import klaviyopools, partners, poolhealth, pushes, referrals
from plugin.distribution.claimlinks import (
    BadLink,
    ExpiredLink,
    PullGrant,
    RevokedLink,
    pull_token,
    read_claim_token,
    read_pull_token,
)
from plugin.distribution.claims import Claim, PoolExhausted, claim_or_alert
from plugin.errors import Forbidden, InvalidInput, NotFound, PluginError
from plugin.orders import addresses
from plugin.rules.recipients import normalise_recipient
from plugin.settings import Settings
from plugin.shops import tokens
from plugin.shops.apikeys import live_key
from plugin.store.models import utcnow
from plugin.store.units import in_thread
from plugin.web import schemas
from plugin.web.call import Call
from plugin.web.problems import problem

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")), autoescape=select_autoescape(["html"]), auto_reload=False
)


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def address_key(request: Request, address: schemas.ShippingAddress | None) -> str | None:
    """The keyed fingerprint of an address given in a request body (plugin.orders.addresses)."""
    return addresses.fingerprint(tokens.address_key(_settings(request)), address) if address is not None else None


def _recipient_param(request: Request) -> str:
    raw = request.query_params.get("recipient")
    if raw is None or not raw.strip():
        raise InvalidInput("name the recipient: ?recipient=<email, phone or id:customer>", reason="invalid_recipient")
    if len(raw) > 320:
        raise InvalidInput("the recipient is at most 320 characters", reason="invalid_recipient")
    return normalise_recipient(raw)


async def _claim(engine: Engine, *, shop_id: int, campaign_id: int, recipient: str, partner_id: int | None) -> Claim:
    return await in_thread(
        engine,
        lambda: claim_or_alert(engine, shop_id=shop_id, campaign_id=campaign_id, recipient=recipient, partner_id=partner_id),
    )


def _pull_response(found: Claim) -> Response:
    # A recipient's code never changes, so caches may keep it; the URL names the recipient.
    return Response(found.body, media_type="application/json", headers={"Cache-Control": "private, max-age=300"})


# --- API handlers -----------------------------------------------------------------------------


async def pull(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")
    recipient = _recipient_param(call.request)
    found = await _claim(
        call.engine, shop_id=call.shop_id, campaign_id=campaign_id, recipient=recipient, partner_id=call.key.partner_id
    )
    return _pull_response(found)


async def create_claim(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")
    body = await call.body(schemas.ClaimRequest)
    recipient = normalise_recipient(body.recipient, email=body.email, phone=body.phone, customer_id=body.customer_id)
    if body.shipping_address is not None:  # a referrer's address: friends' orders to it are refused
        key = address_key(call.request, body.shipping_address)

        def remember(session: Session) -> None:
            referrals.check_program(session, shop_id=call.shop_id, campaign_id=campaign_id)
            if key is not None:
                referrals.remember_address(session, shop_id=call.shop_id, referrer=recipient, address_key=key, now=utcnow())

        await call.db(remember)
    found = await _claim(
        call.engine, shop_id=call.shop_id, campaign_id=campaign_id, recipient=recipient, partner_id=call.key.partner_id
    )
    settings = _settings(call.request)
    url = distribution.claim_url(settings.public_url, keyring.signing_key(settings), shop_id=call.shop_id, claim_=found)
    out = schemas.ClaimOut(**found.as_json(), created=found.created, claim_url=url, partner_id=found.partner_id)
    return _json(out, 201 if found.created else 200)


async def pool(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")

    def work(session: Session) -> schemas.PoolOut:
        status = distribution.pool_status(session, shop_id=call.shop_id, campaign_id=campaign_id, partner_id=call.key.partner_id)
        return schemas.PoolOut(**status.__dict__)

    return _json(await call.db(work))


async def export(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")
    settings = _settings(call.request)
    rows = distribution.export_assignments(
        call.engine,
        shop_id=call.shop_id,
        campaign_id=campaign_id,
        public_url=settings.public_url,
        secret=keyring.signing_key(settings),
        partner_id=call.key.partner_id,
    )
    header = await in_thread(call.engine, lambda: next(rows))  # the campaign exists (404 otherwise) before we answer 200
    headers = {"Content-Disposition": f'attachment; filename="assignments-{campaign_id}.csv"'}

    def body() -> Any:
        yield header
        yield from rows

    return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers=headers)


async def create_pull_url(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")

    def work(session: Session) -> None:
        get_campaign(session, shop_id=call.shop_id, campaign_id=campaign_id)

    body = await call.body(schemas.PullUrlCreate)
    await call.db(work)
    settings = _settings(call.request)
    expires_at = utcnow().replace(microsecond=0) + timedelta(days=body.expires_in_days)
    grant = PullGrant(call.shop_id, campaign_id, call.key.prefix, expires_at, call.key.partner_id)
    url = f"{settings.public_url}/pull/{pull_token(keyring.signing_key(settings), grant)}"
    return _json(schemas.PullUrlOut(url=url, expires_at=expires_at, key_prefix=call.key.prefix), 201)


RESULTS_QUERY: dict[str, dict[str, Any]] = {
    "group_by": {
        "type": "string",
        "pattern": f"^({'|'.join(results_service.DIMENSIONS)})(,({'|'.join(results_service.DIMENSIONS)}))?$",
        "description": "One or two of channel, partner, batch, provider, day (comma-separated). Without it, from, "
        "to and format the answer is the campaign's totals as partners have always read them (ResultsOut).",
    },
    "from": {"type": "string", "format": "date", "description": "First day (YYYY-MM-DD, shop time zone), inclusive."},
    "to": {"type": "string", "format": "date", "description": "Last day, inclusive."},
    "partner_id": {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**31 - 1,
        "description": "Only this partner's codes and redemptions (a partner's key: its own, always).",
    },
    "format": {"type": "string", "enum": ["json", "csv"], "description": "csv: the same table, one line per group and currency."},
}
LOG_QUERY = {k: v for k, v in RESULTS_QUERY.items() if k in ("from", "to", "partner_id")}


def _results_query(call: Call, campaign_id: int) -> results_service.Query:
    params = call.request.query_params
    query = results_service.parse_query(
        campaign_id,
        group_by=params.get("group_by"),
        start=params.get("from"),
        end=params.get("to"),
        partner_id=params.get("partner_id"),
    )
    own = call.key.partner_id
    if own is not None:  # a partner's key reads its own results only
        if query.partner_id not in (None, own):
            raise Forbidden("a partner's key reads its own partner's results only", reason="partner_scope")
        query = replace(query, partner_id=own)
    return query


def report_out(report: results_service.Report) -> schemas.ResultsReport:
    return schemas.ResultsReport.model_validate(results_service.report_json(report))


_CSV_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


async def results(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")
    params = call.request.query_params
    output = params.get("format")
    if output not in (None, "json", "csv"):
        raise InvalidInput("format is json or csv", reason="invalid_format", details={"field": "format"})
    query = _results_query(call, campaign_id)
    if all(params.get(name) is None for name in ("group_by", "from", "to", "format")):
        # what partners have always read: the campaign's totals (now also per partner for other keys)

        def legacy(session: Session) -> schemas.ResultsOut:
            if query.partner_id is not None:  # another shop's partner is not found
                partners.get_partner(session, shop_id=call.shop_id, partner_id=query.partner_id)
            found = partners.results(session, shop_id=call.shop_id, campaign_id=campaign_id, partner_id=query.partner_id)
            return schemas.ResultsOut(**found.__dict__)

        return _json(await call.read(legacy))
    report = await call.read(lambda s: results_service.results(s, shop_id=call.shop_id, query=query))
    if output == "csv":
        disposition = f'attachment; filename="results-{campaign_id}.csv"'
        return Response(
            results_service.report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": disposition, **_CSV_HEADERS},
        )
    return JSONResponse(report_out(report).model_dump(mode="json", by_alias=True))


async def redemption_log(call: Call) -> Response:
    """The campaign's redemptions as CSV, streamed page by page."""
    campaign_id = call.path_int("campaign_id")
    query = _results_query(call, campaign_id)
    if query.group_by:
        raise InvalidInput("the redemption log is not grouped", reason="invalid_query", details={"field": "group_by"})
    rows = results_service.redemption_log_csv(call.engine, shop_id=call.shop_id, query=query)
    header = await in_thread(call.engine, lambda: next(rows))  # 404 before a 200 is sent

    def body() -> Any:
        yield header
        yield from rows

    disposition = f'attachment; filename="redemptions-{campaign_id}.csv"'
    return StreamingResponse(
        body(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": disposition, **_CSV_HEADERS}
    )


def _partner_out(partner: Any) -> schemas.PartnerOut:
    return schemas.PartnerOut(id=partner.id or 0, name=partner.name, created_at=partner.created_at)


async def create_partner(call: Call) -> Response:
    body = await call.body(schemas.PartnerCreate)
    out = await call.db(lambda s: _partner_out(partners.create_partner(s, shop_id=call.shop_id, name=body.name)))
    return _json(out, 201)


async def list_partners(call: Call) -> Response:
    def work(session: Session) -> schemas.PartnerList:
        return schemas.PartnerList(data=[_partner_out(p) for p in partners.list_partners(session, shop_id=call.shop_id)])

    return _json(await call.db(work))


async def create_partner_key(call: Call) -> Response:
    partner_id = call.path_int("partner_id")

    def work(session: Session) -> schemas.PartnerKeyOut:
        key, secret = partners.create_partner_key(session, shop_id=call.shop_id, partner_id=partner_id)
        return schemas.PartnerKeyOut(key=secret, prefix=key.prefix, partner_id=partner_id)

    return _json(await call.db(work), 201)


async def allocate(call: Call) -> Response:
    partner_id = call.path_int("partner_id")
    campaign_id = call.path_int("campaign_id")
    body = await call.body(schemas.AllocationRequest)

    def work(session: Session) -> schemas.AllocationOut:
        moved = partners.allocate(session, shop_id=call.shop_id, campaign_id=campaign_id, partner_id=partner_id, count=body.count)
        return schemas.AllocationOut(partner_id=partner_id, campaign_id=campaign_id, allocated=moved)

    return _json(await call.db(work), 201)


async def list_alerts(call: Call) -> Response:
    def work(session: Session) -> schemas.AlertList:
        rows = poolhealth.list_alerts(session, shop_id=call.shop_id, partner_id=call.key.partner_id)
        return schemas.AlertList(
            data=[
                schemas.AlertOut(
                    id=a.id or 0,
                    kind=a.kind,
                    campaign_id=a.campaign_id,
                    partner_id=a.partner_id,
                    message=a.message,
                    count=a.count,
                    created_at=a.created_at,
                    last_seen_at=a.last_seen_at,
                    resolved_at=a.resolved_at,
                )
                for a in rows
            ]
        )

    return _json(await call.db(work))


# --- public routes: signed pull URL and claim page ----------------------------------------------


async def signed_pull(request: Request) -> Response:
    settings = _settings(request)
    try:
        now = utcnow()
        grant = read_pull_token(keyring.signing_keys(settings, now), request.path_params["token"], now=now)
        _check_minting_key(request.app.state.engine, grant)
        recipient = _recipient_param(request)
        found = await _claim(
            request.app.state.engine,
            shop_id=grant.shop_id,
            campaign_id=grant.campaign_id,
            recipient=recipient,
            partner_id=grant.partner_id,
        )
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message, details=exc.details or None)
    return _pull_response(found)


def _check_minting_key(engine: Engine, grant: PullGrant) -> None:
    """A pull URL lives only while the key that minted it does (and still belongs to its shop
    and partner): revoking the key is how a merchant revokes a leaked URL."""
    key = live_key(engine, grant.key_prefix)
    if key is None or key.shop_id != grant.shop_id or key.partner_id != grant.partner_id:
        raise RevokedLink("this pull URL was revoked; create a new one")


def _page(name: str, status: int, **context: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


async def claim_page(request: Request) -> Response:
    settings = _settings(request)
    try:
        now = utcnow()
        link = read_claim_token(keyring.signing_keys(settings, now), request.path_params["token"], now=now)
        found = await _claim(
            request.app.state.engine,
            shop_id=link.shop_id,
            campaign_id=link.campaign_id,
            recipient=link.recipient,
            partner_id=link.partner_id,
        )
    except ExpiredLink:
        return _page("claim.html", 410, error="This link has expired.")
    except BadLink:
        return _page("claim.html", 403, error="This link is not valid.")
    except PoolExhausted:
        return _page("claim.html", 409, error="Sorry, all codes have been given out.")
    except NotFound:
        return _page("claim.html", 404, error="This offer no longer exists.")
    except PluginError as exc:
        return _page("claim.html", exc.status, error=exc.message)
    return _page("claim.html", 200, claim=found)


def routes() -> list[Route]:
    return [
        Route("/pull/{token}", signed_pull, methods=["GET"], name="signedPull"),
        Route("/claim/{token}", claim_page, methods=["GET"], name="claimPage"),
    ]


# --- pushes, pool policy, referrals -------------------------------------------------------------


async def create_push(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")
    body = await call.body(schemas.PushRequest)

    def work(session: Session) -> schemas.PushOut:
        queued = pushes.enqueue_push(session, shop_id=call.shop_id, campaign_id=campaign_id, provider=body.provider)
        return schemas.PushOut(provider=body.provider, queued=queued)

    out: schemas.PushOut = await call.db(work)
    worker = call.request.app.state.background.worker
    if out.queued and worker is not None:
        worker.wake()  # the embedded default's in-process worker
    return _json(out, 202)


async def list_deliveries(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")
    status = call.request.query_params.get("status")
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidInput(f"status must be one of {sorted(DELIVERY_STATUSES)}", reason="invalid_query")

    def work(session: Session) -> schemas.DeliveryList:
        get_campaign(session, shop_id=call.shop_id, campaign_id=campaign_id)
        rows = pushes.list_deliveries(
            session, shop_id=call.shop_id, campaign_id=campaign_id, status=status, partner_id=call.key.partner_id, limit=500
        )
        data = [
            schemas.DeliveryOut(
                recipient=d.recipient,
                provider=d.provider,
                status=d.status,
                provider_id=d.provider_id,
                error=d.error,
                attempts=d.attempts,
                updated_at=d.updated_at,
            )
            for d in rows
        ]
        counts = (
            pushes.delivery_counts(call.engine, shop_id=call.shop_id, campaign_id=campaign_id)
            if call.key.partner_id is None
            else {}
        )
        return schemas.DeliveryList(data=data, counts=counts)

    return _json(await call.db(work))


DELIVERY_STATUSES = frozenset({"queued", "sending", "sent", "accepted", "delivered", "failed"})


async def set_pool_policy(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")
    body = await call.body(schemas.PoolPolicyIn)

    def work(session: Session) -> schemas.PoolPolicyOut:
        policy = poolhealth.set_policy(
            session,
            shop_id=call.shop_id,
            campaign_id=campaign_id,
            alert_below=body.alert_below,
            topup_below=body.topup_below,
            topup_count=body.topup_count,
        )
        return schemas.PoolPolicyOut(
            campaign_id=campaign_id,
            alert_below=policy.alert_below,
            topup_below=policy.topup_below,
            topup_count=policy.topup_count,
        )

    return _json(await call.db(work))


async def create_referral_program(call: Call) -> Response:
    body = await call.body(schemas.ReferralProgramIn)

    def work(session: Session) -> schemas.ReferralProgramOut:
        program = referrals.create_program(
            session,
            shop_id=call.shop_id,
            campaign_id=body.campaign_id,
            reward_campaign_id=body.reward_campaign_id,
            provider=body.provider,
        )
        return schemas.ReferralProgramOut(
            campaign_id=program.campaign_id, reward_campaign_id=program.reward_campaign_id, provider=program.provider
        )

    return _json(await call.db(work), 201)


async def list_referrals(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")

    def work(session: Session) -> schemas.ReferralList:
        get_campaign(session, shop_id=call.shop_id, campaign_id=campaign_id)
        rows = referrals.list_referrals(session, shop_id=call.shop_id, campaign_id=campaign_id)
        return schemas.ReferralList(
            data=[
                schemas.ReferralOut(
                    referrer=r.referrer, friend=r.friend, order_id=r.order_id, reward_code=code, created_at=r.created_at
                )
                for r, code in rows
            ]
        )

    return _json(await call.db(work))


# --- Klaviyo's own coupon pools -------------------------------------------------------------------


def _pool_out(session: Session, pool: Any, added: int = 0) -> schemas.KlaviyoPoolOut:
    counts = klaviyopools.upload_counts(session, shop_id=pool.shop_id, pool_id=pool.id)
    return schemas.KlaviyoPoolOut(
        id=pool.id, campaign_id=pool.campaign_id, coupon_id=pool.coupon_id, description=pool.description,
        alert_below=pool.alert_below, topup_below=pool.topup_below, topup_count=pool.topup_count,
        unassigned=pool.unassigned, checked_at=pool.checked_at, counts=counts, added=added,
    )  # fmt: skip


def _wake(call: Call) -> None:
    worker = call.request.app.state.background.worker
    if worker is not None:
        worker.wake()  # the embedded default's in-process worker


async def create_klaviyo_pool(call: Call) -> Response:
    body = await call.body(schemas.KlaviyoPoolIn)

    def work(session: Session) -> schemas.KlaviyoPoolOut:
        pool = klaviyopools.create_pool(
            session, shop_id=call.shop_id, campaign_id=body.campaign_id, coupon_id=body.coupon_id,
            description=body.description, alert_below=body.alert_below, topup_below=body.topup_below,
            topup_count=body.topup_count,
        )  # fmt: skip
        assert pool.id is not None
        added = 0
        if body.count:
            added = klaviyopools.add_codes(
                session, shop_id=call.shop_id, pool_id=pool.id, count=body.count, batch_id=body.batch_id
            )
        return _pool_out(session, pool, added)

    out: schemas.KlaviyoPoolOut = await call.db(work)
    if out.added:
        _wake(call)
    return _json(out, 201)


async def list_klaviyo_pools(call: Call) -> Response:
    def work(session: Session) -> schemas.KlaviyoPoolList:
        pools = klaviyopools.list_pools(session, shop_id=call.shop_id)
        return schemas.KlaviyoPoolList(data=[_pool_out(session, p) for p in pools])

    return _json(await call.db(work))


async def get_klaviyo_pool(call: Call) -> Response:
    pool_id = call.path_int("pool_id")
    return _json(await call.db(lambda s: _pool_out(s, klaviyopools.get_pool(s, shop_id=call.shop_id, pool_id=pool_id))))


async def add_klaviyo_pool_codes(call: Call) -> Response:
    pool_id = call.path_int("pool_id")
    body = await call.body(schemas.KlaviyoPoolCodesIn)

    def work(session: Session) -> schemas.KlaviyoPoolOut:
        added = klaviyopools.add_codes(session, shop_id=call.shop_id, pool_id=pool_id, count=body.count, batch_id=body.batch_id)
        return _pool_out(session, klaviyopools.get_pool(session, shop_id=call.shop_id, pool_id=pool_id), added)

    out: schemas.KlaviyoPoolOut = await call.db(work)
    if out.added:
        _wake(call)
    return _json(out, 201)


async def list_klaviyo_pool_codes(call: Call) -> Response:
    pool_id = call.path_int("pool_id")
    status = call.request.query_params.get("status")
    if status is not None and status not in klaviyopools.STATUSES:
        raise InvalidInput(f"status must be one of {list(klaviyopools.STATUSES)}", reason="invalid_query")

    def work(session: Session) -> schemas.KlaviyoUploadList:
        rows = klaviyopools.list_uploads(session, shop_id=call.shop_id, pool_id=pool_id, status=status)
        counts = klaviyopools.upload_counts(session, shop_id=call.shop_id, pool_id=pool_id)
        return schemas.KlaviyoUploadList(data=[schemas.KlaviyoUploadOut(**r.__dict__) for r in rows], counts=counts)

    return _json(await call.db(work))


async def retry_klaviyo_pool(call: Call) -> Response:
    pool_id = call.path_int("pool_id")
    out = schemas.RetryOut(requeued=await call.db(lambda s: klaviyopools.retry_failed(s, shop_id=call.shop_id, pool_id=pool_id)))
    if out.requeued:
        _wake(call)
    return _json(out, 202)


async def set_klaviyo_pool_policy(call: Call) -> Response:
    pool_id = call.path_int("pool_id")
    body = await call.body(schemas.PoolPolicyIn)

    def work(session: Session) -> schemas.KlaviyoPoolOut:
        pool = klaviyopools.set_policy(
            session, shop_id=call.shop_id, pool_id=pool_id, alert_below=body.alert_below, topup_below=body.topup_below,
            topup_count=body.topup_count,
        )  # fmt: skip
        return _pool_out(session, pool)

    return _json(await call.db(work))
