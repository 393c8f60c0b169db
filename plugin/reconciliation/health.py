"""Sync health for the admin: the shop's platform and provider jobs (failing and dead ones
first among its filters), its alerts and its reconciliation reports, newest first, a keyset
page at a time; resolving an alert by hand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_
from sqlmodel import Session, col, select

from plugin.errors import InvalidInput, NotFound
from plugin.store import keyset
from plugin.store.keyset import Page
from plugin.store.models import Alert, AuditEvent, Job

JOB_STATUSES = ("queued", "running", "done", "dead")


@dataclass(frozen=True)
class JobFilter:
    kind: str | None = None  # a kind ("sync.push") or its family ("sync", "klaviyo")
    status: str | None = None  # queued | running | done | dead
    failing: bool = False  # only jobs whose last attempt failed and that are not done

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in JOB_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(JOB_STATUSES)}", reason="invalid_filter")


def list_jobs(session: Session, *, shop_id: int, filter: JobFilter, cursor: str | None = None, limit: int = 50) -> Page[Job]:
    f = filter
    stmt = select(Job).where(col(Job.shop_id) == shop_id)
    if f.kind is not None:
        family = or_(col(Job.kind) == f.kind, col(Job.kind).startswith(f"{f.kind}."))  # "reconcile" has no sub-kind
        stmt = stmt.where(col(Job.kind) == f.kind) if "." in f.kind else stmt.where(family)
    if f.status is not None:
        stmt = stmt.where(col(Job.status) == f.status)
    if f.failing:
        stmt = stmt.where(col(Job.last_error).is_not(None), col(Job.status) != "done")
    limit = keyset.clamp(limit)
    key = keyset.decode(cursor, [int])
    if key is not None:
        stmt = stmt.where(col(Job.id) < key[0])
    rows = session.exec(stmt.order_by(col(Job.id).desc()).limit(limit + 1)).all()
    return keyset.page(rows, limit, lambda j: [j.id])


def list_alerts(
    session: Session,
    *,
    shop_id: int,
    kind: str | None = None,
    open_only: bool = False,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Alert]:
    stmt = select(Alert).where(col(Alert.shop_id) == shop_id)
    if kind is not None:
        stmt = stmt.where(col(Alert.kind) == kind)
    if open_only:
        stmt = stmt.where(col(Alert.resolved_at).is_(None))
    limit = keyset.clamp(limit)
    key = keyset.decode(cursor, [int])
    if key is not None:
        stmt = stmt.where(col(Alert.id) < key[0])
    rows = session.exec(stmt.order_by(col(Alert.id).desc()).limit(limit + 1)).all()
    return keyset.page(rows, limit, lambda a: [a.id])


def get_job(session: Session, *, shop_id: int, job_id: int) -> Job:
    job = session.exec(select(Job).where(col(Job.id) == job_id, col(Job.shop_id) == shop_id)).first()
    if job is None:
        raise NotFound(f"job {job_id} does not exist in this shop", reason="job_not_found")
    return job


def resolve_alert(session: Session, *, shop_id: int, alert_id: int, now: datetime) -> Alert:
    """The merchant has dealt with it: closed (once; resolving again changes nothing). Its
    open key is freed, so the same trouble seen again opens a new alert."""
    alert = session.exec(select(Alert).where(col(Alert.id) == alert_id, col(Alert.shop_id) == shop_id)).first()
    if alert is None:
        raise NotFound(f"alert {alert_id} does not exist in this shop", reason="alert_not_found")
    if alert.resolved_at is None:
        alert.resolved_at, alert.open_key = now, None
        session.add(alert)
        session.flush()
    return alert


RECONCILE_REPORT = "reconcile.report"  # the audit action plugin.reconciliation.reconcile records


def list_reconcile_reports(session: Session, *, shop_id: int, cursor: str | None = None, limit: int = 10) -> Page[AuditEvent]:
    """The shop's reconciliation results (what was found and repaired on each run), newest first."""
    stmt = select(AuditEvent).where(col(AuditEvent.shop_id) == shop_id, col(AuditEvent.action) == RECONCILE_REPORT)
    limit = keyset.clamp(limit)
    key = keyset.decode(cursor, [int])
    if key is not None:
        stmt = stmt.where(col(AuditEvent.id) < key[0])
    rows = session.exec(stmt.order_by(col(AuditEvent.id).desc()).limit(limit + 1)).all()
    return keyset.page(rows, limit, lambda e: [e.id])
