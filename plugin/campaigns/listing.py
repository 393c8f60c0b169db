"""The campaigns list, a keyset page at a time, with each row's figures from the counters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from plugin.campaigns import figures
from plugin.errors import InvalidInput
from plugin.rules import CampaignRules
from plugin.store import keyset
from plugin.store.keyset import Page
from plugin.store.models import Campaign

STATUSES = ("draft", "active", "paused", "ended")


@dataclass(frozen=True)
class CampaignRow:
    campaign: Campaign
    starts_at: datetime | None
    ends_at: datetime | None
    redemptions: int
    max_redemptions: int | None  # the redemption budget, None: none
    discount_given: int
    max_discount: int | None
    last_activity: datetime  # the last redemption or change, whichever is later
    figures: figures.CampaignFigures


def list_campaigns(
    session: Session, *, shop_id: int, now: datetime, status: str | None = None, cursor: str | None = None, limit: int = 25
) -> Page[CampaignRow]:
    """Newest first; `status` narrows to draft, active, paused or ended."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", reason="invalid_filter")
    limit = keyset.clamp(limit)
    stmt = select(Campaign).where(col(Campaign.shop_id) == shop_id)
    if status is not None:
        stmt = stmt.where(col(Campaign.status) == status)
    key = keyset.decode(cursor, [int])
    if key is not None:
        stmt = stmt.where(col(Campaign.id) < key[0])
    rows = list(session.exec(stmt.order_by(col(Campaign.id).desc()).limit(limit + 1)).all())
    page = keyset.page(rows, limit, lambda c: [c.id])
    figs = figures.figures_of(session, page.rows, now=now)
    return Page([_row(c, figs[c.id or 0]) for c in page.rows], page.next_cursor)


def _row(campaign: Campaign, figs: figures.CampaignFigures) -> CampaignRow:
    rules = CampaignRules.model_validate(campaign.rules) if campaign.rules else None
    last = max(t for t in (campaign.updated_at, figs.last_redemption_at) if t is not None)
    return CampaignRow(
        campaign=campaign,
        starts_at=rules.time.starts_at if rules else None,
        ends_at=rules.time.ends_at if rules else None,
        redemptions=campaign.redemption_count,
        max_redemptions=rules.budget.max_redemptions if rules else None,
        discount_given=campaign.discount_total,
        max_discount=rules.budget.max_discount if rules else None,
        last_activity=last,
        figures=figs,
    )
