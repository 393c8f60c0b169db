"""Data retention: what the app deletes or empties once it is old, by setting (0 = kept).

COUPONRY_WEBHOOK_RETENTION_DAYS        ignored and failed deliveries are deleted (nothing acts
                                       on them; a failed one can be reprocessed until then)
COUPONRY_WEBHOOK_PAYLOAD_RETENTION_DAYS processed deliveries lose their payload (the order as the
                                       platform sent it, with the customer's details); the row
                                       stays with its status, order id and outcome
COUPONRY_AUDIT_RETENTION_DAYS          audit rows are deleted, except those still read: when a
                                       shop's webhooks were registered, and customer data
                                       requests (the record that one was answered)

Never touched, whatever their age: deliveries not yet processed (`received`) or waiting for
their order (`deferred`): their payloads are what processing reads. Each kind is deleted a
batch per short transaction, so the write lock is never held long. The worker runs the sweep
at most hourly; `couponry prune` runs it at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from plugin.orders import webhooks
from plugin.orders.privacy import DATA_REQUEST
from plugin.settings import Settings
from plugin.store.db import run, session_scope
from plugin.store.models import AuditEvent, WebhookEvent, utcnow

if TYPE_CHECKING:
    from plugin.store.jobcontext import JobContext

KEPT_AUDIT_ACTIONS = ("webhooks.registered", DATA_REQUEST)
_BATCH = 1000


@dataclass(frozen=True)
class Pruned:
    deliveries: int  # ignored/failed deliveries deleted
    payloads: int  # processed deliveries whose payload was removed
    audit: int  # audit rows deleted


def remove_old_payloads(engine: Engine, *, older_than: timedelta, now: datetime, batch: int = _BATCH) -> int:
    """Empty the payloads of processed deliveries received more than `older_than` before `now`."""
    cutoff = now - older_than
    removed = 0
    while True:
        with session_scope(engine) as session:
            ids = session.exec(
                select(WebhookEvent.id)
                .where(
                    col(WebhookEvent.status) == "processed",
                    col(WebhookEvent.redacted_at).is_(None),
                    col(WebhookEvent.received_at) < cutoff,
                )
                .order_by(col(WebhookEvent.received_at))
                .limit(batch)
            ).all()
            if ids:
                session.execute(
                    update(WebhookEvent)
                    .where(col(WebhookEvent.id).in_(ids), col(WebhookEvent.status) == "processed")
                    .values(payload="", redacted_at=now)
                )
        removed += len(ids)
        if len(ids) < batch:
            return removed


def delete_old_audit(engine: Engine, *, older_than: timedelta, now: datetime, batch: int = _BATCH) -> int:
    """Delete audit rows created more than `older_than` before `now`, but those still read."""
    cutoff = now - older_than
    deleted = 0
    while True:
        with session_scope(engine) as session:
            ids = session.exec(
                select(AuditEvent.id)
                .where(col(AuditEvent.created_at) < cutoff, col(AuditEvent.action).not_in(KEPT_AUDIT_ACTIONS))
                .order_by(col(AuditEvent.id))
                .limit(batch)
            ).all()
            if ids:
                session.execute(delete(AuditEvent).where(col(AuditEvent.id).in_(ids)))
        deleted += len(ids)
        if len(ids) < batch:
            return deleted


def prune(engine: Engine, settings: Settings, *, now: datetime | None = None) -> Pruned:
    """Apply every retention setting once."""
    now = now or utcnow()

    def days(value: float) -> timedelta | None:
        return timedelta(days=value) if value > 0 else None

    unused, payloads, audit = (
        days(settings.webhook_retention_days),
        days(settings.webhook_payload_retention_days),
        days(settings.audit_retention_days),
    )
    return Pruned(
        deliveries=webhooks.purge_unused(engine, older_than=unused, now=now) if unused else 0,
        payloads=remove_old_payloads(engine, older_than=payloads, now=now) if payloads else 0,
        audit=delete_old_audit(engine, older_than=audit, now=now) if audit else 0,
    )


class RetentionSweep:
    """The worker's sweep applying the retention settings: at most once an hour per worker,
    as the sweeps run every few seconds when idle."""

    every = 3600.0

    def __init__(self) -> None:
        self._next = 0.0

    async def __call__(self, ctx: JobContext) -> int:
        if time.monotonic() < self._next:
            return 0
        self._next = time.monotonic() + self.every
        engine, settings = ctx.engine, ctx.settings
        pruned = await run(engine, lambda: prune(engine, settings))
        return pruned.deliveries + pruned.payloads + pruned.audit
