"""Expiry reminders: N days before a recipient's code expires unused (the campaign's
`distribution.remind_days_before_expiry`), the provider that delivered it is told, so the
merchant's own flow reminds them.

The reminder is the delivery pushed again with one more field, `coupon_reminder_at` (the moment
the reminder fell due, ISO 8601): a profile property on Klaviyo and Braze, the COUPONREM merge
field on Mailchimp, a custom field on SendGrid. A merchant's flow triggers on it (Klaviyo: a
date-property or property-change flow; Braze: "change custom attribute value"; Mailchimp and
SendGrid: an automation on the field). It rides the same push job as the code itself
(plugin.distribution.pushes), so it is sent once under the same faults, and the value is fixed
when it falls due (`RecipientDelivery.reminded_at`), so a repeated attempt sets the same thing.

Only deliveries the provider took (sent, accepted, delivered) are reminded, once each, and only
while the code is unused, active and not yet expired; a code used or voided between falling due
and the push is `skipped`. Twilio is left out: a push there is a text message, and a second one
is a message the merchant has not written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from sqlalchemy import Engine, and_, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from plugin.distribution import pushes
from plugin.rules.evaluation import code_expires_at
from plugin.store import caches
from plugin.store.db import run, session_scope
from plugin.store.models import Batch, Campaign, Code, RecipientDelivery, utcnow

if TYPE_CHECKING:
    from plugin.store.jobcontext import JobContext

REMINDABLE = ("klaviyo", "braze", "mailchimp", "sendgrid")  # providers that store a field
TAKEN = ("sent", "accepted", "delivered")  # the provider has the code
CHUNK = 1_000  # deliveries read (and queued) per statement

_delivery = RecipientDelivery.__table__  # type: ignore[attr-defined]
_code = Code.__table__  # type: ignore[attr-defined]
_batch = Batch.__table__  # type: ignore[attr-defined]


def _reminded_campaigns(session: Session) -> list[tuple[Campaign, int]]:
    """Active campaigns that ask for reminders, with their number of days."""
    found = []
    for campaign in session.exec(select(Campaign).where(col(Campaign.status) == "active")).all():
        days = (campaign.rules.get("distribution") or {}).get("remind_days_before_expiry")
        if isinstance(days, int) and days > 0:
            found.append((campaign, days))
    return found


def queue_due(session: Session, *, now: datetime) -> int:
    """Queue again, with `reminded_at = now`, every delivery whose code now falls within its
    campaign's reminder window; one push job per campaign and provider. Returns how many."""
    queued = 0
    for campaign, days in _reminded_campaigns(session):
        assert campaign.id is not None
        due = _due_deliveries(session, campaign, until=now + timedelta(days=days), now=now)
        by_provider: dict[str, list[int]] = defaultdict(list)
        for delivery_id, provider in due:
            by_provider[provider].append(delivery_id)
        for provider, ids in by_provider.items():
            marked = 0
            for start in range(0, len(ids), CHUNK):
                result = session.connection().execute(
                    update(_delivery)
                    .where(
                        _delivery.c.id.in_(ids[start : start + CHUNK]),
                        _delivery.c.status.in_(TAKEN),  # a push since the read decides again next time
                        _delivery.c.reminded_at.is_(None),
                    )
                    .values(status="queued", reminded_at=now, updated_at=now)
                )
                marked += result.rowcount
            if marked:
                pushes.queue_push_job(session, campaign.shop_id, campaign.id, provider)
                queued += marked
    return queued


def _due_deliveries(session: Session, campaign: Campaign, *, until: datetime, now: datetime) -> list[tuple[int, str]]:
    """(delivery id, provider) of the campaign's unreminded deliveries whose code is unused,
    active and expires in (now, until]. The expiry is each code's own (`code_expires_at`: its
    explicit end, relative expiry and the campaign's end, batch overrides applied)."""
    rules_text = json.dumps(campaign.rules)
    found: list[tuple[int, str]] = []
    after = 0
    while True:
        rows = (
            session.connection()
            .execute(
                core_select(
                    _delivery.c.id,
                    _delivery.c.provider,
                    _code.c.created_at,
                    _code.c.assigned_at,
                    _code.c.expires_at,
                    _batch.c.rules_override,
                )
                .select_from(
                    _delivery.join(_code, _code.c.id == _delivery.c.code_id).outerjoin(_batch, _batch.c.id == _code.c.batch_id)
                )
                .where(
                    _delivery.c.shop_id == campaign.shop_id,
                    _delivery.c.campaign_id == campaign.id,
                    _delivery.c.id > after,
                    _delivery.c.provider.in_(REMINDABLE),
                    _delivery.c.status.in_(TAKEN),
                    _delivery.c.reminded_at.is_(None),
                    and_(_code.c.uses == 0, _code.c.status == "active", _code.c.recipient == _delivery.c.recipient),
                )
                .order_by(_delivery.c.id)
                .limit(CHUNK)
            )
            .all()
        )
        if not rows:
            return found
        after = rows[-1][0]
        for delivery_id, provider, created_at, assigned_at, expires_at, override in rows:
            rules = caches.effective_rules(rules_text, json.dumps(override) if override else None)
            if rules is None:
                continue
            ends = code_expires_at(rules, created_at, assigned_at, expires_at)  # aware: UtcDateTime columns
            if ends is not None and now < ends <= until:
                found.append((delivery_id, provider))


@dataclass
class ReminderSweep:
    """The worker's sweep: reminders that fell due, looked for every `every`."""

    every: timedelta = timedelta(minutes=15)
    last: datetime | None = None

    async def __call__(self, ctx: JobContext) -> int:
        now = utcnow()
        if self.last is not None and now - self.last < self.every:
            return 0
        engine = ctx.engine
        queued = await run(engine, partial(_queue_due, engine, now))
        self.last = now
        return queued


def _queue_due(engine: Engine, now: datetime) -> int:
    with session_scope(engine) as session:
        return queue_due(session, now=now)


__all__ = ["REMINDABLE", "ReminderSweep", "queue_due"]
