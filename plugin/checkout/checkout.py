"""Checkout use cases: validate (no side effects), reserve, redeem, roll back.

Every answer carries the exact refusal for the merchant's systems and, separately, what the
shopper may be shown under the shop's choice of detailed or generic messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Engine, update
from sqlmodel import Session, col, or_, select

from plugin.campaigns.lookup import campaign_format
from plugin.checkout.redemptions import (
    CodeContext,
    RedeemOutcome,
    RedemptionRefused,
    UnknownCode,
    active_holds,
    check_rules,
    customer_key,
    load_code,
    lookup_code,
    record_redemption,
    rollback_redemption,
    uses_limit,
)
from plugin.distribution import referrals
from plugin.errors import InvalidInput, NotFound
from plugin.formats import codes
from plugin.rules import Basket, Customer, DiscountResult, Reason, Refusal
from plugin.rules.refusals import public_reason, refuse, shopper_view
from plugin.store import caches
from plugin.store.db import Reader, read_cursor, read_session, session_reader
from plugin.store.models import Campaign, Code, Redemption, Reservation, Shop

MIN_RESERVATION_SECONDS = 30
MAX_RESERVATION_SECONDS = 24 * 3600


@dataclass(slots=True)  # not frozen: built per validation, and a frozen __init__ costs ~5x
class Decision:
    """A validation answer: the discount, or the refusal (and a typo suggestion, if any).

    `shopper_detailed` is the shop's choice of detailed (True) or generic (False) shopper
    messages, None when it made none: then the merchant's servers get the detailed shopper
    view (they show it behind their own checkout, which names the shopper to our limits) and
    `storefront` keys the generic one (see `as_json`).
    """

    typed: str
    code: str | None  # stored form, when the input could be normalised to one
    discount: DiscountResult | None
    refusal: Refusal | None
    campaign_id: int | None = None
    shopper_detailed: bool | None = None

    @property
    def valid(self) -> bool:
        return self.refusal is None

    def shopper(self, detailed: bool) -> dict[str, Any] | None:
        """What the shopper may be shown of the refusal, in detailed or generic mode.

        In generic mode a typo `suggestion` is dropped: it is found among codes bound to the
        customer the caller *claims* to be, so it must never reach an anonymous shopper."""
        if self.refusal is None:
            return None
        shown = self.refusal
        if not detailed and "suggestion" in shown.details:
            shown = refuse(shown.reason, **{k: v for k, v in shown.details.items() if k != "suggestion"})
        message, details = shopper_view(shown, detailed)
        return {"reason": public_reason(shown, detailed).value, "message": message, "details": details}

    def as_json(self, *, detailed_for_shopper: bool | None = None, storefront: bool = False) -> dict[str, Any]:
        """The API answer. Merchant servers (`checkout`/`admin` keys) get the exact reason,
        message and details beside the shopper view; a `storefront` key (calls from the
        shopper's browser) gets only `valid`, `discount` and `shopper`, generic unless the shop
        opted in to detailed refusals: the browser is the guesser's own, and telling a voided,
        used or bound code from an unknown one confirms it exists. Basket nudges of a live code
        ("spend £12 more") stay in the generic view (`refusals.shopper_view`): they do reveal
        that the code exists, but only to a shopper who could use it, which a successful
        validation would reveal as well; hiding them would only cost honest sales."""
        discount = self.discount.model_dump(mode="json") if self.discount is not None else None
        return self._answer(discount, detailed_for_shopper, storefront)

    def encoded(self, *, storefront: bool = False) -> bytes:
        """`as_json` as compact UTF-8 JSON. pydantic-core encodes the discount model itself,
        the same JSON as its `model_dump(mode="json")`, without building that dict first."""
        return to_json(self._answer(self.discount, None, storefront))

    def _answer(self, discount: Any, detailed_for_shopper: bool | None, storefront: bool) -> dict[str, Any]:
        detailed = self.shopper_detailed if detailed_for_shopper is None else detailed_for_shopper
        if detailed is None:
            detailed = not storefront
        if storefront:
            return {"valid": self.valid, "discount": discount, "shopper": self.shopper(detailed)}
        body: dict[str, Any] = {"valid": self.valid, "code": self.code, "campaign_id": self.campaign_id}
        if discount is not None:
            body["discount"] = discount
        if self.refusal is not None:
            body["reason"] = self.refusal.reason.value
            body["message"] = self.refusal.message
            body["details"] = dict(self.refusal.details)
            body["shopper"] = self.shopper(detailed)
        return body


def shop_prefers_detail(shop: Shop) -> bool | None:
    """The shop's choice of detailed refusals for shoppers, None when it made none."""
    chosen = shop.preferences.get("detailed_refusals")
    return None if chosen is None else bool(chosen)


@dataclass(frozen=True)
class Typed:
    """What a shopper typed, normalised every way the shop's code formats allow."""

    candidates: tuple[str, ...]  # stored forms to look up, best first
    mistyped: str | None  # fits a format but fails its check characters
    generic: str


def _engine(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


class ShopFormats:
    """The distinct code formats of a shop's campaigns, with a small memo of what shoppers
    typed (a checkout validates the same code many times). Replaced when the cache expires."""

    MEMO = 1024

    def __init__(self, formats: tuple[codes.CodeFormat, ...]) -> None:
        self.formats = formats
        self._memo: dict[str, Typed] = {}

    def normalise(self, typed: str) -> Typed:
        found = self._memo.get(typed)
        if found is None:
            found = normalise_typed(self.formats, typed)
            if len(self._memo) >= self.MEMO:
                self._memo.clear()
            self._memo[typed] = found
        return found


def shop_formats(reader: Reader, engine: Engine, shop_id: int) -> ShopFormats:
    """The shop's code formats (cached per process for `caches.TTL_SECONDS`, see `caches`)."""
    cache = caches.for_engine(engine).shop_formats
    found = cache.get(shop_id)
    if found is None:
        gen = caches.generation()
        rows = reader.rows("SELECT DISTINCT CAST(code_format AS TEXT) FROM campaign WHERE shop_id = ?", (shop_id,))
        found = ShopFormats(tuple(caches.code_format(text) for (text,) in sorted(rows)))
        cache.put(shop_id, found, gen)
    return found


def normalise_typed(formats: tuple[codes.CodeFormat, ...], typed: str) -> Typed:
    """Map what was typed to the stored forms it may stand for.

    Tries every code format of the shop (normally one or two), so `bf-1234 5678` finds
    `BF12345678`; a code that fits a format but fails its check characters is *mistyped*.
    """
    typed = typed.strip()
    if not typed or len(typed) > 100 or "\x00" in typed:
        return Typed((), None, "")
    generic = codes.normalise_generic(typed)
    mistyped: str | None = None
    found: list[str] = []
    for fmt in formats:
        stored = codes.normalise(fmt, typed)
        verdict = codes.check(fmt, stored)
        if verdict is codes.CodeCheck.OK:
            found.append(stored)
        elif verdict is codes.CodeCheck.MISTYPED:
            mistyped = stored
    if generic:
        found.append(generic)
    return Typed(tuple(dict.fromkeys(found)), mistyped, generic)


def _not_found(typed: Typed) -> tuple[str, Refusal]:
    if typed.mistyped is not None:
        return typed.mistyped, refuse(Reason.MISTYPED_CODE)
    return typed.generic, refuse(Reason.UNKNOWN_CODE)


def resolve_code(session: Session, *, shop_id: int, typed: str) -> tuple[str, Refusal | None]:
    """The stored code of this shop that `typed` stands for, or the refusal (unknown or mistyped)."""
    with session_reader(session) as reader:
        normalised = shop_formats(reader, _engine(session), shop_id).normalise(typed)
        if normalised.candidates:
            marks = ", ".join("?" * len(normalised.candidates))
            rows = reader.rows(
                f"SELECT code FROM code WHERE shop_id = ? AND code IN ({marks})", (shop_id, *normalised.candidates)
            )
            found = {code for (code,) in rows}
            for candidate in normalised.candidates:
                if candidate in found:
                    return candidate, None
    return _not_found(normalised)


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
    engine: Engine,
    *,
    shop_id: int,
    typed: str,
    basket: Basket,
    customer: Customer | None,
    channel: str | None,
    checkout_id: str | None,
    now: datetime,
) -> Decision:
    """The decision for a code on a basket, changing nothing.

    The hot path of checkouts: one read transaction that takes no write lock, and normally
    one statement (`lookup_code`, so no snapshot is needed around it); formats and parsed
    rules come from the per-process caches.
    """
    key = customer_key(customer.id, customer.email) if customer is not None else None
    with read_cursor(engine, snapshot=False) as reader:
        normalised = shop_formats(reader, engine, shop_id).normalise(typed)
        ctx = lookup_code(
            reader, shop_id=shop_id, candidates=normalised.candidates, checkout_id=checkout_id, customer=key, now=now
        )
        if ctx is None:
            rows = reader.rows("SELECT CAST(preferences AS TEXT) FROM shop WHERE id = ?", (shop_id,))
            detailed = caches.detailed_refusals(rows[0][0] if rows else None)
    if ctx is None:
        stored, refusal = _not_found(normalised)
        if stored and customer is not None and customer.is_identified:
            with read_session(engine) as session:
                hint = suggest(session, shop_id=shop_id, typed=stored, customer=customer)
            if hint is not None:
                refusal = refuse(refusal.reason, suggestion=hint)
        return Decision(typed, stored or None, None, refusal, shopper_detailed=detailed)
    decision = check_rules(ctx, customer=customer, basket=basket, channel=channel, now=now)
    if isinstance(decision, DiscountResult):
        return Decision(typed, ctx.code.code, decision, None, ctx.campaign.id, ctx.detailed_refusals)
    assert decision is not None  # with a basket, evaluation always decides
    return Decision(typed, ctx.code.code, None, decision, ctx.campaign.id, ctx.detailed_refusals)


def _known(session: Session, *, shop_id: int, typed: str) -> str:
    stored, refusal = resolve_code(session, shop_id=shop_id, typed=typed)
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
    ctx: CodeContext = load_code(session, shop_id=shop_id, code=stored, checkout_id=checkout_id, now=now, customer=customer)
    decision = check_rules(ctx, customer=customer, basket=basket, channel=channel, now=now)
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


def reserved_code(session: Session, reservation: Reservation) -> str:
    """The code a reservation holds (as stored)."""
    return session.get_one(Code, reservation.code_id).code


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
    address_key: str | None = None,
) -> RedeemOutcome:
    """Redeem through the API: every rule enforced, atomically, once per (order, code).
    `address_key` is the order's shipping-address fingerprint (plugin.orders.addresses), if given."""
    stored = _known(session, shop_id=shop_id, typed=typed)
    referrer = referrals.refuse_self_referral(  # a referral code: never its own referrer's
        session, shop_id=shop_id, code=stored, customer_id=customer.id if customer else None,
        email=customer.email if customer else None, address_key=address_key,
    )  # fmt: skip
    outcome = record_redemption(
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
        address_key=address_key,
    )
    if referrer is not None and not outcome.duplicate:  # a friend's order rewards its referrer
        first = customer.is_first_order if customer else None
        referrals.on_redemption(session, outcome.redemption, now=now, first_order=first)
    return outcome


def rollback(session: Session, *, shop_id: int, redemption_id: int, reason: str, actor: str, now: datetime) -> Redemption:
    return rollback_redemption(session, shop_id=shop_id, redemption_id=redemption_id, now=now, actor=actor, reason=reason)
