"""Bulk deactivate (void) by filter, in two calls, so nothing is voided "all" by accident:

1. `confirm_void` counts the active codes a filter names (exact up to `MAX_BULK_VOID`) and
   returns a signed token bound to (shop, filter, count): the admin shows "void 1,234 codes?";
2. `void_by_filter` with that token voids exactly those codes, and only while the filter still
   names that many: a token whose filter now matches a different count is refused
   (`count_changed`), as is an empty filter (`filter_required`), one naming more than
   `MAX_BULK_VOID` codes (`too_many`, narrow it or end the campaign), and an old token.

Each campaign touched gets one platform deactivation through the outbox (as `percode.void`),
and the audit trail one row with who did it, the filter and the count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import update
from sqlmodel import Session, col

from plugin.campaigns import platform
from plugin.codes.listing import CodeFilter, count_codes, matching
from plugin.errors import Conflict, InvalidInput
from plugin.store import eventlog
from plugin.store.models import AuditEvent, Campaign, Code

MAX_BULK_VOID = 100_000
TOKEN_MAX_AGE = 15 * 60  # seconds: long enough to read the dialog, short enough to be this decision
CHUNK = 5_000
EVENT_CODES = 1_000  # codes per `code.voided` event of a bulk void (one event per code would flood receivers)


class FilterRequired(InvalidInput):
    reason = "filter_required"


class CountChanged(Conflict):
    reason = "count_changed"


@dataclass(frozen=True)
class VoidConfirmation:
    count: int
    more: bool  # more than MAX_BULK_VOID: no token, narrow the filter
    token: str | None


def _signer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt="couponry.codes.bulk-void")


def _target(f: CodeFilter) -> CodeFilter:
    """A filter that names something (what is voided are its codes still active)."""
    if f.empty:
        raise FilterRequired("name which codes to void: a campaign, a status, a recipient, a partner or an end")
    if f.status == "voided":
        raise InvalidInput("those codes are voided already", reason="invalid_filter")
    return f


def confirm_void(session: Session, *, shop_id: int, filter: CodeFilter, secret: str) -> VoidConfirmation:
    """How many active codes the filter names, and the token that voids exactly that many."""
    target = _target(filter)
    counted = count_codes(session, shop_id=shop_id, filter=target, bound=MAX_BULK_VOID, only_active=True)
    if counted.more:
        return VoidConfirmation(counted.count, True, None)
    token = _signer(secret).dumps({"shop": shop_id, "filter": target.as_dict(), "count": counted.count})
    return VoidConfirmation(counted.count, False, token)


def void_by_filter(
    session: Session, *, shop_id: int, token: str, secret: str, actor: str, now: datetime, reason: str = ""
) -> int:
    """Void the codes a confirmation named; returns how many were voided (the confirmed count)."""
    try:
        data: dict[str, Any] = _signer(secret).loads(token, max_age=TOKEN_MAX_AGE)
    except BadSignature:
        raise InvalidInput("this confirmation is not valid any more: count the codes again", reason="bad_token") from None
    if data.get("shop") != shop_id:
        raise InvalidInput("this confirmation is not valid any more: count the codes again", reason="bad_token")
    target = _target(CodeFilter.from_dict(data["filter"]))
    expected = int(data["count"])
    query = matching(shop_id, target, only_active=True).with_only_columns(col(Code.id)).limit(MAX_BULK_VOID + 1)
    ids = [int(i) for (i,) in session.execute(query).all()]
    if len(ids) != expected:
        raise CountChanged(f"the filter now names {len(ids):,} codes, not {expected:,}: count them again")
    campaigns: set[int] = set()
    voided_codes: dict[int, list[str]] = {}
    voided = 0
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        result = session.execute(
            update(Code)
            .where(col(Code.id).in_(chunk), col(Code.shop_id) == shop_id, col(Code.status) == "active")
            .values(status="voided")
            .returning(col(Code.campaign_id), col(Code.code))
        )
        moved = result.all()
        voided += len(moved)
        for campaign_id, stored in moved:
            campaigns.add(int(campaign_id))
            voided_codes.setdefault(int(campaign_id), []).append(str(stored))
    if voided != expected:  # a code changed between the read and the update: none of it stands
        raise CountChanged(f"{expected - voided:,} of the codes changed meanwhile: count them again")
    conn = session.connection()
    for campaign_id, stored_codes in sorted(voided_codes.items()):  # one `code.voided` event per campaign and chunk
        for start in range(0, len(stored_codes), EVENT_CODES):
            data = {"campaign_id": campaign_id, "codes": stored_codes[start : start + EVENT_CODES], "reason": reason[:500]}
            eventlog.emit(conn, shop_id=shop_id, type="code.voided", data=data, now=now)
    installed = platform.is_installed(session, shop_id)
    for campaign_id in sorted(campaigns):
        # as percode.void: only where a platform discount holds the codes and the app is installed
        campaign = session.get(Campaign, campaign_id)
        if installed and campaign is not None and campaign.platform_discount_id is not None:
            platform.enqueue_deactivate(session, shop_id=shop_id, campaign_id=campaign_id)
    session.add(
        AuditEvent(
            shop_id=shop_id,
            action="codes.bulk_voided",
            subject=f"codes:{len(campaigns)} campaigns",
            actor=actor,
            details={"filter": target.as_dict(), "count": voided, "campaigns": sorted(campaigns), "reason": reason[:500]},
            created_at=now,
        )
    )
    session.flush()
    return voided
