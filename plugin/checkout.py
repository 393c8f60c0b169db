"""Checkout use cases: validate (no side effects), reserve, redeem, roll back.

Every answer carries the exact refusal for the merchant's systems and, separately, what the
shopper may be shown under the shop's choice of detailed or generic messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, or_, select

from plugin import codes
from plugin.campaigns import campaign_format
from plugin.errors import InvalidInput, NotFound
from plugin.models import Campaign, Code, Redemption, Reservation, Shop
from plugin.redemptions import (
    CodeContext,
    RedeemOutcome,
    RedemptionRefused,
    UnknownCode,
    active_holds,
    check_rules,
    load_code,
    record_redemption,
    rollback_redemption,
    uses_limit,
)
from plugin.refusals import public_reason, refuse, shopper_view
from plugin.rules import Basket, Customer, DiscountResult, Reason, Refusal

MIN_RESERVATION_SECONDS = 30
MAX_RESERVATION_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Decision:
    """A validation answer: the discount, or the refusal (and a typo suggestion, if any)."""

    typed: str
    code: str | None  # stored form, when the input could be normalised to one
    discount: DiscountResult | None
    refusal: Refusal | None
    campaign_id: int | None = None

    @property
    def valid(self) -> bool:
        return self.refusal is None

    def as_json(self, *, detailed_for_shopper: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"valid": self.valid, "code": self.code, "campaign_id": self.campaign_id}
        if self.discount is not None:
            body["discount"] = self.discount.model_dump(mode="json")
        if self.refusal is not None:
            message, details = shopper_view(self.refusal, detailed_for_shopper)
            body["reason"] = self.refusal.reason.value
            body["message"] = self.refusal.message
            body["details"] = dict(self.refusal.details)
            body["shopper"] = {
                "reason": public_reason(self.refusal, detailed_for_shopper).value,
                "message": message,
                "details": details,
            }
        return body


def shop_prefers_detail(shop: Shop) -> bool:
    return bool(shop.preferences.get("detailed_refusals", True))


def resolve_code(session: Session, *, shop_id: int, typed: str) -> tuple[str, Campaign | None, Refusal | None]:
    """Map what was typed to a stored code of this shop.

    Tries every campaign format of the shop (normally one or two), so `bf-1234 5678` finds
    `BF12345678`; a code that fits a format but fails its check characters is *mistyped*.
    """
    typed = typed.strip()
    if not typed or len(typed) > 100 or "\x00" in typed:
        return "", None, refuse(Reason.UNKNOWN_CODE)
    generic = codes.normalise_generic(typed)
    campaigns = session.exec(select(Campaign).where(col(Campaign.shop_id) == shop_id)).all()
    mistyped: str | None = None
    candidates: list[str] = [generic] if generic else []
    for campaign in campaigns:
        fmt = campaign_format(campaign)
        stored = codes.normalise(fmt, typed)
        verdict = codes.check(fmt, stored)
        if verdict is codes.CodeCheck.OK:
            candidates.insert(0, stored)
        elif verdict is codes.CodeCheck.MISTYPED:
            mistyped = stored
    for candidate in dict.fromkeys(candidates):
        row = session.exec(select(Code).where(col(Code.shop_id) == shop_id, col(Code.code) == candidate)).first()
        if row is not None:
            return candidate, session.get(Campaign, row.campaign_id), None
    if mistyped is not None:
        return mistyped, None, refuse(Reason.MISTYPED_CODE)
    return generic, None, refuse(Reason.UNKNOWN_CODE)


def suggest(session: Session, *, shop_id: int, typed: str, customer: Customer | None) -> str | None:
    """A likely intended code — only among codes bound to this same customer (never another's)."""
    if customer is None or not customer.is_identified:
        return None
    conditions = []
    if customer.id is not None:
        conditions.append(col(Code.customer_id) == customer.id)
    if customer.email is not None:
        conditions.append(col(Code.email) == customer.email)
    own = session.exec(select(Code.code, Code.campaign_id).where(col(Code.shop_id) == shop_id, or_(*conditions)).limit(200)).all()
    if not own:
        return None
    guess = codes.suggest(typed, [c for c, _ in own])
    if guess is None:
        return None
    campaign = session.get(Campaign, next(cid for c, cid in own if c == guess))
    return codes.display(campaign_format(campaign), guess) if campaign else guess


def validate(
    session: Session,
    *,
    shop_id: int,
    typed: str,
    basket: Basket,
    customer: Customer | None,
    channel: str | None,
    checkout_id: str | None,
    now: datetime,
) -> Decision:
    """The decision for a code on a basket, changing nothing."""
    stored, _campaign, refusal = resolve_code(session, shop_id=shop_id, typed=typed)
    if refusal is not None:
        hint = suggest(session, shop_id=shop_id, typed=stored, customer=customer)
        if hint is not None:
            refusal = refuse(refusal.reason, suggestion=hint)
        return Decision(typed, stored or None, None, refusal)
    ctx = load_code(session, shop_id=shop_id, code=stored, checkout_id=checkout_id, now=now)
    decision = check_rules(session, ctx, customer=customer, basket=basket, channel=channel, now=now)
    if isinstance(decision, DiscountResult):
        return Decision(typed, stored, decision, None, ctx.campaign.id)
    return Decision(typed, stored, None, decision, ctx.campaign.id)


def _known(session: Session, *, shop_id: int, typed: str) -> str:
    stored, _campaign, refusal = resolve_code(session, shop_id=shop_id, typed=typed)
    if refusal is not None and refusal.reason is Reason.UNKNOWN_CODE:
        # no such code in this shop: a 404, like any other object of another shop (promise 5)
        raise UnknownCode(refusal.message, details=dict(refusal.details))
    if refusal is not None:
        raise RedemptionRefused(refusal)
    return stored


def reserve(
    session: Session,
    *,
    shop_id: int,
    typed: str,
    checkout_id: str,
    ttl_seconds: int,
    now: datetime,
    basket: Basket | None = None,
    customer: Customer | None = None,
    channel: str | None = None,
) -> Reservation:
    """Hold a code for one checkout; the same checkout asking again gets the same hold, extended."""
    if not MIN_RESERVATION_SECONDS <= ttl_seconds <= MAX_RESERVATION_SECONDS:
        raise InvalidInput(
            f"ttl_seconds must be between {MIN_RESERVATION_SECONDS} and {MAX_RESERVATION_SECONDS}", reason="invalid_ttl"
        )
    stored = _known(session, shop_id=shop_id, typed=typed)
    code_row = _lock_code(session, shop_id=shop_id, code=stored)
    assert code_row.id is not None
    expires_at = now + timedelta(seconds=ttl_seconds)
    mine = session.exec(
        select(Reservation).where(
            col(Reservation.shop_id) == shop_id,
            col(Reservation.checkout_id) == checkout_id,
            col(Reservation.code_id) == code_row.id,
        )
    ).first()
    if mine is not None and mine.released_at is None and mine.expires_at > now:
        mine.expires_at = max(mine.expires_at, expires_at)
        session.add(mine)
        session.flush()
        return mine
    ctx: CodeContext = load_code(session, shop_id=shop_id, code=stored, checkout_id=checkout_id, now=now)
    decision = check_rules(session, ctx, customer=customer, basket=basket, channel=channel, now=now)
    if isinstance(decision, Refusal):
        raise RedemptionRefused(decision)
    limit = uses_limit(ctx)
    if limit is not None:
        holds = active_holds(session, code_id=code_row.id, now=now, except_checkout=checkout_id)
        if code_row.uses + holds >= limit:
            raise RedemptionRefused(refuse(Reason.HELD_BY_OTHER_CHECKOUT))
    if mine is None:
        mine = Reservation(shop_id=shop_id, code_id=code_row.id, checkout_id=checkout_id, expires_at=expires_at, created_at=now)
    else:  # an old, expired or released hold of this checkout: renew it
        mine.expires_at, mine.released_at = expires_at, None
    session.add(mine)
    session.flush()
    return mine


def _lock_code(session: Session, *, shop_id: int, code: str) -> Code:
    """The code row, locked for this transaction (PostgreSQL: FOR UPDATE; SQLite's write
    transaction already serialises writers), so two checkouts can't both take the last hold."""
    row = session.exec(select(Code).where(col(Code.shop_id) == shop_id, col(Code.code) == code).with_for_update()).first()
    if row is None:
        raise UnknownCode("this code does not exist in this shop")
    return row


def release(session: Session, *, shop_id: int, reservation_id: int, now: datetime) -> Reservation:
    reservation = session.exec(
        select(Reservation).where(col(Reservation.id) == reservation_id, col(Reservation.shop_id) == shop_id)
    ).first()
    if reservation is None:
        raise NotFound(f"reservation {reservation_id} does not exist in this shop", reason="reservation_not_found")
    session.execute(
        update(Reservation)
        .where(col(Reservation.id) == reservation_id, col(Reservation.released_at).is_(None))
        .values(released_at=now)
    )
    session.refresh(reservation)
    return reservation


def redeem(
    session: Session,
    *,
    shop_id: int,
    typed: str,
    order_id: str,
    basket: Basket,
    customer: Customer | None,
    channel: str | None,
    checkout_id: str | None,
    now: datetime,
) -> RedeemOutcome:
    """Redeem through the API: every rule enforced, atomically, once per (order, code)."""
    stored = _known(session, shop_id=shop_id, typed=typed)
    return record_redemption(
        session,
        shop_id=shop_id,
        code=stored,
        order_id=order_id,
        now=now,
        currency=basket.currency,
        customer=customer,
        customer_id=customer.id if customer else None,
        email=customer.email if customer else None,
        channel=channel,
        source="api",
        enforce=True,
        basket=basket,
        checkout_id=checkout_id,
    )


def rollback(session: Session, *, shop_id: int, redemption_id: int, reason: str, actor: str, now: datetime) -> Redemption:
    return rollback_redemption(session, shop_id=shop_id, redemption_id=redemption_id, now=now, actor=actor, reason=reason)
