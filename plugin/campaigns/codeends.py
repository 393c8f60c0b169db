"""When each code of a campaign stops working, as the platforms must be told.

A code's effective end is the earliest of its explicit `expires_at` (a claim's relative expiry,
an extension, an import), its relative expiry from issue (`created_at` + the duration of its
batch's rules) and the campaign's `ends_at` (`plugin.rules.code_expires_at`). Only the explicit
one is stored: an end relative to issue follows the rules of the day, so it is computed here
from `created_at`, per batch (a batch may override the relative expiry).

    CodeEnds.load(session, campaign)   the campaign's rules and its batches' overrides, read once
    ends.end(...)                      one code's effective end (pushes, reconciliation)
    ends.issue_lapsed(now)             SQL: the codes whose end relative to issue has passed

A code's end that changes after it may have reached a platform that holds an end per code (a
claim starting a relative expiry, an extension) is noted in `code_end_change` and the `sync.ends`
job queued, in the caller's transaction (`note_end_change`); the job (plugin.platforms.expiry) sends it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from connectors import UnknownConnector, shop_connector_class
from connectors.base import CodeEndControl
from plugin.rules import CampaignRules, RulesOverride, apply_override, code_expires_at
from plugin.store import outbox
from plugin.store.jobstore import aware
from plugin.store.models import Batch, Campaign, Code, CodeEndChange, Shop


@dataclass(frozen=True)
class CodeEnds:
    """A campaign's rules as they decide its codes' ends: the campaign's, and each batch's that
    overrides the relative expiry (the other overrides don't move an end)."""

    rules: CampaignRules | None
    batches: dict[int, CampaignRules] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, campaign: Campaign) -> CodeEnds:
        if not campaign.rules:
            return cls(None)
        rules = CampaignRules.model_validate(campaign.rules)
        batches: dict[int, CampaignRules] = {}
        rows = session.exec(select(Batch.id, Batch.rules_override).where(col(Batch.campaign_id) == campaign.id)).all()
        for batch_id, override in rows:
            if batch_id is not None and override and "relative_expiry" in override:
                batches[batch_id] = apply_override(rules, RulesOverride.model_validate(override))
        return cls(rules, batches)

    def _rules(self, batch_id: int | None) -> CampaignRules | None:
        return self.batches.get(batch_id, self.rules) if batch_id is not None else self.rules

    def end(
        self, batch_id: int | None, created_at: datetime, assigned_at: datetime | None, explicit: datetime | None
    ) -> datetime | None:
        """The code's effective end (None: it never expires)."""
        rules = self._rules(batch_id)
        explicit = aware(explicit) if explicit is not None else None
        if rules is None:
            return explicit
        return code_expires_at(rules, aware(created_at), aware(assigned_at) if assigned_at else None, explicit)

    def of(self, code: Code) -> datetime | None:
        return self.end(code.batch_id, code.created_at, code.assigned_at, code.expires_at)

    def issue_durations(self) -> dict[int | None, timedelta]:
        """The relative expiry from issue of the campaign (key None) and of each batch that sets
        its own; a batch that sets none (or one from assignment) is absent."""
        out: dict[int | None, timedelta] = {}
        for key, rules in [(None, self.rules), *self.batches.items()]:
            relative = rules.time.relative_expiry if rules is not None else None
            if relative is not None and relative.after == "issue":
                out[key] = relative.delta()
        return out

    def issue_lapsed(self, now: datetime) -> ColumnElement[bool]:
        """SQL condition: the code's relative expiry from issue has passed at `now`. Each term
        is a `created_at` bound within a batch (or the campaign's batches without an override),
        so it narrows a scan on ix_code_campaign_batch."""
        durations = self.issue_durations()
        terms: list[Any] = []
        if None in durations:
            own = col(Code.batch_id).is_(None) | col(Code.batch_id).not_in(list(self.batches) or [-1])
            terms.append(and_(own, col(Code.created_at) <= now - durations[None]))
        for batch_id, delta in durations.items():
            if batch_id is not None:
                terms.append(and_(col(Code.batch_id) == batch_id, col(Code.created_at) <= now - delta))
        return or_(*terms) if terms else false()


# --- ends that changed after a push -------------------------------------------------------------

ENDS = "sync.ends"
_change = CodeEndChange.__table__  # type: ignore[attr-defined]


def holds_code_ends(platform: str) -> bool:
    """Whether the platform holds an end per code (else expired codes are swept off it)."""
    try:
        return issubclass(shop_connector_class(platform), CodeEndControl)
    except UnknownConnector:
        return False


def note_end_change(session: Session, *, shop_id: int, campaign_id: int, code_id: int, now: datetime) -> bool:
    """In the caller's transaction: the code's end changed. Where its campaign has a platform
    discount on a platform that holds an end per code (and the app is installed), note it and
    queue the `sync.ends` job (one queued per campaign covers every change before it starts).
    Noted whatever the code's sync status: a push in flight may have read the old end."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.platform_discount_id is None:
        return False  # the first push carries the end
    shop = session.get(Shop, shop_id)
    if shop is None or shop.uninstalled_at is not None or not holds_code_ends(shop.platform):
        return False
    conn = session.connection()
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(_change).values(code_id=code_id, shop_id=shop_id, campaign_id=campaign_id, changed_at=now)
    conn.execute(stmt.on_conflict_do_update(index_elements=["code_id"], set_={"changed_at": stmt.excluded.changed_at}))
    enqueue_ends(session, shop_id=shop_id, campaign_id=campaign_id)
    return True


def enqueue_ends(session: Session, *, shop_id: int, campaign_id: int) -> int | None:
    return outbox.enqueue(session, ENDS, {"campaign_id": campaign_id}, shop_id, dedupe_key=f"{ENDS}:{campaign_id}")


def ends_waiting(session: Session, *, campaign_id: int) -> bool:
    """Whether some code of the campaign has a changed end not yet sent."""
    found = session.exec(select(CodeEndChange.code_id).where(col(CodeEndChange.campaign_id) == campaign_id).limit(1)).first()
    return found is not None
