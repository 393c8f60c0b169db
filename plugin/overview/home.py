"""The home page's facts for one shop: setup status and key figures.

Every query here is bounded, so the page stays fast on a shop with millions of codes:
    campaigns       the shop's campaigns and batches (small tables)
    free codes      counted through the partial index `ix_code_unassigned`, up to FREE_CODES_CAP
    this week       redemptions of the last 7 days through `ix_redemption_shop_created` (a range of the index alone)
    failures        dead jobs, failed deliveries and open alerts, each counted up to FAILURES_CAP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, text
from sqlmodel import Session, col, select

from connectors import MESSAGING_CONNECTORS
from plugin.settings import Settings
from plugin.store.models import (
    FREE_CODE_PREDICATE,
    Alert,
    AuditEvent,
    Batch,
    Campaign,
    Code,
    Job,
    Redemption,
    Shop,
    WebhookEvent,
)

FREE_CODES_CAP = 10_000
FAILURES_CAP = 100
WEEK = timedelta(days=7)
REGISTER_WEBHOOKS = "install.webhooks"  # plugin.platforms.installs' job kind (read here, never run)


@dataclass(frozen=True)
class Bounded:
    """A count that stops at `cap`: shown as "10,000+" rather than scanning further."""

    value: int
    cap: int

    @property
    def more(self) -> bool:
        return self.value > self.cap

    @property
    def shown(self) -> int:
        return min(self.value, self.cap)


@dataclass(frozen=True)
class Setup:
    platform: str
    platform_connected: bool
    webhooks: str  # registered | pending | failed | built_in | not_connected
    providers: tuple[str, ...]  # messaging providers configured on this installation
    has_campaign: bool

    @property
    def done(self) -> bool:
        return self.platform_connected and self.webhooks in ("registered", "built_in") and self.has_campaign


@dataclass(frozen=True)
class Figures:
    active_campaigns: int
    codes_issued: int
    free_codes: Bounded
    redemptions_week: int
    discount_week: dict[str, int] = field(default_factory=dict)  # currency -> minor units
    dead_jobs: Bounded = Bounded(0, FAILURES_CAP)
    failed_deliveries: Bounded = Bounded(0, FAILURES_CAP)
    open_alerts: Bounded = Bounded(0, FAILURES_CAP)

    @property
    def needing_attention(self) -> int:
        return self.dead_jobs.shown + self.failed_deliveries.shown + self.open_alerts.shown

    @property
    def attention_more(self) -> bool:
        """A part was counted only up to its cap: the sum is a floor ("300+"), not a count."""
        return self.dead_jobs.more or self.failed_deliveries.more or self.open_alerts.more


@dataclass(frozen=True)
class Home:
    shop_name: str
    setup: Setup
    figures: Figures


def _bounded(session: Session, inner: object, cap: int) -> Bounded:
    sub = inner.limit(cap + 1).subquery()  # type: ignore[attr-defined]
    return Bounded(int(session.exec(select(func.count()).select_from(sub)).one()), cap)


def _webhooks(session: Session, shop: Shop) -> str:
    if shop.platform == "sandbox":
        return "built_in"
    if shop.access_token_encrypted is None or shop.uninstalled_at is not None:
        return "not_connected"
    registered = session.exec(
        select(AuditEvent.created_at)
        .where(col(AuditEvent.shop_id) == shop.id, col(AuditEvent.action) == "webhooks.registered")
        .order_by(col(AuditEvent.id).desc())
        .limit(1)
    ).first()
    job = session.exec(
        select(Job.status)
        .where(col(Job.shop_id) == shop.id, col(Job.kind) == REGISTER_WEBHOOKS)
        .order_by(col(Job.id).desc())
        .limit(1)
    ).first()
    if job in ("queued", "running"):
        return "pending"
    if job == "dead":
        return "failed"
    return "registered" if registered is not None else "pending"


def setup_status(session: Session, settings: Settings, shop: Shop) -> Setup:
    connected = shop.uninstalled_at is None and (shop.platform == "sandbox" or shop.access_token_encrypted is not None)
    first = session.exec(select(Campaign.id).where(col(Campaign.shop_id) == shop.id).limit(1)).first()
    providers = tuple(sorted(name for name in MESSAGING_CONNECTORS if settings.connector_config.get(name)))
    return Setup(
        platform=shop.platform,
        platform_connected=connected,
        webhooks=_webhooks(session, shop),
        providers=providers,
        has_campaign=first is not None,
    )


def figures(session: Session, shop_id: int, *, now: datetime) -> Figures:
    active_ids = list(
        session.exec(select(Campaign.id).where(col(Campaign.shop_id) == shop_id, col(Campaign.status) == "active")).all()
    )
    issued = session.exec(select(func.coalesce(func.sum(Batch.created), 0)).where(col(Batch.shop_id) == shop_id)).one()
    week = session.exec(
        select(Redemption.currency, func.count(), func.coalesce(func.sum(Redemption.amount), 0))
        .where(
            col(Redemption.shop_id) == shop_id,
            col(Redemption.created_at) >= now - WEEK,
            col(Redemption.status) == "active",
        )
        .group_by(col(Redemption.currency))
    ).all()
    return Figures(
        active_campaigns=len(active_ids),
        codes_issued=int(issued),
        free_codes=_free_codes(session, active_ids),
        redemptions_week=sum(int(n) for _, n, _ in week),
        discount_week={str(cur): int(total) for cur, _, total in week if int(total)},
        dead_jobs=_bounded(session, select(Job.id).where(col(Job.shop_id) == shop_id, col(Job.status) == "dead"), FAILURES_CAP),
        failed_deliveries=_bounded(
            session,
            select(WebhookEvent.id).where(col(WebhookEvent.shop_id) == shop_id, col(WebhookEvent.status) == "failed"),
            FAILURES_CAP,
        ),
        open_alerts=_bounded(
            session, select(Alert.id).where(col(Alert.shop_id) == shop_id, col(Alert.resolved_at).is_(None)), FAILURES_CAP
        ),
    )


def _free_codes(session: Session, campaign_ids: list[int | None]) -> Bounded:
    """Codes free to hand out in the active campaigns, up to the cap: the predicate is written as
    the partial index `ix_code_unassigned` states it, so both databases read that index only."""
    ids = [i for i in campaign_ids if i is not None]
    if not ids:
        return Bounded(0, FREE_CODES_CAP)
    inner = select(Code.id).where(col(Code.campaign_id).in_(ids)).where(text(FREE_CODE_PREDICATE))
    return _bounded(session, inner, FREE_CODES_CAP)


def home(session: Session, settings: Settings, shop_id: int, *, now: datetime) -> Home:
    shop = session.get_one(Shop, shop_id)
    return Home(
        shop_name=shop.name or shop.domain,
        setup=setup_status(session, settings, shop),
        figures=figures(session, shop_id, now=now),
    )
