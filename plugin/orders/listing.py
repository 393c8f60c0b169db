"""Redemptions and webhook deliveries for the admin's Redemption syncs page: filtered, newest
first, a keyset page at a time (no OFFSET, no total count)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from plugin.errors import InvalidInput, NotFound
from plugin.rules.refusals import CATALOGUE, Reason
from plugin.store import keyset
from plugin.store.keyset import Page
from plugin.store.models import Redemption, WebhookEvent

REDEMPTION_STATUSES = ("active", "rolled_back")
REDEMPTION_SOURCES = ("api", "webhook")
DELIVERY_STATUSES = ("received", "processed", "deferred", "failed", "ignored")


def _window(since: datetime | None, until: datetime | None) -> None:
    for value in (since, until):
        if value is not None and value.tzinfo is None:
            raise InvalidInput("dates need a timezone, e.g. 2027-01-31T00:00:00Z", reason="invalid_filter")


@dataclass(frozen=True)
class RedemptionFilter:
    campaign_id: int | None = None
    status: str | None = None  # active | rolled_back
    source: str | None = None  # api (checkout calls) | webhook (the platform's orders)
    flagged: bool | None = None  # broke a rule the platform did not hold
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in REDEMPTION_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(REDEMPTION_STATUSES)}", reason="invalid_filter")
        if self.source is not None and self.source not in REDEMPTION_SOURCES:
            raise InvalidInput(f"source must be one of {', '.join(REDEMPTION_SOURCES)}", reason="invalid_filter")
        _window(self.since, self.until)


def list_redemptions(
    session: Session, *, shop_id: int, filter: RedemptionFilter, cursor: str | None = None, limit: int = 50
) -> Page[Redemption]:
    f = filter
    stmt = select(Redemption).where(col(Redemption.shop_id) == shop_id)
    if f.campaign_id is not None:
        stmt = stmt.where(col(Redemption.campaign_id) == f.campaign_id)
    if f.status is not None:
        stmt = stmt.where(col(Redemption.status) == f.status)
    if f.source is not None:
        stmt = stmt.where(col(Redemption.source) == f.source)
    if f.flagged is not None:
        flagged = col(Redemption.flagged_reason)
        stmt = stmt.where(flagged.is_not(None) if f.flagged else flagged.is_(None))
    if f.since is not None:
        stmt = stmt.where(col(Redemption.created_at) >= f.since)
    if f.until is not None:
        stmt = stmt.where(col(Redemption.created_at) < f.until)
    limit = keyset.clamp(limit)
    key = keyset.decode(cursor, [int])
    if key is not None:
        stmt = stmt.where(col(Redemption.id) < key[0])
    rows = session.exec(stmt.order_by(col(Redemption.id).desc()).limit(limit + 1)).all()
    return keyset.page(rows, limit, lambda r: [r.id])


@dataclass(frozen=True)
class DeliveryFilter:
    platform: str | None = None
    status: str | None = None  # received | processed | deferred | failed | ignored
    flagged: bool | None = None
    since: datetime | None = None  # received at or after
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in DELIVERY_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(DELIVERY_STATUSES)}", reason="invalid_filter")
        _window(self.since, self.until)


def list_deliveries(
    session: Session, *, shop_id: int, filter: DeliveryFilter, cursor: str | None = None, limit: int = 50
) -> Page[WebhookEvent]:
    """The shop's stored webhook deliveries (payload included: the admin shows the stored delivery)."""
    f = filter
    stmt = select(WebhookEvent).where(col(WebhookEvent.shop_id) == shop_id)
    if f.platform is not None:
        stmt = stmt.where(col(WebhookEvent.platform) == f.platform)
    if f.status is not None:
        stmt = stmt.where(col(WebhookEvent.status) == f.status)
    if f.flagged is not None:
        stmt = stmt.where(col(WebhookEvent.flagged) == f.flagged)
    if f.since is not None:
        stmt = stmt.where(col(WebhookEvent.received_at) >= f.since)
    if f.until is not None:
        stmt = stmt.where(col(WebhookEvent.received_at) < f.until)
    limit = keyset.clamp(limit)
    key = keyset.decode(cursor, [int])
    if key is not None:
        stmt = stmt.where(col(WebhookEvent.id) < key[0])
    rows = session.exec(stmt.order_by(col(WebhookEvent.id).desc()).limit(limit + 1)).all()
    return keyset.page(rows, limit, lambda r: [r.id])


# --- misuse flags, in a merchant's words ---------------------------------------------------------

_OTHER_FLAGS = {
    "self_referral": "The referrer used their own referral code (or a friend's order shipped to the referrer's address): "
    "no reward was given.",
}


def explain_flag(reason: str | None) -> str | None:
    """Why a redemption or delivery was flagged, as a merchant reads it: the platform accepted
    the order, but our rules would have refused the code for this reason."""
    if not reason:
        return None
    if reason in _OTHER_FLAGS:
        return _OTHER_FLAGS[reason]
    try:
        info = CATALOGUE[Reason(reason)]
    except ValueError:
        return f"The order broke a rule of the campaign ({reason.replace('_', ' ')})."
    return f"The platform accepted this order, but Couponry's rules would have refused the code: {info.merchant_description}"


def get_redemption(session: Session, *, shop_id: int, redemption_id: int) -> Redemption:
    found = session.exec(
        select(Redemption).where(col(Redemption.id) == redemption_id, col(Redemption.shop_id) == shop_id)
    ).first()
    if found is None:
        raise NotFound(f"redemption {redemption_id} does not exist in this shop", reason="redemption_not_found")
    return found
