"""Referral loops: each customer's own shareable code, a discount for friends on their first
order, and a fresh unique reward code for the referrer per qualifying order.

    create_program   a referral campaign (its codes shareable: usage.uses_per_code null, and its
                     rules the friend's discount) and the campaign rewards are drawn from
    referral_code    the referrer's own code: a claim in the referral campaign (one per person)
    on_redemption    called by order processing after a new redemption is recorded, in the same
                     transaction: rewards the referrer once per friend, never for their own order

A friend qualifies once: the Referral row is unique per (campaign, friend), so a friend's second
order and a repeated webhook for the same order both find it and reward nothing more. A friend is
known by customer id and by email; matching either to the referrer's key is a self-referral,
refused (flagged on the redemption, audited, no reward). The reward is a new code generated into
the reward campaign for the referrer (recipient `<referrer>#referral:<id>`, so a referrer can hold
many) and, when the program names a provider, pushed to the referrer through it (the outbox).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, or_, select

from plugin import codes, distribution, pushes
from plugin.campaigns import get_campaign
from plugin.db import session_reader
from plugin.errors import Conflict, InvalidInput, PluginError
from plugin.models import AuditEvent, Campaign, Code, Redemption, Referral, ReferralProgram
from plugin.rules import CampaignRules, normalise_email

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


def referral_code(session: Session, *, shop_id: int, campaign_id: int, referrer: str, now: datetime) -> distribution.Claim:
    """The referrer's own shareable code (the same on every call)."""
    program = session.get(ReferralProgram, campaign_id)
    if program is None or program.shop_id != shop_id:
        raise InvalidInput(f"campaign {campaign_id} is not a referral program", reason="not_a_referral_program")
    return distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=referrer, now=now)


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


def refuse_self_referral(session: Session, *, shop_id: int, code: str, customer_id: str | None, email: str | None) -> str | None:
    """Before the checkout API redeems: refuse a referrer's own code; returns the referrer (None
    when the code is no referral code), so the caller knows to reward after redeeming."""
    referrer = referrer_of(session, shop_id=shop_id, code=code)
    if referrer is not None and referrer in friend_keys(customer_id, email):
        raise SelfReferral("a referral code can't be used by the person it belongs to")
    return referrer


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
    programs = set(session.exec(select(ReferralProgram.campaign_id).where(col(ReferralProgram.campaign_id).in_(campaigns))).all())
    rewarded = 0
    for redemption_id, campaign_id in recorded:
        if campaign_id in programs:
            redemption = session.get(Redemption, redemption_id)
            if redemption is not None and on_redemption(session, redemption, now=now) is not None:
                rewarded += 1
    return rewarded


def on_redemption(session: Session, redemption: Redemption, *, now: datetime) -> Referral | None:
    """Reward the referrer for this new redemption if it is a friend's first order; None if not."""
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
    if not friends:
        _note(session, redemption, "referral.unidentified", {"referrer": referrer}, now)
        return None
    if referrer in friends:
        redemption.flagged_reason = redemption.flagged_reason or "self_referral"
        session.add(redemption)
        _note(session, redemption, "referral.self_refused", {"referrer": referrer}, now)
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
