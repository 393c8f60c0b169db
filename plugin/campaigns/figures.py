"""The admin's figures, read from the counters kept with the writes (plugin.store.counters),
never by counting a campaign's codes: a handful of rows per campaign, whatever its size.

What each figure means (the counters hold them exactly; `recount` rebuilds them from the rows):

- `codes`: codes issued (generated, imported, reissued), whatever became of them;
- `live`: codes a shopper could still use alone: not voided, never used, and not past an end of
  their own (`expires_at`). The campaign's own status and `ends_at` are not applied (the campaign
  shows them beside it), nor a relative expiry not yet stamped on a code (as exposure);
- `assigned`: codes given to someone (a claim, an import with a person, a partner slot, a reissue);
- `used`: codes used at least once; `redeemed` / `discount_given`: redemptions still standing and
  the discount they gave (the campaign's budget counters); `rolled_back`: redemptions undone;
- `exposure`: the most the campaign can still cost (plugin.rules.exposure);
- `sync`: codes per sync status.

Codes whose own end passed are found through `ix_code_campaign_expiry` (only codes that have an
end of their own are in it), so reading a figure costs a few index lookups, not a scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import case
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, func, select

from plugin.rules import CampaignRules, CampaignState, CampaignStatus, Exposure, OpenUses, RulesOverride, apply_override, exposure
from plugin.store import counters, rollups
from plugin.store.models import Batch, Campaign, CampaignStats, Code, Redemption, ShopDayStats

__all__ = [
    "CampaignFigures",
    "Lapsed",
    "RecountReport",
    "ShopWeek",
    "active_codes",
    "campaign_exposure",
    "campaign_figures",
    "campaign_stats",
    "code_count",
    "figures_of",
    "recount",
    "shop_week",
    "sync_counts",
]


@dataclass(frozen=True)
class Lapsed:
    """Active codes of one batch whose own end has passed: what the counters still hold as live."""

    codes: int = 0
    uses: int = 0
    unused: int = 0


@dataclass(frozen=True)
class CampaignFigures:
    campaign_id: int
    codes: int
    live: int
    assigned: int
    used: int
    redeemed: int
    rolled_back: int
    discount_given: int
    exposure: Exposure | None
    sync: dict[str, int]
    last_redemption_at: datetime | None


def campaign_stats(session: Session, campaign_ids: list[int]) -> dict[int, list[CampaignStats]]:
    """The counter rows (one per batch) of each campaign."""
    out: dict[int, list[CampaignStats]] = {cid: [] for cid in campaign_ids}
    if not campaign_ids:
        return out
    for row in session.exec(select(CampaignStats).where(col(CampaignStats.campaign_id).in_(campaign_ids))).all():
        out[row.campaign_id].append(row)
    return out


def _lapsed(session: Session, campaign_ids: list[int], now: datetime) -> dict[tuple[int, int], Lapsed]:
    """(campaign, batch key) -> the active codes past their own end, by ix_code_campaign_expiry."""
    if not campaign_ids:
        return {}
    rows = session.execute(
        sa_select(
            col(Code.campaign_id),
            col(Code.batch_id),
            func.count(),
            func.coalesce(func.sum(Code.uses), 0),
            func.coalesce(func.sum(case((col(Code.uses) == 0, 1), else_=0)), 0),
        )
        .where(
            col(Code.campaign_id).in_(campaign_ids),
            col(Code.expires_at).is_not(None),
            col(Code.expires_at) <= now,
            col(Code.status) == "active",
        )
        .group_by(col(Code.campaign_id), col(Code.batch_id))
    ).all()
    return {(int(c), int(b or 0)): Lapsed(int(n), int(u), int(z)) for c, b, n, u, z in rows}


def _sum(rows: list[CampaignStats], name: str) -> int:
    return sum(int(getattr(r, name)) for r in rows)


def sync_counts_of(rows: list[CampaignStats]) -> dict[str, int]:
    """Codes per sync status, only the statuses some code has (as a GROUP BY would answer)."""
    counts = {status: _sum(rows, f"sync_{status}") for status in counters.SYNC_STATUSES}
    return {status: n for status, n in counts.items() if n}


def sync_counts(session: Session, *, shop_id: int, campaign_id: int) -> dict[str, int]:
    rows = [r for r in campaign_stats(session, [campaign_id])[campaign_id] if r.shop_id == shop_id]
    return sync_counts_of(rows)


def code_count(session: Session, *, campaign_id: int) -> int:
    return _sum(campaign_stats(session, [campaign_id])[campaign_id], "codes")


def _overrides(session: Session, rows: list[CampaignStats]) -> dict[int, Any]:
    """Batch id -> its rules override (None: the campaign's rules), for these counters' batches, in
    one query: a listing page asked for each batch on its own (25 round trips, ~90 ms on PostgreSQL)."""
    ids = sorted({r.batch_key for r in rows if r.batch_key})
    if not ids:
        return {}
    found = session.execute(sa_select(col(Batch.id), col(Batch.rules_override)).where(col(Batch.id).in_(ids))).all()
    return {int(batch_id): override for batch_id, override in found}


def _exposure(
    session: Session,
    campaign: Campaign,
    rows: list[CampaignStats],
    lapsed: dict[tuple[int, int], Lapsed],
    now: datetime,
    overrides: dict[int, Any] | None = None,
) -> Exposure | None:
    """The most the campaign can still cost, from its live codes' open uses per batch: live here
    is not voided and not past an explicit `expires_at` (plugin.rules.exposure), used or not."""
    if not campaign.rules:
        return None
    rules = CampaignRules.model_validate(campaign.rules)
    groups: list[OpenUses] = []
    for row in rows:
        gone = lapsed.get((row.campaign_id, row.batch_key), Lapsed())
        count, used = row.active - gone.codes, row.active_uses - gone.uses
        if count <= 0:
            continue
        if overrides is None:
            overrides = _overrides(session, rows)
        raw = overrides.get(row.batch_key) if row.batch_key else None
        override = RulesOverride.model_validate(raw) if raw else None
        effective = apply_override(rules, override)
        limit = effective.usage.uses_per_code
        groups.append(OpenUses(rules=effective, uses=None if limit is None else max(limit * count - used, 0)))
    state = CampaignState(
        rules=rules,
        status=CampaignStatus(campaign.status),
        redemptions=campaign.redemption_count,
        discount_given=campaign.discount_total,
    )
    return exposure(state, groups, now=now)


def campaign_exposure(session: Session, campaign: Campaign, *, now: datetime) -> Exposure | None:
    assert campaign.id is not None
    rows = campaign_stats(session, [campaign.id])[campaign.id]
    return _exposure(session, campaign, rows, _lapsed(session, [campaign.id], now), now)


def figures_of(session: Session, campaigns: list[Campaign], *, now: datetime) -> dict[int, CampaignFigures]:
    """Figures of several campaigns (a listing page) in four queries."""
    ids = [c.id for c in campaigns if c.id is not None]
    stats = campaign_stats(session, ids)
    lapsed = _lapsed(session, ids, now)
    overrides = _overrides(session, [r for rows in stats.values() for r in rows])
    out: dict[int, CampaignFigures] = {}
    for campaign in campaigns:
        assert campaign.id is not None
        rows = stats[campaign.id]
        gone = [lapsed.get((r.campaign_id, r.batch_key), Lapsed()) for r in rows]
        last = [r.last_redemption_at for r in rows if r.last_redemption_at is not None]
        out[campaign.id] = CampaignFigures(
            campaign_id=campaign.id,
            codes=_sum(rows, "codes"),
            live=_sum(rows, "unused") - sum(g.unused for g in gone),
            assigned=_sum(rows, "assigned"),
            used=_sum(rows, "used"),
            redeemed=campaign.redemption_count,
            rolled_back=_sum(rows, "rolled_back"),
            discount_given=campaign.discount_total,
            exposure=_exposure(session, campaign, rows, lapsed, now, overrides),
            sync=sync_counts_of(rows),
            last_redemption_at=max(last) if last else None,
        )
    return out


def campaign_figures(session: Session, campaign: Campaign, *, now: datetime) -> CampaignFigures:
    assert campaign.id is not None
    return figures_of(session, [campaign], now=now)[campaign.id]


def active_codes(session: Session, campaign_ids: list[int], *, now: datetime) -> int:
    """Codes of these campaigns not voided and not past an end of their own, used or not (at
    checkout any of them answers a guess: plugin.campaigns.issuing's capacity check)."""
    stats = campaign_stats(session, campaign_ids)
    gone = _lapsed(session, campaign_ids, now)
    return sum(_sum(rows, "active") for rows in stats.values()) - sum(g.codes for g in gone.values())


# --- the shop's week ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopWeek:
    """Redemptions still standing and the discount they gave, per UTC day, the last `days` days
    up to and including `today` (days without any are 0)."""

    days: list[tuple[date, int, int]]
    redemptions: int
    discount: int


def shop_week(session: Session, *, shop_id: int, today: date, days: int = 7) -> ShopWeek:
    first = today - timedelta(days=days - 1)
    rows = session.exec(
        select(ShopDayStats).where(
            col(ShopDayStats.shop_id) == shop_id, col(ShopDayStats.day) >= first, col(ShopDayStats.day) <= today
        )
    ).all()
    by_day = {r.day: r for r in rows}
    series = []
    for n in range(days):
        day = first + timedelta(days=n)
        row = by_day.get(day)
        series.append((day, row.redemptions if row else 0, row.discount if row else 0))
    return ShopWeek(series, sum(s[1] for s in series), sum(s[2] for s in series))


# --- repair -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecountReport:
    """What a recount changed: each counter that was off, as (key, column, was, now)."""

    changed: list[tuple[str, str, Any, Any]] = field(default_factory=list)


def _snapshot(session: Session, shop_id: int | None) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    stats = select(CampaignStats)
    days = select(ShopDayStats)
    camps = select(Campaign)
    if shop_id is not None:
        stats = stats.where(col(CampaignStats.shop_id) == shop_id)
        days = days.where(col(ShopDayStats.shop_id) == shop_id)
        camps = camps.where(col(Campaign.shop_id) == shop_id)
    for s in session.exec(stats).all():
        for name in (*counters.STAT_COLUMNS, "last_redemption_at"):
            out[(f"campaign:{s.campaign_id}/batch:{s.batch_key}", name)] = getattr(s, name)
    for d in session.exec(days).all():
        out[(f"shop:{d.shop_id}/day:{d.day.isoformat()}", "redemptions")] = d.redemptions
        out[(f"shop:{d.shop_id}/day:{d.day.isoformat()}", "discount")] = d.discount
    for c in session.exec(camps).all():
        out[(f"campaign:{c.id}", "redemption_count")] = c.redemption_count
        out[(f"campaign:{c.id}", "discount_total")] = c.discount_total
    return {k: v for k, v in out.items() if v not in (0, None)}


def _recount_budgets(session: Session, shop_id: int | None) -> None:
    """The campaigns' budget counters (redemptions standing, discount given) from the rows."""
    standing = select(Redemption.campaign_id, func.count(), func.coalesce(func.sum(Redemption.amount), 0)).where(
        col(Redemption.status) == "active", col(Redemption.campaign_id).is_not(None)
    )
    camps = select(Campaign)
    if shop_id is not None:
        standing = standing.where(col(Redemption.shop_id) == shop_id)
        camps = camps.where(col(Campaign.shop_id) == shop_id)
    grouped = session.exec(standing.group_by(col(Redemption.campaign_id))).all()
    totals = {int(cid or 0): (int(n), int(amount)) for cid, n, amount in grouped}
    for campaign in session.exec(camps).all():
        n, amount = totals.get(campaign.id or 0, (0, 0))
        if (campaign.redemption_count, campaign.discount_total) != (n, amount):
            campaign.redemption_count, campaign.discount_total = n, amount
            session.add(campaign)
    session.flush()


def recount(session: Session, *, shop_id: int | None = None) -> RecountReport:
    """Rebuild every counter of one shop (or all) from the rows and say which ones were off.

    On PostgreSQL it holds a SHARE lock on codes and redemptions until the transaction ends (writes
    wait, reads go on): run it when a figure looks wrong, not on a schedule."""
    before = _snapshot(session, shop_id)
    session.flush()
    counters.rebuild(session.connection(), shop_id=shop_id)
    rollups.rebuild(session.connection(), shop_id=shop_id)  # results' days in each shop's time zone
    _recount_budgets(session, shop_id)
    session.expire_all()
    after = _snapshot(session, shop_id)
    changed = [
        (k[0], k[1], before.get(k), after.get(k)) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)
    ]
    return RecountReport(changed)
