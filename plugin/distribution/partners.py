"""Partners: resellers, affiliates or influencers with their own block of a campaign's codes.

A partner gets codes allocated from the campaign's free pool (`allocate`), its own API keys
(scoped to `distribution`, carrying the partner's id), claims only from its block, and sees only
its own codes and results. Redemptions of its codes carry its id (plugin.checkout.redemptions copies
the code's partner_id), which is what `results` adds up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from plugin.campaigns.lookup import get_campaign
from plugin.distribution import claimstore
from plugin.errors import Conflict, InvalidInput, NotFound
from plugin.shops import apikeys
from plugin.store.models import ApiKey, Partner, utcnow


def create_partner(session: Session, *, shop_id: int, name: str) -> Partner:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("a partner needs a name of at most 200 characters", reason="invalid_name")
    partner = Partner(shop_id=shop_id, name=name, created_at=utcnow())
    try:
        with session.begin_nested():
            session.add(partner)
            session.flush()
    except IntegrityError:
        raise Conflict(f"a partner named {name!r} already exists", reason="partner_exists") from None
    return partner


def get_partner(session: Session, *, shop_id: int, partner_id: int) -> Partner:
    partner = session.exec(select(Partner).where(col(Partner.id) == partner_id, col(Partner.shop_id) == shop_id)).first()
    if partner is None:
        raise NotFound(f"partner {partner_id} does not exist in this shop", reason="partner_not_found")
    return partner


def list_partners(session: Session, *, shop_id: int) -> Sequence[Partner]:
    return session.exec(select(Partner).where(col(Partner.shop_id) == shop_id).order_by(col(Partner.id))).all()


def create_partner_key(session: Session, *, shop_id: int, partner_id: int, name: str = "") -> tuple[ApiKey, str]:
    partner = get_partner(session, shop_id=shop_id, partner_id=partner_id)
    return apikeys.create_key(
        session, shop_id=shop_id, name=name or f"partner {partner.name}", scopes=["distribution"], partner_id=partner_id
    )


def allocate(session: Session, *, shop_id: int, campaign_id: int, partner_id: int, count: int) -> int:
    """Move up to `count` free, unallocated codes of the campaign into the partner's block."""
    if count < 1:
        raise InvalidInput("count must be at least 1", reason="invalid_count")
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    get_partner(session, shop_id=shop_id, partner_id=partner_id)
    conn = session.connection()
    return claimstore.allocate(conn, shop_id=shop_id, campaign_id=campaign_id, partner_id=partner_id, count=count, now=utcnow())


@dataclass(frozen=True)
class Results:
    campaign_id: int
    partner_id: int | None
    assigned: int
    redemptions: int
    revenue: int
    discount: int


def results(session: Session, *, shop_id: int, campaign_id: int, partner_id: int | None) -> Results:
    """Assigned codes and active redemptions of the campaign; only the partner's with `partner_id`.
    Read from the results rollups (plugin.store.rollups), which equal the rows."""
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    where = "shop_id = :shop AND campaign_id = :campaign" + (" AND partner_key = :partner" if partner_id is not None else "")
    params = {"shop": shop_id, "campaign": campaign_id, "partner": partner_id}
    conn = session.connection()
    assigned = conn.execute(text(f"SELECT COALESCE(SUM(assigned), 0) FROM assign_day WHERE {where}"), params).scalar_one()
    count, revenue, discount = conn.execute(
        # attributed revenue: what partial refunds took back is not revenue (plugin.checkout.refunds)
        text(
            "SELECT COALESCE(SUM(redeemed), 0), COALESCE(SUM(gross), 0), COALESCE(SUM(discount), 0) "
            f"FROM result_day WHERE {where}"
        ),
        params,
    ).one()
    return Results(campaign_id, partner_id, int(assigned), int(count), int(revenue), int(discount))
