"""Referral loops: each customer's own shareable code, a discount for friends on their first
order, and a fresh unique reward code for the referrer per qualifying order.

    create_program   a referral campaign (its codes shareable: usage.uses_per_code null, and its
                     rules the friend's discount) and the campaign rewards are drawn from
    referral_code    the referrer's own code: a claim in the referral campaign (one per person),
                     optionally with the referrer's shipping address (kept as a fingerprint)
    on_redemption    called by order processing after a new redemption is recorded, in the same
                     transaction: rewards the referrer once per friend, never for their own order

Never the referrer themself. A friend is known by customer id and email, and the order by its
shipping address as a keyed fingerprint (plugin.orders.addresses). It is a self-referral when the id or
email is the referrer's key, or when the address is one of the referrer's: one they gave when
claiming their code, or one of their own recorded orders (redemptions whose customer id or email
is the referrer's) shipped to. A self-referral is refused: by the checkout API before redeeming
(409 `self_referral`); on the webhook path, where the platform already gave the discount, it is
flagged `self_referral` on the redemption, audited, and rewards nothing. Matching uses what is
known when the friend's order is recorded; a referrer known only by phone is matched by the
addresses they gave.

"First order" means, exactly: the friend's first order *with a code of this program* (by customer
id or email), unless the caller says otherwise. No platform's order webhook says reliably whether
an order is the customer's first in the shop (see connectors.base.OrderEvent), so the webhook path
can only know the program's own history. The checkout API's caller may: a `customer.orders_count`
above 0 means not a first order, and rewards nothing. A friend qualifies once: the Referral row
is unique per (campaign, friend), so a friend's second order and a repeated webhook for the same
order both find it and reward nothing more.

The reward is a new code generated into the reward campaign for the referrer (recipient
`<referrer>#referral:<id>`, so a referrer can hold many) and, when the program names a provider,
pushed to the referrer through it (the outbox).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, or_, select

from plugin.campaigns.lookup import get_campaign
from plugin.distribution import claims as distribution
from plugin.distribution import pushes
from plugin.errors import Conflict, InvalidInput, PluginError
from plugin.formats import codes
from plugin.rules import CampaignRules, normalise_email
from plugin.store.db import session_reader
from plugin.store.models import AuditEvent, Campaign, Code, Redemption, Referral, ReferralProgram, ReferrerAddress

REWARD_MARK = "#referral:"


def create_program(
    session: Session, *, shop_id: int, campaign_id: int, reward_campaign_id: int, provider: str | None = None
) -> ReferralProgram:
    if campaign_id == reward_campaign_id:
        raise InvalidInput("rewards come from another campaign than the referral codes", reason="invalid_program")
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    get_campaign(session, shop_id=shop_id, campaign_id=reward_campaign_id)
    if provider is not None:
        pushes.check_provider(provider)
    program = session.get(ReferralProgram, campaign_id) or ReferralProgram(campaign_id=campaign_id, shop_id=shop_id,
                                                                             reward_campaign_id=reward_campaign_id)  # fmt: skip
    program.reward_campaign_id, program.provider = reward_campaign_id, provider
    session.add(program)
    session.flush()
    return program


def referral_code(
    session: Session, *, shop_id: int, campaign_id: int, referrer: str, now: datetime, address_key: str | None = None
) -> distribution.Claim:
    """The referrer's own shareable code (the same on every call); `address_key`, the
    fingerprint of an address they ship to, is remembered (friends' orders to it are refused)."""
    check_program(session, shop_id=shop_id, campaign_id=campaign_id)
    if address_key is not None:
        remember_address(session, shop_id=shop_id, referrer=referrer, address_key=address_key, now=now)
    return distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=referrer, now=now)


def check_program(session: Session, *, shop_id: int, campaign_id: int) -> ReferralProgram:
    program = session.get(ReferralProgram, campaign_id)
    if program is None or program.shop_id != shop_id:
        raise InvalidInput(f"campaign {campaign_id} is not a referral program", reason="not_a_referral_program")
    return program


def remember_address(session: Session, *, shop_id: int, referrer: str, address_key: str, now: datetime) -> None:
    """Keep an address fingerprint of the referrer's (once; repeats change nothing)."""
    if _gave_address(session, shop_id, referrer, address_key):
        return
    try:
        with session.begin_nested():
            session.add(ReferrerAddress(shop_id=shop_id, referrer=referrer, address_key=address_key, created_at=now))
            session.flush()
    except IntegrityError:
        pass  # a concurrent claim with the same address stored it


def _gave_address(session: Session, shop_id: int, referrer: str, address_key: str) -> bool:
    """Whether the referrer gave this address fingerprint with a claim."""
    found = session.exec(
        select(ReferrerAddress.id).where(
            col(ReferrerAddress.shop_id) == shop_id,
            col(ReferrerAddress.referrer) == referrer,
            col(ReferrerAddress.address_key) == address_key,
        )
    ).first()
    return found is not None


class SelfReferral(Conflict):
    """A referrer tried their own referral code (refused by the checkout API)."""

    reason = "self_referral"


def referrer_of(session: Session, *, shop_id: int, code: str) -> str | None:
    """Who a referral code belongs to; None for any other code (one indexed read)."""
    with session_reader(session) as reader:
        rows = reader.rows(
            "SELECT c.recipient FROM code c JOIN referralprogram p ON p.campaign_id = c.campaign_id"
            " WHERE c.shop_id = ? AND c.code = ? AND p.shop_id = ?",
            (shop_id, code, shop_id),
        )
    return rows[0][0] if rows else None


def refuse_self_referral(
    session: Session,
    *,
    shop_id: int,
    code: str,
    customer_id: str | None,
    email: str | None,
    address_key: str | None = None,
) -> str | None:
    """Before the checkout API redeems: refuse a referrer's own code (by customer id, email or
    shipping address); returns the referrer (None when the code is no referral code), so the
    caller knows to reward after redeeming."""
    referrer = referrer_of(session, shop_id=shop_id, code=code)
    if referrer is not None and (
        referrer in friend_keys(customer_id, email) or is_referrers_address(session, shop_id, referrer, address_key)
    ):
        raise SelfReferral("a referral code can't be used by the person it belongs to")
    return referrer


def is_referrers_address(
    session: Session, shop_id: int, referrer: str, address_key: str | None, *, besides: int | None = None
) -> bool:
    """Whether the address fingerprint is one of the referrer's: given with their claim, or
    shipped to by one of their own recorded orders (other than redemption `besides`)."""
    if address_key is None:
        return False
    if _gave_address(session, shop_id, referrer, address_key):
        return True
    if referrer.startswith("id:"):
        theirs = col(Redemption.customer_id) == referrer[3:]
    elif "@" in referrer:
        theirs = func.lower(col(Redemption.email)) == referrer
    else:
        return False  # a phone: orders carry none, so only the addresses they gave count
    # (shop, address) is indexed: few rows share an address, whoever placed them
    query = select(Redemption.id).where(col(Redemption.shop_id) == shop_id, col(Redemption.address_key) == address_key, theirs)
    if besides is not None:
        query = query.where(col(Redemption.id) != besides)
    return session.exec(query.limit(1)).first() is not None


def friend_keys(customer_id: str | None, email: str | None) -> list[str]:
    keys = [f"id:{customer_id.strip()}"] if customer_id and customer_id.strip() else []
    normalised = normalise_email(email)
    if normalised:
        keys.append(normalised)
    return keys


def on_redemptions(session: Session, recorded: Sequence[tuple[int, int | None]], *, now: datetime) -> int:
    """The batched webhook path's hook: (redemption id, campaign id) of new redemptions; one
    indexed read when none is a referral campaign. Returns how many rewarded a referrer."""
    campaigns = {c for _, c in recorded if c is not None}
    if not campaigns:
        return 0
    # raw: this runs inside every batch's write transaction, for batches that mostly hold none
    table = ReferralProgram.__tablename__
    with session_reader(session) as db:
        programs = {
            int(c)
            for (c,) in db.rows(
                f"SELECT campaign_id FROM {table} WHERE campaign_id IN ({', '.join('?' * len(campaigns))})", sorted(campaigns)
            )
        }
    rewarded = 0
    for redemption_id, campaign_id in recorded:
        if campaign_id in programs:
            redemption = session.get(Redemption, redemption_id)
            if redemption is not None and on_redemption(session, redemption, now=now) is not None:
                rewarded += 1
    return rewarded


def on_redemption(session: Session, redemption: Redemption, *, now: datetime, first_order: bool | None = None) -> Referral | None:
    """Reward the referrer for this new redemption if it is a friend's first order; None if not.

    `first_order` is what the caller knows of the friend's history in the shop (the checkout
    API's `customer.orders_count`); None when unknown (webhooks), and then only the program's own
    history counts."""
    if redemption.campaign_id is None or redemption.code_id is None:
        return None
    program = session.get(ReferralProgram, redemption.campaign_id)
    if program is None or program.shop_id != redemption.shop_id:
        return None
    code = session.get(Code, redemption.code_id)
    referrer = code.recipient if code is not None else None
    if referrer is None:
        return None
    friends = friend_keys(redemption.customer_id, redemption.email)
    by_address = referrer not in friends and is_referrers_address(
        session, redemption.shop_id, referrer, redemption.address_key, besides=redemption.id
    )
    if referrer in friends or by_address:
        _flag(session, redemption, "self_referral")
        why = {"referrer": referrer, "matched": "address" if by_address else "customer"}
        _note(session, redemption, "referral.self_refused", why, now)
        return None
    if not friends:
        _note(session, redemption, "referral.unidentified", {"referrer": referrer}, now)
        return None
    if first_order is False:
        _note(session, redemption, "referral.not_first_order", {"referrer": referrer}, now)
        return None
    if _ordered_before(session, redemption, program.campaign_id, friends):
        return None  # not the friend's first order with a referral code (or a repeat of it)
    referral = Referral(
        shop_id=redemption.shop_id,
        campaign_id=program.campaign_id,
        referrer=referrer,
        friend=friends[0],
        order_id=redemption.order_id,
        redemption_id=redemption.id or 0,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(referral)
            session.flush()
    except IntegrityError:
        return None  # a concurrent delivery of this friend's order rewarded it
    reward = _reward_code(session, program.reward_campaign_id, f"{referrer[:290]}{REWARD_MARK}{referral.id}", now)
    referral.reward_code_id = reward.id
    session.add(referral)
    session.flush()
    if program.provider and reward.id is not None:
        pushes.enqueue_push(
            session,
            shop_id=redemption.shop_id,
            campaign_id=program.reward_campaign_id,
            provider=program.provider,
            code_ids=[reward.id],
        )
    _note(session, redemption, "referral.rewarded", {"referrer": referrer, "reward_code": reward.code}, now)
    return referral


def _ordered_before(session: Session, redemption: Redemption, campaign_id: int, friends: list[str]) -> bool:
    """Whether this friend (by customer id or email) was rewarded for, or redeemed the program's
    codes on, another order before this one."""
    rewarded = session.exec(
        select(Referral.id).where(
            col(Referral.shop_id) == redemption.shop_id,
            col(Referral.campaign_id) == campaign_id,
            col(Referral.friend).in_(friends),
        )
    ).first()
    if rewarded is not None:
        return True
    ids = [f[3:] for f in friends if f.startswith("id:")]
    emails = [f for f in friends if not f.startswith("id:")]
    who = [col(Redemption.customer_id).in_(ids)] if ids else []
    if emails:
        who.append(func.lower(col(Redemption.email)).in_(emails))
    earlier = session.exec(
        select(Redemption.id).where(
            col(Redemption.shop_id) == redemption.shop_id,
            col(Redemption.campaign_id) == campaign_id,
            col(Redemption.order_id) != redemption.order_id,
            or_(*who),
        )
    ).first()
    return earlier is not None


def _reward_code(session: Session, campaign_id: int, recipient: str, now: datetime) -> Code:
    """A fresh code generated into the reward campaign, assigned to `recipient` now."""
    campaign = session.get_one(Campaign, campaign_id)
    fmt = codes.CodeFormat.from_dict(campaign.code_format)
    expires_at = None
    if campaign.rules:
        relative = CampaignRules.model_validate(campaign.rules).time.relative_expiry
        if relative is not None:
            expires_at = now + relative.delta()
    for _ in range(10):
        candidate = codes.generate(fmt, 1)[0]
        fresh = Code(
            shop_id=campaign.shop_id,
            campaign_id=campaign_id,
            code=candidate,
            recipient=recipient,
            assigned_at=now,
            expires_at=expires_at,
            created_at=now,
        )
        try:
            with session.begin_nested():
                session.add(fresh)
                session.flush()
        except IntegrityError:
            continue  # that code exists in the shop already: draw another
        return fresh
    raise PluginError("could not find a free code for the reward", reason="reward_failed")  # pragma: no cover


def _flag(session: Session, redemption: Redemption, reason: str) -> None:
    """Flag the redemption unless it is flagged already. An UPDATE, not session.add: the
    recording paths insert with plain SQL, so the row may be unknown to this session."""
    if redemption.flagged_reason is not None:
        return
    redemption.flagged_reason = reason
    session.execute(
        update(Redemption)
        .where(col(Redemption.id) == redemption.id, col(Redemption.flagged_reason).is_(None))
        .values(flagged_reason=reason)
    )


def _note(session: Session, redemption: Redemption, action: str, details: dict[str, str], now: datetime) -> None:
    session.add(
        AuditEvent(
            shop_id=redemption.shop_id,
            action=action,
            subject=f"redemption:{redemption.id}",
            details={"order_id": redemption.order_id, **details},
            created_at=now,
        )
    )


def rewards_of(session: Session, *, shop_id: int, campaign_id: int, referrer: str) -> list[Referral]:
    return list(
        session.exec(
            select(Referral)
            .where(col(Referral.shop_id) == shop_id, col(Referral.campaign_id) == campaign_id, col(Referral.referrer) == referrer)
            .order_by(col(Referral.id))
        ).all()
    )


def list_referrals(session: Session, *, shop_id: int, campaign_id: int, limit: int = 500) -> list[tuple[Referral, str | None]]:
    """The program's referrals, newest first, with each reward's code."""
    rows = session.exec(
        select(Referral, Code.code)
        .join(Code, col(Code.id) == col(Referral.reward_code_id), isouter=True)
        .where(col(Referral.shop_id) == shop_id, col(Referral.campaign_id) == campaign_id)
        .order_by(col(Referral.id).desc())
        .limit(limit)
    ).all()
    return [(referral, code) for referral, code in rows]
