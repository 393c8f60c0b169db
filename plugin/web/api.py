"""The JSON API under /api/v1: campaigns, batches, and the checkout calls.

Each endpoint is declared once in ENDPOINTS (path, method, scope, bodies); the Starlette routes
and the OpenAPI document are both built from that table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio.to_thread
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from plugin import logs
from plugin.campaigns import campaigns, issuing, lookup
from plugin.checkout import checkout, guessing, redemptions
from plugin.checkout.ratelimit import Guesser, GuessLimits
from plugin.checkout.redemptions import RedemptionRefused, UnknownCode
from plugin.codes import percode
from plugin.distribution import klaviyopools
from plugin.errors import InvalidInput, PluginError
from plugin.formats import codes
from plugin.metrics import RATE_LIMIT_REFUSALS
from plugin.orders import webhooks
from plugin.platforms import sync
from plugin.rules import Customer
from plugin.rules.refusals import Reason
from plugin.shops import apikeys, shops
from plugin.store.models import Batch, Campaign, Redemption, Reservation, utcnow
from plugin.store.units import in_thread
from plugin.web import cors, schemas
from plugin.web import distribution as dist
from plugin.web import eventsapi as ev
from plugin.web import storefront as onsite_web
from plugin.web.call import MAX_IDS, Call
from plugin.web.clientaddr import address_key
from plugin.web.problems import plugin_error_handler, problem, validation_problem

log = logging.getLogger(__name__)
M = TypeVar("M")
PREFIX = "/api/v1"  # where the app mounts this API
Handler = Callable[["Call"], Awaitable[Response]]
# Campaign rules may list up to 10,000 ids per set (products, variants, SKUs, collections) in
# several selectors: more than the 1 MB other calls may send (plugin/web/limits.py).
RULES_BODY_LIMIT = 8 * 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    name: str
    summary: str
    scope: str | None
    handler: Handler
    request: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    storefront: bool = False  # also open to `storefront` keys (which get a reduced answer)
    query: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> JSON schema (+ "required")
    body_limit: int | None = None  # bytes, when the route takes more than `Settings.api_body_limit`


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


# --- campaigns ------------------------------------------------------------------------------


def _campaign_out(session: Session, campaign: Campaign, limits: GuessLimits) -> schemas.CampaignOut:
    fmt = lookup.campaign_format(campaign)
    count = campaigns.code_count(session, campaign_id=campaign.id or 0)
    now = utcnow()
    exposure = campaigns.campaign_exposure(session, campaign, now=now)
    odds = guessing.odds(fmt, count, guessing.Budgets.of(limits))
    return schemas.CampaignOut(
        id=campaign.id or 0,
        name=campaign.name,
        status=campaign.status,
        currency=campaign.currency,
        code_format=campaign.code_format,
        rules=campaign.rules or None,
        codes=count,
        redemptions=campaign.redemption_count,
        discount_total=campaign.discount_total,
        entropy_bits=round(codes.entropy_bits(fmt), 2),
        guess_probability=odds.per_shopper,
        guess_probability_below_alarm=odds.below_alarm,
        exposure=exposure.model_dump(mode="json") if exposure else None,
        platform=schemas.CampaignPlatform.model_validate(sync.platform_status(session, campaign)),
        created_at=campaign.created_at,
        updated_at=campaign.updated_at,
    )


async def list_campaigns(call: Call) -> Response:
    limit = _query_int(call.request, "limit", 100, 1, 500)
    offset = _query_int(call.request, "offset", 0, 0, 10**9)

    def work(session: Session) -> schemas.CampaignList:
        rows, total = campaigns.list_campaigns(session, shop_id=call.shop_id, limit=limit, offset=offset)
        return schemas.CampaignList(data=[_campaign_out(session, c, call.limits) for c in rows], count=total)

    return _json(await call.db(work))


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer", reason="invalid_query") from None
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}", reason="invalid_query")
    return value


async def create_campaign(call: Call) -> Response:
    body = await call.body(schemas.CampaignCreate)

    def work(session: Session) -> schemas.CampaignOut:
        campaign = campaigns.create_campaign(
            session,
            shop_id=call.shop_id,
            name=body.name,
            code_format=body.code_format.to_dict(),
            currency=body.currency,
            rules=body.rules,
            status=body.status if body.rules is not None else "draft",
        )
        return _campaign_out(session, campaign, call.limits)

    return _json(await call.db(work), 201)


async def get_campaign(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")

    def work(session: Session) -> schemas.CampaignOut:
        campaign = lookup.get_campaign(session, shop_id=call.shop_id, campaign_id=campaign_id)
        return _campaign_out(session, campaign, call.limits)

    return _json(await call.db(work))


async def update_campaign(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")
    body = await call.body(schemas.CampaignUpdate)

    def work(session: Session) -> schemas.CampaignOut:
        campaign = campaigns.update_campaign(
            session, shop_id=call.shop_id, campaign_id=campaign_id, name=body.name, rules=body.rules
        )
        return _campaign_out(session, campaign, call.limits)

    return _json(await call.db(work))


def _status_action(action: str) -> Handler:
    async def handler(call: Call) -> Response:
        campaign_id = call.path_int("campaign_id")

        def work(session: Session) -> schemas.CampaignOut:
            campaign = campaigns.change_status(session, shop_id=call.shop_id, campaign_id=campaign_id, action=action)
            return _campaign_out(session, campaign, call.limits)

        return _json(await call.db(work))

    return handler


# --- batches --------------------------------------------------------------------------------


def _batch_out(batch: Batch) -> schemas.BatchOut:
    return schemas.BatchOut(
        id=batch.id or 0,
        campaign_id=batch.campaign_id,
        source=batch.source,
        status=batch.status,
        requested=batch.requested,
        created=batch.created,
        progress=round(batch.created / batch.requested, 4) if batch.requested else 1.0,
        error=batch.error,
        created_at=batch.created_at,
        finished_at=batch.finished_at,
    )


async def create_batch(call: Call) -> Response:
    campaign_id = call.path_int("campaign_id")
    body = await call.body(schemas.BatchCreate)

    def work(session: Session) -> Batch:
        batch = issuing.start_batch(session, shop_id=call.shop_id, campaign_id=campaign_id, count=body.count)
        if body.rules_override is not None:
            campaign = lookup.get_campaign(session, shop_id=call.shop_id, campaign_id=campaign_id)
            issuing.set_override(batch, campaign, body.rules_override)
        return batch

    batch: Batch = await call.db(work)
    engine, shop_id, batch_id = call.engine, call.shop_id, batch.id or 0

    def generate() -> None:
        try:
            issuing.run_batch(engine, shop_id=shop_id, batch_id=batch_id)
        except Exception:  # recorded on the batch by run_batch; nothing else to do here
            return

    # Generation runs beside the web loop; the batch row shows progress to pollers.
    task = BackgroundTask(anyio.to_thread.run_sync, generate)
    response = _json(_batch_out(batch), 202)
    response.headers["Location"] = f"{PREFIX}/batches/{batch_id}"
    # the server reads no next request on this connection until the task ends: a client polling
    # the batch on a kept-alive connection would wait for the end instead of seeing progress
    response.headers["Connection"] = "close"
    response.background = task
    return response


async def get_batch(call: Call) -> Response:
    batch_id = call.path_int("batch_id")

    def work(session: Session) -> schemas.BatchOut:
        return _batch_out(lookup.get_batch(session, shop_id=call.shop_id, batch_id=batch_id))

    return _json(await call.db(work))


# --- checkout -------------------------------------------------------------------------------


def _guesser(call: Call, shopper: schemas.Shopper | None, customer: Customer | None) -> Guesser:
    """Whom this call's failed guesses count against (see `plugin.checkout.ratelimit`).

    A `storefront` key is the shopper's own browser: its shopper is the connection's address,
    and the body can't change that (a claimed customer would let a guesser spend someone
    else's budget and lock them out). A server key calls for many shoppers from one address:
    it names the shopper (`shopper.ip`, and an identified `customer`, whom the merchant's
    server vouches for as it does for bound codes); naming nobody counts against the key's
    ceiling, so one careless shopper never locks out the others.
    """
    if call.storefront:
        if shopper is not None:
            raise ShopperNotAllowed("A storefront key can't name the shopper: it is the connection's address.")
        host = call.request.client.host if call.request.client else "unknown"
        return Guesser(call.shop_id, (f"ip:{address_key(host)}",), call.key.prefix)
    keys: list[str] = []
    if shopper is not None:
        keys.append(f"ip:{address_key(str(shopper.ip))}")
    if customer is not None and customer.is_identified:
        keys.append(f"customer:{customer.id or customer.email}")
    return Guesser(call.shop_id, tuple(keys), call.key.prefix)


class ShopperNotAllowed(PluginError):
    status = 403
    reason = "shopper_not_allowed"


def _too_many(call: Call, guesser: Guesser) -> Response | None:
    verdict = call.limits.check(guesser)
    if verdict.allowed:
        return None
    RATE_LIMIT_REFUSALS.labels("shopper" if guesser.named else "unnamed_key").inc()
    return problem(
        429,
        "too_many_attempts",
        "Too many codes tried; wait before trying again.",
        headers={"Retry-After": str(verdict.retry_after)},
    )


async def _failed(call: Call, guesser: Guesser, reason: Reason) -> None:
    """Count a refusal that is a guess; the failure that crosses the shop-wide threshold
    alerts the merchant (one write per window, not one per failure)."""
    if not guessing.counts_as_guess(reason):
        return
    crossed = call.limits.record_failure(guesser)
    if crossed is None:
        return
    engine, limits, shop_id = call.engine, call.limits, guesser.shop_id
    try:
        await in_thread(
            engine, lambda: guessing.raise_alert(engine, shop_id=shop_id, failures=crossed, limits=limits, now=utcnow())
        )
    except Exception:  # the shopper still gets their answer; the next window alerts again
        log.exception("could not raise the guessing alert of shop %s", shop_id)


async def _guarded(call: Call, guesser: Guesser, work: Callable[[Session], M]) -> M:
    """Write work on a code the shopper typed (reserve, redeem): a refusal that is a guess
    (`guessing.counts_as_guess`: an unknown or mistyped code) counts; a refusal of a code that
    exists (its basket, used up, held) does not."""
    try:
        result: M = await call.db(work)
    except (UnknownCode, RedemptionRefused) as exc:
        reason = exc.refusal.reason if isinstance(exc, RedemptionRefused) else Reason.UNKNOWN_CODE
        await _failed(call, guesser, reason)
        raise
    return result


async def validate(call: Call) -> Response:
    body = await call.body(schemas.ValidateRequest)
    guesser = _guesser(call, body.shopper, body.customer)
    refused = _too_many(call, guesser)
    if refused is not None:
        return refused

    engine = call.engine

    def work() -> checkout.Decision:
        return checkout.validate(
            engine,
            shop_id=call.shop_id,
            typed=body.code,
            basket=body.basket,
            customer=body.customer,
            channel=body.channel,
            checkout_id=body.checkout_id,
            now=utcnow(),
        )

    decision = await in_thread(engine, work)
    if decision.refusal is not None:
        await _failed(call, guesser, decision.refusal.reason)
    # pydantic-core's encoder: the same compact UTF-8 JSON as JSONResponse, several times faster
    return Response(decision.encoded(storefront=call.storefront), media_type="application/json")


def _reservation_out(reservation: Reservation, code: str) -> schemas.ReservationOut:
    now = utcnow()
    return schemas.ReservationOut(
        id=reservation.id or 0,
        code=code,
        checkout_id=reservation.checkout_id,
        expires_at=reservation.expires_at,
        released_at=reservation.released_at,
        active=reservation.released_at is None and reservation.expires_at > now,
    )


async def create_reservation(call: Call) -> Response:
    body = await call.body(schemas.ReservationRequest)
    guesser = _guesser(call, body.shopper, body.customer)  # server keys only: storefront keys can't reserve
    refused = _too_many(call, guesser)
    if refused is not None:
        return refused

    def work(session: Session) -> schemas.ReservationOut:
        reservation = checkout.reserve(
            session,
            shop_id=call.shop_id,
            typed=body.code,
            checkout_id=body.checkout_id,
            ttl_seconds=body.ttl_seconds,
            now=utcnow(),
            basket=body.basket,
            customer=body.customer,
            channel=body.channel,
        )
        return _reservation_out(reservation, checkout.reserved_code(session, reservation))

    return _json(await _guarded(call, guesser, work), 201)


async def delete_reservation(call: Call) -> Response:
    reservation_id = call.path_int("reservation_id")

    def work(session: Session) -> schemas.ReservationOut:
        reservation = checkout.release(session, shop_id=call.shop_id, reservation_id=reservation_id, now=utcnow())
        return _reservation_out(reservation, checkout.reserved_code(session, reservation))

    return _json(await call.db(work))


def _redemption_out(redemption: Redemption, duplicate: bool = False) -> schemas.RedemptionOut:
    return schemas.RedemptionOut(
        id=redemption.id or 0,
        code=redemption.code,
        order_id=redemption.order_id,
        campaign_id=redemption.campaign_id,
        status=redemption.status,
        amount=redemption.amount,
        currency=redemption.currency,
        subtotal=redemption.subtotal,
        refunded=redemption.refunded,
        customer_id=redemption.customer_id,
        email=redemption.email,
        channel=redemption.channel,
        source=redemption.source,
        flagged_reason=redemption.flagged_reason,
        duplicate=duplicate,
        created_at=redemption.created_at,
        rolled_back_at=redemption.rolled_back_at,
    )


async def create_redemption(call: Call) -> Response:
    body = await call.body(schemas.RedemptionRequest)
    guesser = _guesser(call, body.shopper, body.customer)  # server keys only: storefront keys can't redeem
    refused = _too_many(call, guesser)
    if refused is not None:
        return refused

    def work(session: Session) -> schemas.RedemptionOut:
        outcome = checkout.redeem(
            session,
            shop_id=call.shop_id,
            typed=body.code,
            order_id=body.order_id,
            basket=body.basket,
            customer=body.customer,
            channel=body.channel,
            checkout_id=body.checkout_id,
            now=utcnow(),
            address_key=dist.address_key(call.request, body.shipping_address),
        )
        return _redemption_out(outcome.redemption, outcome.duplicate)

    out = await _guarded(call, guesser, work)
    return _json(out, 200 if out.duplicate else 201)


async def rollback_redemption(call: Call) -> Response:
    redemption_id = call.path_int("redemption_id")
    body = await call.body(schemas.RollbackRequest)

    def work(session: Session) -> schemas.RedemptionOut:
        redemption = checkout.rollback(
            session,
            shop_id=call.shop_id,
            redemption_id=redemption_id,
            reason=body.reason,
            actor=f"api-key:{call.key.prefix}",
            now=utcnow(),
        )
        return _redemption_out(redemption)

    return _json(await call.db(work))


async def list_redemptions(call: Call) -> Response:
    campaign_id = _query_opt_int(call.request, "campaign_id", 0, MAX_IDS["campaign_id"])
    flagged = _query_bool(call.request, "flagged")
    status = _query_choice(call.request, "status", redemptions.REDEMPTION_STATUSES)
    limit = _query_int(call.request, "limit", 50, 1, 500)
    cursor = _query_opt_int(call.request, "cursor", 0, MAX_IDS["redemption_id"])

    def work(session: Session) -> schemas.RedemptionList:
        page = redemptions.list_redemptions(
            session, call.shop_id, campaign_id=campaign_id, flagged=flagged, status=status, limit=limit, cursor=cursor
        )
        return schemas.RedemptionList(data=[_redemption_out(r) for r in page.items], next_cursor=page.next_cursor)

    return _json(await call.read(work))


# --- the shop's preferences -----------------------------------------------------------------


async def get_refusal_mode(call: Call) -> Response:
    def work(session: Session) -> schemas.RefusalMode:
        return schemas.RefusalMode(mode=shops.refusal_mode(shops.get_shop(session, call.shop_id)))

    return _json(await call.read(work))


async def set_refusal_mode(call: Call) -> Response:
    body = await call.body(schemas.RefusalMode)

    def work(session: Session) -> schemas.RefusalMode:
        return schemas.RefusalMode(mode=shops.refusal_mode(shops.set_refusal_mode(session, call.shop_id, body.mode)))

    return _json(await call.db(work))


async def get_allowed_origins(call: Call) -> Response:
    def work(session: Session) -> schemas.AllowedOrigins:
        return schemas.AllowedOrigins(origins=shops.allowed_origins(shops.get_shop(session, call.shop_id)))

    return _json(await call.read(work))


async def set_allowed_origins(call: Call) -> Response:
    body = await call.body(schemas.AllowedOrigins)

    def work(session: Session) -> schemas.AllowedOrigins:
        return schemas.AllowedOrigins(
            origins=shops.allowed_origins(shops.set_allowed_origins(session, call.shop_id, body.origins))
        )

    return _json(await call.db(work))


# --- webhook deliveries ---------------------------------------------------------------------


async def list_webhook_deliveries(call: Call) -> Response:
    platform = _query_text(call.request, "platform", _PLATFORM)
    status = _query_choice(call.request, "status", webhooks.STATUSES)
    flagged = _query_bool(call.request, "flagged")
    campaign_id = _query_opt_int(call.request, "campaign_id", 0, MAX_IDS["campaign_id"])
    limit = _query_int(call.request, "limit", 50, 1, 500)
    cursor = _query_opt_int(call.request, "cursor", 0, 2**63 - 1)

    def work(session: Session) -> schemas.WebhookDeliveryList:
        page = webhooks.list_deliveries(
            session,
            call.shop_id,
            platform=platform,
            status=status,
            flagged=flagged,
            campaign_id=campaign_id,
            limit=limit,
            cursor=None if cursor is None else str(cursor),
        )
        data = [schemas.WebhookDeliveryOut.model_validate(webhooks.delivery_view(e)) for e in page.items]
        return schemas.WebhookDeliveryList(data=data, next_cursor=page.next_cursor)

    return _json(await call.read(work))


# Query parameters of the listings, validated by the helpers below and documented from here.
_PLATFORM = re.compile(r"^[a-z0-9_-]{1,32}$")
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 500}
_FLAGGED = {"type": "boolean"}
_CAMPAIGN = {"type": "integer", "minimum": 0, "maximum": MAX_IDS["campaign_id"]}
REDEMPTION_QUERY: dict[str, dict[str, Any]] = {
    "campaign_id": _CAMPAIGN,
    "flagged": _FLAGGED,
    "status": {"type": "string", "enum": list(redemptions.REDEMPTION_STATUSES)},
    "limit": _LIMIT,
    "cursor": {"type": "integer", "minimum": 0, "maximum": MAX_IDS["redemption_id"]},
}
DELIVERY_QUERY: dict[str, dict[str, Any]] = {
    "platform": {"type": "string", "pattern": _PLATFORM.pattern},
    "status": {"type": "string", "enum": list(webhooks.STATUSES)},
    "flagged": _FLAGGED,
    "campaign_id": _CAMPAIGN,
    "limit": _LIMIT,
    "cursor": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
}


def _query_opt_int(request: Request, name: str, low: int, high: int) -> int | None:
    if request.query_params.get(name) is None:
        return None
    return _query_int(request, name, 0, low, high)


def _query_bool(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise InvalidInput(f"{name} must be true or false", reason="invalid_query")
    return raw == "true"


def _query_choice(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and raw not in choices:
        raise InvalidInput(f"{name} must be one of {', '.join(choices)}", reason="invalid_query")
    return raw


def _query_text(request: Request, name: str, pattern: re.Pattern[str]) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and not pattern.fullmatch(raw):
        raise InvalidInput(f"{name} must match {pattern.pattern}", reason="invalid_query")
    return raw


# --- per-code operations (plugin.codes.percode) -----------------------------------------------------


def code_out(session: Session, found: percode.Found) -> schemas.CodeOut:
    """A code, where the platform has it, and its story."""
    code = found.code
    shop = shops.get_shop(session, code.shop_id)
    return schemas.CodeOut(
        code=code.code,
        display=found.display,
        typed=found.typed,
        campaign_id=code.campaign_id,
        status=code.status,
        uses=code.uses,
        recipient=code.recipient,
        assigned_at=code.assigned_at,
        expires_at=code.expires_at,
        platform=schemas.CodePlatform(
            platform=shop.platform if shop else None,
            sync_status=code.sync_status,
            error=code.sync_error,
            platform_id=code.platform_id,
            synced_at=code.synced_at,
        ),
        events=[schemas.CodeEvent(at=e.at, event=e.event, details=e.details) for e in percode.story(session, found)],
    )


def _typed(call: Call) -> str:
    typed = str(call.request.path_params["code"])
    if not typed.strip() or len(typed) > 100 or "\x00" in typed:
        raise InvalidInput("a code is 1 to 100 characters", reason="invalid_code")
    return typed


async def get_code(call: Call) -> Response:
    typed = _typed(call)
    return _json(await call.read(lambda s: code_out(s, percode.find(s, shop_id=call.shop_id, typed=typed))))


async def void_code(call: Call) -> Response:
    typed, body = _typed(call), await call.body(schemas.CodeVoid)

    def work(session: Session) -> schemas.CodeOut:
        found = percode.void(session, shop_id=call.shop_id, typed=typed, actor=_actor(call), now=utcnow(), reason=body.reason)
        return code_out(session, found)

    return _json(await call.db(work))


async def extend_code(call: Call) -> Response:
    typed, body = _typed(call), await call.body(schemas.CodeExtend)

    def work(session: Session) -> schemas.CodeOut:
        found = percode.extend(
            session, shop_id=call.shop_id, typed=typed, expires_at=body.expires_at, actor=_actor(call), now=utcnow()
        )
        return code_out(session, found)

    return _json(await call.db(work))


async def reassign_code(call: Call) -> Response:
    typed, body = _typed(call), await call.body(schemas.CodeReassign)

    def work(session: Session) -> schemas.CodeOut:
        found = percode.reassign(
            session, shop_id=call.shop_id, typed=typed, recipient=body.recipient, actor=_actor(call), now=utcnow()
        )
        return code_out(session, found)

    return _json(await call.db(work))


def _actor(call: Call) -> str:
    return f"api-key:{call.key.prefix}"


# --- the table ------------------------------------------------------------------------------

_ERRORS: dict[int, type[BaseModel] | None] = {401: schemas.Problem, 403: schemas.Problem, 422: schemas.Problem}

ENDPOINTS: list[Endpoint] = [
    # First: routes are matched in order, and email platforms call the pull once per recipient per send.
    Endpoint("GET", "/campaigns/{campaign_id:int}/pull", "pullCode",
             "A recipient's code for send-time merge fields (assigns on first call; same answer after)",
             "distribution", dist.pull, None, {200: schemas.PullOut, 404: schemas.Problem, 409: schemas.Problem},
             query={"recipient": {"type": "string", "minLength": 1, "maxLength": 320, "required": True}}),
    Endpoint("GET", "/campaigns", "listCampaigns", "List campaigns with counts", "admin", list_campaigns,
             responses={200: schemas.CampaignList}),
    Endpoint("POST", "/campaigns", "createCampaign", "Create a campaign", "admin", create_campaign,
             schemas.CampaignCreate, {201: schemas.CampaignOut}, body_limit=RULES_BODY_LIMIT),
    Endpoint("GET", "/campaigns/{campaign_id:int}", "getCampaign", "Read a campaign", "admin", get_campaign,
             responses={200: schemas.CampaignOut, 404: schemas.Problem}),
    Endpoint("PATCH", "/campaigns/{campaign_id:int}", "updateCampaign", "Rename or change rules", "admin", update_campaign,
             schemas.CampaignUpdate, {200: schemas.CampaignOut, 404: schemas.Problem}, body_limit=RULES_BODY_LIMIT),
    *[
        Endpoint("POST", f"/campaigns/{{campaign_id:int}}/{action}", f"{action}Campaign", f"{action.capitalize()} a campaign",
                 "admin", _status_action(action), None, {200: schemas.CampaignOut, 404: schemas.Problem, 409: schemas.Problem})
        for action in ("activate", "pause", "resume", "end")
    ],
    Endpoint("POST", "/campaigns/{campaign_id:int}/batches", "createBatch", "Generate a batch of codes in the background",
             "admin", create_batch, schemas.BatchCreate, {202: schemas.BatchOut, 404: schemas.Problem}),
    Endpoint("GET", "/batches/{batch_id:int}", "getBatch", "A batch and its progress", "admin", get_batch,
             responses={200: schemas.BatchOut, 404: schemas.Problem}),
    Endpoint("POST", "/validate", "validateCode", "Decide whether a code applies to a basket (no side effects)", "checkout",
             validate, schemas.ValidateRequest, {200: schemas.Decision, 429: schemas.Problem}, storefront=True),
    Endpoint("GET", "/storefront/claims/{token}", "revealClaim",
             "A claim link's code, for the storefront script on the shop's own pages (no-store)", "distribution",
             onsite_web.reveal_claim, None, {200: schemas.RevealedCode, 404: schemas.Problem, 409: schemas.Problem,
                                             410: schemas.Problem}, storefront=True),
    Endpoint("POST", "/reservations", "createReservation", "Hold a code for one checkout", "checkout", create_reservation,
             schemas.ReservationRequest, {201: schemas.ReservationOut, 404: schemas.Problem, 409: schemas.Problem,
                                          429: schemas.Problem}),
    Endpoint("DELETE", "/reservations/{reservation_id:int}", "deleteReservation", "Release a hold", "checkout",
             delete_reservation, None, {200: schemas.ReservationOut, 404: schemas.Problem}),
    Endpoint("POST", "/redemptions", "createRedemption", "Redeem a code on an order", "checkout", create_redemption,
             schemas.RedemptionRequest, {200: schemas.RedemptionOut, 201: schemas.RedemptionOut, 404: schemas.Problem,
                                         409: schemas.Problem, 429: schemas.Problem}),
    Endpoint("POST", "/redemptions/{redemption_id:int}/rollback", "rollbackRedemption", "Give a redemption back",
             "checkout", rollback_redemption, schemas.RollbackRequest, {200: schemas.RedemptionOut, 404: schemas.Problem}),
    Endpoint("GET", "/redemptions", "listRedemptions", "Redemptions, newest first, filtered; paged by cursor", "admin",
             list_redemptions, None, {200: schemas.RedemptionList}, query=REDEMPTION_QUERY),
    Endpoint("GET", "/shop/refusals", "getRefusalMode", "What shoppers are told when a code is refused", "admin",
             get_refusal_mode, None, {200: schemas.RefusalMode}),
    Endpoint("PUT", "/shop/refusals", "setRefusalMode",
             "Choose detailed, generic or default (generic to storefront keys) refusals for shoppers", "admin",
             set_refusal_mode, schemas.RefusalMode, {200: schemas.RefusalMode}),
    Endpoint("GET", "/shop/origins", "getAllowedOrigins", "The pages (origins) storefront keys may be used from", "admin",
             get_allowed_origins, None, {200: schemas.AllowedOrigins}),
    Endpoint("PUT", "/shop/origins", "setAllowedOrigins",
             "Set the origins (https://host[:port], no wildcards) storefront keys may be used from (CORS)", "admin",
             set_allowed_origins, schemas.AllowedOrigins, {200: schemas.AllowedOrigins, 422: schemas.Problem}),
    Endpoint("GET", "/webhooks", "listWebhookDeliveries", "Webhook deliveries, newest first, filtered; paged by cursor", "admin",
             list_webhook_deliveries, None, {200: schemas.WebhookDeliveryList}, query=DELIVERY_QUERY),
    # distribution: claims, the pull endpoint, exports, partners, alerts (plugin.web.distribution)
    Endpoint("POST", "/campaigns/{campaign_id:int}/claims", "claimCode", "Give a recipient their code (idempotent)",
             "distribution", dist.create_claim, schemas.ClaimRequest,
             {200: schemas.ClaimOut, 201: schemas.ClaimOut, 404: schemas.Problem, 409: schemas.Problem}),
    Endpoint("POST", "/campaigns/{campaign_id:int}/pull-url", "createPullUrl", "A signed pull URL for email platforms",
             "distribution", dist.create_pull_url, schemas.PullUrlCreate, {201: schemas.PullUrlOut, 404: schemas.Problem}),
    Endpoint("GET", "/campaigns/{campaign_id:int}/pool", "getPool", "Free, assigned and total codes", "distribution",
             dist.pool, None, {200: schemas.PoolOut, 404: schemas.Problem}),
    Endpoint("GET", "/campaigns/{campaign_id:int}/assignments", "exportAssignments",
             "Assignments as CSV (recipient, code, link, expiry), streamed", "distribution", dist.export, None,
             {200: None, 404: schemas.Problem}),
    Endpoint("GET", "/campaigns/{campaign_id:int}/results", "getResults",
             "What the campaign earned: totals (ResultsOut) or, with group_by/from/to, figures per group and currency "
             "(ResultsReport); format=csv for the table as CSV", "distribution", dist.results, None,
             {200: schemas.ResultsAnswer, 403: schemas.Problem, 404: schemas.Problem}, query=dist.RESULTS_QUERY),
    Endpoint("GET", "/campaigns/{campaign_id:int}/results/redemptions", "exportRedemptionLog",
             "The campaign's redemptions as CSV, oldest first, streamed", "distribution", dist.redemption_log, None,
             {200: None, 403: schemas.Problem, 404: schemas.Problem}, query=dist.LOG_QUERY),
    Endpoint("GET", "/partners", "listPartners", "List partners", "admin", dist.list_partners,
             responses={200: schemas.PartnerList}),
    Endpoint("POST", "/partners", "createPartner", "Create a partner", "admin", dist.create_partner,
             schemas.PartnerCreate, {201: schemas.PartnerOut, 409: schemas.Problem}),
    Endpoint("POST", "/partners/{partner_id:int}/keys", "createPartnerKey", "An API key scoped to the partner's codes",
             "admin", dist.create_partner_key, None, {201: schemas.PartnerKeyOut, 404: schemas.Problem}),
    Endpoint("POST", "/partners/{partner_id:int}/campaigns/{campaign_id:int}/allocations", "allocateCodes",
             "Move free codes of a campaign into the partner's block", "admin", dist.allocate, schemas.AllocationRequest,
             {201: schemas.AllocationOut, 404: schemas.Problem}),
    Endpoint("GET", "/alerts", "listAlerts", "Pool alerts, newest first", "distribution", dist.list_alerts,
             responses={200: schemas.AlertList}),
    Endpoint("POST", "/campaigns/{campaign_id:int}/pushes", "pushCodes",
             "Push recipients' codes to an email/SMS provider (outbox; once per recipient)", "admin", dist.create_push,
             schemas.PushRequest, {202: schemas.PushOut, 404: schemas.Problem}),
    Endpoint("GET", "/campaigns/{campaign_id:int}/deliveries", "listDeliveries", "Per-recipient push status",
             "distribution", dist.list_deliveries, None, {200: schemas.DeliveryList, 404: schemas.Problem},
             query={"status": {"type": "string", "enum": sorted(dist.DELIVERY_STATUSES)}}),
    Endpoint("PUT", "/campaigns/{campaign_id:int}/pool-policy", "setPoolPolicy", "Low-stock alert and top-up thresholds",
             "admin", dist.set_pool_policy, schemas.PoolPolicyIn, {200: schemas.PoolPolicyOut, 404: schemas.Problem}),
    Endpoint("POST", "/klaviyo-pools", "createKlaviyoPool",
             "Hand a campaign's codes to a Klaviyo coupon (Klaviyo assigns them at send time; never bound)", "admin",
             dist.create_klaviyo_pool, schemas.KlaviyoPoolIn, {201: schemas.KlaviyoPoolOut, 400: schemas.Problem,
                                                               404: schemas.Problem}),
    Endpoint("GET", "/klaviyo-pools", "listKlaviyoPools", "Klaviyo coupon pools with upload counts", "admin",
             dist.list_klaviyo_pools, responses={200: schemas.KlaviyoPoolList}),
    Endpoint("GET", "/klaviyo-pools/{pool_id:int}", "getKlaviyoPool", "A Klaviyo pool, its upload counts and last check",
             "admin", dist.get_klaviyo_pool, None, {200: schemas.KlaviyoPoolOut, 404: schemas.Problem}),
    Endpoint("POST", "/klaviyo-pools/{pool_id:int}/codes", "addKlaviyoPoolCodes",
             "Hand more free codes of the campaign to the pool (uploaded through the outbox)", "admin",
             dist.add_klaviyo_pool_codes, schemas.KlaviyoPoolCodesIn, {201: schemas.KlaviyoPoolOut, 404: schemas.Problem}),
    Endpoint("GET", "/klaviyo-pools/{pool_id:int}/codes", "listKlaviyoPoolCodes", "Each code's upload status",
             "admin", dist.list_klaviyo_pool_codes, None, {200: schemas.KlaviyoUploadList, 404: schemas.Problem},
             query={"status": {"type": "string", "enum": list(klaviyopools.STATUSES)}}),
    Endpoint("POST", "/klaviyo-pools/{pool_id:int}/retry", "retryKlaviyoPool", "Upload the pool's failed codes again",
             "admin", dist.retry_klaviyo_pool, None, {202: schemas.RetryOut, 404: schemas.Problem}),
    Endpoint("PUT", "/klaviyo-pools/{pool_id:int}/policy", "setKlaviyoPoolPolicy",
             "Low-stock alert and top-up thresholds, on Klaviyo's unassigned codes", "admin",
             dist.set_klaviyo_pool_policy, schemas.PoolPolicyIn, {200: schemas.KlaviyoPoolOut, 404: schemas.Problem}),
    Endpoint("POST", "/referral-programs", "createReferralProgram", "Make a campaign a referral program", "admin",
             dist.create_referral_program, schemas.ReferralProgramIn, {201: schemas.ReferralProgramOut, 404: schemas.Problem}),
    Endpoint("GET", "/campaigns/{campaign_id:int}/referrals", "listReferrals", "Rewarded referrals, newest first",
             "admin", dist.list_referrals, None, {200: schemas.ReferralList, 404: schemas.Problem}),
    # per-code operations (plugin.codes.percode): the code as a shopper typed it
    Endpoint("GET", "/codes/{code}", "getCode",
             "A code as typed: its state, platform status and story (404 names a likely typo)", "admin", get_code,
             None, {200: schemas.CodeOut, 404: schemas.Problem}),
    Endpoint("POST", "/codes/{code}/void", "voidCode", "Void a code: refused at validation, taken off the platform",
             "admin", void_code, schemas.CodeVoid, {200: schemas.CodeOut, 404: schemas.Problem}),
    Endpoint("POST", "/codes/{code}/extend", "extendCode", "Give a code a later end (pushed to the platform)",
             "admin", extend_code, schemas.CodeExtend, {200: schemas.CodeOut, 404: schemas.Problem, 409: schemas.Problem}),
    Endpoint("POST", "/codes/{code}/reassign", "reassignCode", "Give a live, unused code to another recipient",
             "admin", reassign_code, schemas.CodeReassign, {200: schemas.CodeOut, 404: schemas.Problem, 409: schemas.Problem}),
    # outbound events and alert channels (plugin.web.eventsapi)
    Endpoint("GET", "/event-endpoints", "listEventEndpoints", "The shop's event endpoints", "admin", ev.list_endpoints,
             responses={200: ev.EndpointList}),
    Endpoint("POST", "/event-endpoints", "createEventEndpoint",
             "Subscribe a URL to events (Standard Webhooks); the answer holds its secret, shown only this once", "admin",
             ev.create_endpoint, ev.EndpointCreate, {201: ev.EndpointCreated}),
    Endpoint("GET", "/event-endpoints/{endpoint_id:int}", "getEventEndpoint", "An event endpoint", "admin", ev.get_endpoint,
             responses={200: ev.EndpointOut, 404: schemas.Problem}),
    Endpoint("PATCH", "/event-endpoints/{endpoint_id:int}", "updateEventEndpoint",
             "Change an endpoint's URL, events or description; enable or disable it", "admin", ev.update_endpoint,
             ev.EndpointUpdate, {200: ev.EndpointOut, 404: schemas.Problem}),
    Endpoint("DELETE", "/event-endpoints/{endpoint_id:int}", "deleteEventEndpoint", "Remove an endpoint and its deliveries",
             "admin", ev.delete_endpoint, None, {204: None, 404: schemas.Problem}),
    Endpoint("POST", "/event-endpoints/{endpoint_id:int}/rotate-secret", "rotateEventEndpointSecret",
             "A new signing secret (the old one stops at once); shown only in this answer", "admin", ev.rotate_secret, None,
             {200: ev.SecretOut, 404: schemas.Problem}),
    Endpoint("POST", "/event-endpoints/{endpoint_id:int}/test", "sendTestEvent", "Send an `endpoint.test` event to it",
             "admin", ev.send_test, None, {202: ev.QueuedDelivery, 404: schemas.Problem}),
    Endpoint("GET", "/event-endpoints/{endpoint_id:int}/deliveries", "listEventDeliveries",
             "The endpoint's deliveries, newest first; paged by cursor", "admin", ev.list_deliveries, None,
             {200: ev.EventDeliveryList, 404: schemas.Problem}, query=ev.DELIVERY_QUERY),
    Endpoint("GET", "/event-deliveries/{delivery_id:int}", "getEventDelivery", "A delivery with each of its attempts",
             "admin", ev.get_delivery, None, {200: ev.EventDeliveryOut, 404: schemas.Problem}),
    Endpoint("POST", "/event-deliveries/{delivery_id:int}/resend", "resendEventDelivery",
             "Send a failed or halted delivery's event again (same webhook-id)", "admin", ev.resend_delivery, None,
             {202: ev.QueuedDelivery, 404: schemas.Problem}),
    Endpoint("GET", "/shop/alert-channels", "getAlertChannels", "Where alerts go besides the admin (secrets shown as set)",
             "admin", ev.get_alert_channels, None, {200: ev.AlertChannelsOut}),
    Endpoint("PUT", "/shop/alert-channels", "setAlertChannels", "Send alerts to an email address (SMTP) and/or Slack",
             "admin", ev.set_alert_channels, ev.AlertChannelsIn, {200: ev.AlertChannelsOut}),
]  # fmt: skip


def _header(request: Request, name: bytes) -> str:
    """A request header as `request.headers.get(name, "")` finds it (the first of that name;
    ASGI names arrive lower-cased), without building Starlette's `Headers` on every call."""
    for key, value in request.scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return ""


def _bearer(request: Request) -> str | None:
    scheme, _, token = _header(request, b"authorization").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _authenticate(request: Request, engine: Engine) -> apikeys.KeyInfo | None:
    """The call's API key: from the process's cache when it is there (no trip to a database
    thread), else read."""
    token = _bearer(request)
    if token is None:
        return None
    cached = apikeys.cached_authentication(engine, token)
    if cached is not None:
        return cached
    return await in_thread(engine, lambda: apikeys.authenticate_cached(engine, token))


def _allowed(endpoint: Endpoint, scopes: frozenset[str]) -> bool:
    if endpoint.scope is None or endpoint.scope in scopes or "admin" in scopes:
        return True
    return endpoint.storefront and "storefront" in scopes


def _endpoint_app(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """The request handler of one endpoint: authenticates, checks the scope, calls it."""

    async def asgi_endpoint(request: Request) -> Response:
        engine: Engine = request.app.state.engine
        key = await _authenticate(request, engine)
        if key is None:
            return problem(401, "unauthenticated", "Send a valid API key: Authorization: Bearer <key>.",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        logs.bind_shop(key.shop_id)
        if not _allowed(endpoint, key.scopes):
            return problem(403, "insufficient_scope", f"This API key lacks the {endpoint.scope!r} scope.")
        origin = request.headers.get("origin") if endpoint.storefront and "storefront" in key.scopes else None
        if origin is None:
            return await _handle(endpoint, Call(request, key, engine))
        # a storefront key used from a page (plugin.web.cors): only from the shop's own
        allowed = await in_thread(engine, lambda: shops.allowed_origins_cached(engine, key.shop_id))
        if origin not in allowed:
            return cors.refused(origin)
        try:
            response = await _handle(endpoint, Call(request, key, engine))
        except PluginError as exc:  # answered here, so the page can read the refusal's reason
            response = await plugin_error_handler(request, exc)
        return cors.allow(response, origin)

    return asgi_endpoint


async def _handle(endpoint: Endpoint, call: Call) -> Response:
    try:
        return await endpoint.handler(call)
    except ValidationError as exc:
        return validation_problem(exc)


def _preflights(prefix: str, names: Sequence[str] | None = None) -> list[Route]:
    """The CORS preflight (`OPTIONS`) of each endpoint open to storefront keys (plugin.web.cors)."""
    return [
        Route(prefix + e.path, cors.preflight(e.method), methods=["OPTIONS"], name=f"{e.name}Preflight", include_in_schema=False)
        for e in ENDPOINTS
        if e.storefront and (names is None or e.name in names)
    ]


def _route(endpoint: Endpoint) -> Route:
    return Route(endpoint.path, _endpoint_app(endpoint), methods=[endpoint.method], name=endpoint.name)


# The checkout calls and the pull endpoint are most of the traffic: the app answers them before
# Starlette's routing (`plugin.web.hotpaths`), and the router also tries them first.
_HOT = ("validateCode", "createRedemption", "createReservation", "pullCode")


def larger_bodies(prefix: str) -> list[tuple[str, str, int]]:
    """(method, path under `prefix`, limit) of the routes documenting a larger body, for
    `limits.BodyLimits`."""
    return [(e.method, prefix + e.path, e.body_limit) for e in ENDPOINTS if e.body_limit is not None]


def hot_routes(prefix: str) -> list[Route]:
    """The hot endpoints as routes under `prefix`, for `hotpaths.App.add_hot_routes`."""
    hot = [Route(prefix + e.path, _endpoint_app(e), methods=[e.method], name=e.name) for e in ENDPOINTS if e.name in _HOT]
    return [*hot, *_preflights(prefix, _HOT)]


def routes() -> list[Route]:
    ordered = sorted(ENDPOINTS, key=lambda e: (e.name not in _HOT, _HOT.index(e.name) if e.name in _HOT else 0))
    table = [*(_route(e) for e in ordered), *_preflights("")]

    async def unmatched(request: Request) -> Response:
        # Anything else under /api/v1 still answers problem+json: 405 for a known path with
        # another method, else 404 (e.g. /campaigns/abc, which the int converter refuses).
        allowed = sorted({m for r in table if r.matches(request.scope)[0] is Match.PARTIAL for m in r.methods or ()})
        if allowed:
            return problem(
                405, "method_not_allowed", "This path does not take this method.", headers={"Allow": ", ".join(allowed)}
            )
        return problem(404, "not_found", "There is no such API path.")

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return [*table, Route("/{path:path}", unmatched, methods=methods, include_in_schema=False)]
