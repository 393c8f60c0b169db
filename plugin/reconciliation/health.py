"""Sync health for the admin: the shop's platform and provider jobs (failing and dead ones
first among its filters) and its alerts, newest first, a keyset page at a time."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, select

from plugin.errors import InvalidInput
from plugin.store import keyset
from plugin.store.keyset import Page
from plugin.store.models import Alert, Job

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
        stmt = stmt.where(col(Job.kind) == f.kind) if "." in f.kind else stmt.where(col(Job.kind).startswith(f"{f.kind}."))
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
