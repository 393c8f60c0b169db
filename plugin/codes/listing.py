"""Codes by filter, a keyset page at a time (the admin's Codes page and bulk void).

Newest first (id descending), except with `expiring_before`, which lists by end, soonest first.
Each filter is served by an index or is dense enough to scan for: a campaign's codes
(ix_code_campaign_id, in id order: no sort), a recipient (uq_code_campaign_recipient), a partner (ix_code_partner),
an end (ix_code_campaign_expiry / ix_code_expiry), voided codes (ix_code_not_active) and codes
whose sync failed (ix_code_sync_failed); "used" and the other sync statuses read the campaign's
codes newest first until a page is full."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from plugin.errors import InvalidInput
from plugin.rules.recipients import normalise_recipient
from plugin.store import keyset
from plugin.store.keyset import Page
from plugin.store.models import Code

CodeStatus = Literal["active", "voided", "used", "unused", "assigned"]
SYNC_STATUSES = ("pending", "synced", "failed", "deactivated")
STATUSES = ("active", "voided", "used", "unused", "assigned")


@dataclass(frozen=True)
class CodeFilter:
    """Which codes: every field given narrows the set; none given is "every code of the shop"."""

    campaign_id: int | None = None
    status: CodeStatus | None = None
    sync_status: str | None = None
    recipient: str | None = None  # as typed: an email, a + phone or id:<customer id>
    partner_id: int | None = None
    expiring_before: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", reason="invalid_filter")
        if self.sync_status is not None and self.sync_status not in SYNC_STATUSES:
            raise InvalidInput(f"sync_status must be one of {', '.join(SYNC_STATUSES)}", reason="invalid_filter")
        if self.expiring_before is not None and self.expiring_before.tzinfo is None:
            raise InvalidInput("expiring_before needs a timezone", reason="invalid_filter")

    @property
    def empty(self) -> bool:
        return all(v is None for v in asdict(self).values())

    def as_dict(self) -> dict[str, Any]:
        """The filter in plain JSON values (what a confirmation token binds)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.expiring_before is not None:
            out["expiring_before"] = self.expiring_before.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodeFilter:
        data = dict(data)
        if data.get("expiring_before"):
            data["expiring_before"] = datetime.fromisoformat(data["expiring_before"])
        return cls(**data)


def matching(shop_id: int, f: CodeFilter, *, only_active: bool = False) -> SelectOfScalar[Code]:
    """The codes of the shop the filter names (unordered); `only_active`: those not voided."""
    stmt = select(Code).where(col(Code.shop_id) == shop_id)
    if only_active and f.status != "active":
        stmt = stmt.where(col(Code.status) == "active")
    if f.campaign_id is not None:
        stmt = stmt.where(col(Code.campaign_id) == f.campaign_id)
    if f.status == "active":
        stmt = stmt.where(col(Code.status) == "active")
    elif f.status == "voided":
        stmt = stmt.where(col(Code.status) != "active")  # written as ix_code_not_active's predicate
    elif f.status == "used":
        stmt = stmt.where(col(Code.uses) > 0)
    elif f.status == "unused":
        stmt = stmt.where(col(Code.status) == "active", col(Code.uses) == 0)
    elif f.status == "assigned":
        stmt = stmt.where(col(Code.recipient).is_not(None))
    if f.sync_status is not None:
        stmt = stmt.where(col(Code.sync_status) == f.sync_status)
    if f.recipient is not None:
        try:
            key = normalise_recipient(f.recipient)
        except ValueError as exc:
            raise InvalidInput(str(exc), reason="invalid_filter") from exc
        stmt = stmt.where(col(Code.recipient) == key)
    if f.partner_id is not None:
        stmt = stmt.where(col(Code.partner_id) == f.partner_id)
    if f.expiring_before is not None:
        stmt = stmt.where(col(Code.expires_at).is_not(None), col(Code.expires_at) < f.expiring_before)
    return stmt


def list_codes(session: Session, *, shop_id: int, filter: CodeFilter, cursor: str | None = None, limit: int = 50) -> Page[Code]:
    """One page of the codes the filter names, and the next page's cursor."""
    limit = keyset.clamp(limit)
    stmt = matching(shop_id, filter)
    if filter.expiring_before is not None:
        order = [col(Code.expires_at), col(Code.id)]
        key = keyset.decode(cursor, [datetime, int])
        if key is not None:
            stmt = stmt.where(keyset.after(order, key, descending=False))
        rows = session.exec(stmt.order_by(*order).limit(limit + 1)).all()
        return keyset.page(rows, limit, lambda c: [c.expires_at, c.id])
    key = keyset.decode(cursor, [int])
    if key is not None:
        stmt = stmt.where(col(Code.id) < key[0])
    rows = session.exec(stmt.order_by(col(Code.id).desc()).limit(limit + 1)).all()
    return keyset.page(rows, limit, lambda c: [c.id])


@dataclass(frozen=True)
class BoundedCount:
    """How many codes a filter names: exact up to `bound`, else "more than `bound`"."""

    count: int
    more: bool
    bound: int

    def __str__(self) -> str:
        return f"more than {self.bound:,}" if self.more else f"{self.count:,}"


def count_codes(
    session: Session, *, shop_id: int, filter: CodeFilter, bound: int = 100_000, only_active: bool = False
) -> BoundedCount:
    """Count the codes the filter names, reading at most `bound + 1` of them."""
    ids = matching(shop_id, filter, only_active=only_active).with_only_columns(col(Code.id)).limit(bound + 1).subquery()
    n = int(session.exec(select(func.count()).select_from(ids)).one())
    return BoundedCount(min(n, bound), n > bound, bound)
