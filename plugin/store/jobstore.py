"""The outbox's atomic operations, per dialect (store layer).

A claim takes due jobs and jobs whose lease expired, marks them running under one worker's
name until `locked_until`, and counts the attempt, all in one transaction. It reads the oldest
due jobs (`run_after`, then id: a job re-enqueued behind others waits its turn), chooses those
that may run now, and marks them:

- never a job whose `serial_key` a live lease holds (the job runs somewhere, in any worker
  process), nor two jobs of one key at once;
- never more jobs of a shop than `shop_limit` running in all, across worker processes.

A claim reads what runs before it writes, so two claims must not read at once:

- PostgreSQL: claims take turns at a transaction-scoped advisory lock (handlers, renewals and
  completions never wait for it); the candidates are read `FOR UPDATE SKIP LOCKED`, so a row
  another transaction is changing is passed over, not waited for.
- SQLite: the transaction began with `BEGIN IMMEDIATE` (plugin.store.db), which already makes
  claimers take turns.

Every later write on a claimed job is fenced by `locked_by`: a worker whose lease ran out and
whose job was claimed again can no longer complete or fail it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import col

from plugin.store.models import Job

_job = Job.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    shop_id: int | None
    attempts: int  # including this one
    max_attempts: int
    locked_until: datetime


def aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were written as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def insert_job(conn: Connection, values: dict[str, Any]) -> int | None:
    """Insert a job; with a dedupe key already queued, insert nothing and return None."""
    if values.get("dedupe_key") is None:
        return int(conn.execute(_job.insert().values(**values).returning(_job.c.id)).scalar_one())
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(_job).values(**values).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(_job.c.id)
    found = conn.execute(stmt).scalar_one_or_none()
    return None if found is None else int(found)


# the advisory lock claims take turns at on PostgreSQL (any constant of our own: "couponry")
CLAIM_LOCK = 0x636F75706F6E7279
# due jobs read per claim to choose from, per job wanted: room to pass over jobs of one key or
# one full shop among the oldest without reading the whole queue
CANDIDATES_PER_JOB = 8


# called in the transaction that dead-letters jobs, with the dead jobs (id, kind, shop_id,
# payload, attempts, last_error): what must happen with it, e.g. the `sync.failed` event
OnDead = Callable[[Connection, Sequence[Any]], None]
_DEAD_COLUMNS = (_job.c.id, _job.c.kind, _job.c.shop_id, _job.c.payload, _job.c.attempts, _job.c.last_error)


def claim_jobs(
    engine: Engine,
    *,
    worker_id: str,
    now: datetime,
    lease_until: datetime,
    limit: int,
    shop_limit: int | None = None,
    on_dead: OnDead | None = None,
) -> list[ClaimedJob]:
    with engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK)))
        # A job whose worker died on its last attempt would otherwise stay "running" forever.
        dead = conn.execute(
            update(_job)
            .where(
                _job.c.status == "running",
                _job.c.locked_until < now,
                _job.c.attempts >= _job.c.max_attempts,
            )
            .values(status="dead", finished_at=now, locked_by=None, last_error="the worker stopped during the last attempt")
            .returning(*_DEAD_COLUMNS)
        ).all()
        if dead and on_dead is not None:
            on_dead(conn, dead)
        live = and_(_job.c.status == "running", _job.c.locked_until >= now)
        due = or_(
            and_(_job.c.status == "queued", _job.c.run_after <= now),
            and_(_job.c.status == "running", _job.c.locked_until < now),
        )
        busy_keys = select(_job.c.serial_key).where(live, _job.c.serial_key.is_not(None))
        pick = select(_job.c.id, _job.c.serial_key, _job.c.shop_id).where(
            due,
            _job.c.attempts < _job.c.max_attempts,
            or_(_job.c.serial_key.is_(None), _job.c.serial_key.not_in(busy_keys)),
        )
        running: dict[int, int] = {}
        if shop_limit is not None:
            counted = select(_job.c.shop_id, func.count()).where(live, _job.c.shop_id.is_not(None)).group_by(_job.c.shop_id)
            running = {int(shop): int(n) for shop, n in conn.execute(counted).all()}
            full = select(_job.c.shop_id).where(live, _job.c.shop_id.is_not(None)).group_by(_job.c.shop_id)
            full = full.having(func.count() >= shop_limit)
            pick = pick.where(or_(_job.c.shop_id.is_(None), _job.c.shop_id.not_in(full)))
        pick = pick.order_by(_job.c.run_after, _job.c.id).limit(max(limit * CANDIDATES_PER_JOB, 64))
        if postgres:
            pick = pick.with_for_update(skip_locked=True)
        chosen = choose(conn.execute(pick).all(), limit=limit, shop_limit=shop_limit, running=running)
        if not chosen:
            return []
        rows = conn.execute(
            update(_job)
            .where(_job.c.id.in_(chosen))
            # The dedupe key only coalesces jobs that have not started: once one runs, a new
            # request for the same effect must queue behind it, or the change it brings is lost.
            .values(
                status="running", locked_by=worker_id, locked_until=lease_until, attempts=_job.c.attempts + 1, dedupe_key=None
            )
            .returning(_job.c.id, _job.c.kind, _job.c.payload, _job.c.shop_id, _job.c.attempts, _job.c.max_attempts)
        ).all()
    claimed = [ClaimedJob(r.id, r.kind, dict(r.payload or {}), r.shop_id, r.attempts, r.max_attempts, lease_until) for r in rows]
    return sorted(claimed, key=lambda j: j.id)


def choose(candidates: Sequence[Any], *, limit: int, shop_limit: int | None, running: Mapping[int, int]) -> list[int]:
    """Ids of the oldest candidates (id, serial_key, shop_id) that can run together: one per
    serial key, and a shop's running jobs plus its chosen ones within `shop_limit`."""
    keys: set[str] = set()
    per_shop = dict(running)
    chosen: list[int] = []
    for job_id, key, shop in candidates:
        if key is not None and key in keys:
            continue
        if shop_limit is not None and shop is not None and per_shop.get(shop, 0) >= shop_limit:
            continue
        chosen.append(int(job_id))
        if key is not None:
            keys.add(key)
        if shop is not None:
            per_shop[shop] = per_shop.get(shop, 0) + 1
        if len(chosen) == limit:
            break
    return chosen


def _mine(job_id: int, worker_id: str) -> Any:
    return and_(_job.c.id == job_id, _job.c.status == "running", _job.c.locked_by == worker_id)


def mark_done(engine: Engine, *, job_id: int, worker_id: str, now: datetime) -> bool:
    with engine.begin() as conn:
        result = conn.execute(
            update(_job)
            .where(_mine(job_id, worker_id))
            .values(status="done", finished_at=now, locked_until=None, last_error=None)
        )
        return bool(result.rowcount)


def mark_failed(
    engine: Engine,
    *,
    job_id: int,
    worker_id: str,
    now: datetime,
    error: str,
    run_after: datetime | None,
    on_dead: OnDead | None = None,
) -> str | None:
    """Queue the job again at `run_after`, or mark it dead when that is None. Returns the new
    status, or None when the job is no longer ours (its lease ran out and someone took it)."""
    values: dict[str, Any] = {"last_error": error[:2000], "locked_until": None, "locked_by": None}
    if run_after is None:
        values.update(status="dead", finished_at=now)
    else:
        values.update(status="queued", run_after=run_after)
    with engine.begin() as conn:
        rows = conn.execute(update(_job).where(_mine(job_id, worker_id)).values(**values).returning(*_DEAD_COLUMNS)).all()
        if rows and run_after is None and on_dead is not None:
            on_dead(conn, rows)
    return str(values["status"]) if rows else None


def extend_lease(engine: Engine, *, job_id: int, worker_id: str, lease_until: datetime) -> bool:
    with engine.begin() as conn:
        result = conn.execute(update(_job).where(_mine(job_id, worker_id)).values(locked_until=lease_until))
        return bool(result.rowcount)


def requeue_dead(conn: Connection, *, job_id: int, now: datetime) -> bool:
    result = conn.execute(
        update(_job)
        .where(col(Job.id) == job_id, col(Job.status) == "dead")
        .values(status="queued", attempts=0, run_after=now, finished_at=None, locked_by=None, locked_until=None)
    )
    return bool(result.rowcount)


def run_queued_now(conn: Connection, *, job_id: int, now: datetime) -> bool:
    """A queued job runs at the next claim (a running, done or dead one is left alone)."""
    result = conn.execute(update(_job).where(col(Job.id) == job_id, col(Job.status) == "queued").values(run_after=now))
    return bool(result.rowcount)


@dataclass(frozen=True)
class QueueFigure:
    kind: str
    status: str  # queued | running | dead
    count: int
    oldest_due: datetime | None  # queued jobs: the earliest `run_after` at or before now


def queue_figures(conn: Connection, *, now: datetime) -> list[QueueFigure]:
    """Jobs per kind and status, and how long the longest-waiting due job has waited: one
    grouped read over `ix_job_claim` (status, run_after), done jobs never visited."""
    stmt = (
        select(_job.c.kind, _job.c.status, func.count(), func.min(_job.c.run_after))
        .where(_job.c.status.in_(("queued", "running", "dead")))
        .group_by(_job.c.kind, _job.c.status)
    )
    figures = []
    for kind, status, count, earliest in conn.execute(stmt):
        due = aware(earliest) if earliest is not None and status == "queued" else None
        figures.append(QueueFigure(kind, status, int(count), due if due is not None and due <= now else None))
    return figures
