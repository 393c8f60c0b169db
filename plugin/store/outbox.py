"""The outbox: effects to carry out, written in the same transaction as their cause (promise 4).

    enqueue      in the caller's session: the job commits or rolls back with the change
    claim        take due jobs (and jobs whose worker's lease ran out) for one worker: oldest
                 first, never two of one serial key at once, at most `shop_limit` of a shop
    complete     the job is done
    fail         retry later with exponential backoff and full jitter, or dead-letter it
    retry_dead   a merchant or operator tries a dead job again, by hand
    retry_now    a merchant runs a failing job (waiting for its backoff) now instead of later

A job runs at least once; handlers are idempotent, so "at least once" is "once in effect".
Jobs of one domain for one campaign (e.g. every `sync.*` job of campaign 12 of shop 3) share a
serial key: they never run at once, in one worker or many, as they change the same remote things.
The dialect-specific SQL lives in `plugin.store.jobstore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select
from tenacity import RetryCallState, Retrying, wait_random_exponential

from plugin.errors import Conflict, NotFound
from plugin.store import eventlog, jobstore
from plugin.store.jobstore import ClaimedJob
from plugin.store.models import AuditEvent, Job, utcnow

__all__ = [
    "ClaimedJob",
    "backoff_delay",
    "claim",
    "complete",
    "enqueue",
    "fail",
    "list_jobs",
    "renew",
    "retry_dead",
    "retry_now",
    "serial_key_for",
]

DEFAULT_MAX_ATTEMPTS = 10
BACKOFF_INITIAL = 2.0  # seconds: the first retry waits up to this long
BACKOFF_MAX = 3600.0


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    shop_id: int | None,
    dedupe_key: str | None = None,
    run_after: datetime | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    serial_key: str | None = None,
) -> int | None:
    """Add a job in the caller's transaction; return its id.

    With a `dedupe_key`, a job with the same key that has not started yet already covers this
    request: nothing is added and None is returned. The serial key is `serial_key_for` unless given."""
    now = utcnow()
    values = {
        "kind": kind,
        "payload": payload,
        "shop_id": shop_id,
        "dedupe_key": dedupe_key,
        "serial_key": serial_key or serial_key_for(kind, payload, shop_id),
        "status": "queued",
        "attempts": 0,
        "max_attempts": max_attempts,
        "run_after": run_after or now,
        "created_at": now,
    }
    return jobstore.insert_job(session.connection(), values)


def serial_key_for(kind: str, payload: dict[str, Any], shop_id: int | None) -> str | None:
    """`sync:3:12` for a job of the `sync.*` kinds about campaign 12 of shop 3; None (runs
    beside anything) for a job about no campaign."""
    campaign_id = payload.get("campaign_id")
    if shop_id is None or campaign_id is None:
        return None
    return f"{kind.partition('.')[0]}:{shop_id}:{campaign_id}"


def claim(
    engine: Engine,
    worker_id: str,
    lease: timedelta,
    limit: int = 1,
    now: datetime | None = None,
    shop_limit: int | None = None,
) -> list[ClaimedJob]:
    """Claim up to `limit` due jobs for `worker_id` until now + lease; each claim counts an attempt.
    None of them shares a serial key with another or with a job running anywhere; with a
    `shop_limit`, no shop gets more jobs than that running at once, counting other workers'."""
    now = now or utcnow()
    return jobstore.claim_jobs(
        engine, worker_id=worker_id, now=now, lease_until=now + lease, limit=limit, shop_limit=shop_limit, on_dead=_gave_up
    )


def _gave_up(conn: Connection, dead: Sequence[Any]) -> None:
    """In the transaction that dead-letters them: the `sync.failed` event of each job that was
    carrying a change to a platform or provider."""
    now = utcnow()
    for job_id, kind, shop_id, payload, attempts, error in dead:
        eventlog.sync_failed(
            conn,
            job_id=int(job_id),
            kind=str(kind),
            shop_id=shop_id,
            payload=dict(payload or {}),
            attempts=int(attempts),
            error=str(error or ""),
            now=now,
        )


def renew(engine: Engine, job: ClaimedJob, worker_id: str, lease: timedelta) -> bool:
    """Extend a running job's lease; False when it is no longer ours."""
    return jobstore.extend_lease(engine, job_id=job.id, worker_id=worker_id, lease_until=utcnow() + lease)


def complete(engine: Engine, job: ClaimedJob, worker_id: str) -> bool:
    return jobstore.mark_done(engine, job_id=job.id, worker_id=worker_id, now=utcnow())


def backoff_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`.

    Full jitter (tenacity's `wait_random_exponential`: uniform in [0, initial * 2^(n-1)],
    capped) spreads the retries of many jobs that failed together. When the platform said how
    long to wait, that is the floor: retrying sooner only earns another 429."""
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = max(1, attempt)
    delay = float(wait_random_exponential(multiplier=BACKOFF_INITIAL, max=BACKOFF_MAX)(state))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def fail(
    engine: Engine,
    job: ClaimedJob,
    worker_id: str,
    error: str,
    *,
    retry_after: float | None = None,
    retryable: bool = True,
    now: datetime | None = None,
) -> str | None:
    """Record a failed attempt: queued again after a backoff, or dead when attempts ran out
    or retrying cannot help. Returns the new status (None if the job was no longer ours)."""
    now = now or utcnow()
    run_after: datetime | None = None
    if retryable and job.attempts < job.max_attempts:
        run_after = now + timedelta(seconds=backoff_delay(job.attempts, retry_after))
    return jobstore.mark_failed(
        engine, job_id=job.id, worker_id=worker_id, now=now, error=error, run_after=run_after, on_dead=_gave_up
    )


def retry_dead(session: Session, job_id: int, *, actor: str, shop_id: int | None = None) -> Job:
    """Queue a dead job again with fresh attempts, and say who did it in the audit trail."""
    stmt = select(Job).where(col(Job.id) == job_id)
    if shop_id is not None:
        stmt = stmt.where(col(Job.shop_id) == shop_id)
    job = session.exec(stmt).first()
    if job is None:
        raise NotFound(f"job {job_id} does not exist", reason="job_not_found")
    if not jobstore.requeue_dead(session.connection(), job_id=job_id, now=utcnow()):
        raise Conflict(f"job {job_id} is {job.status}, not dead", reason="job_not_dead")
    if job.shop_id is not None:
        session.add(
            AuditEvent(
                shop_id=job.shop_id,
                action="job.retry",
                subject=f"job:{job_id}",
                actor=actor,
                details={"kind": job.kind, "last_error": job.last_error},
            )
        )
    session.flush()
    session.refresh(job)
    return job


def retry_now(session: Session, job_id: int, *, shop_id: int) -> Job:
    """Bring a queued job's next attempt forward to now (its attempts so far still count)."""
    job = session.exec(select(Job).where(col(Job.id) == job_id, col(Job.shop_id) == shop_id)).first()
    if job is None:
        raise NotFound(f"job {job_id} does not exist", reason="job_not_found")
    if not jobstore.run_queued_now(session.connection(), job_id=job_id, now=utcnow()):
        raise Conflict(f"job {job_id} is {job.status}, not waiting to be retried", reason="job_not_waiting")
    session.refresh(job)
    return job


def list_jobs(
    session: Session, *, status: str | None = None, kind: str | None = None, shop_id: int | None = None, limit: int = 100
) -> Sequence[Job]:
    stmt = select(Job).order_by(col(Job.id).desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(col(Job.status) == status)
    if kind is not None:
        stmt = stmt.where(col(Job.kind) == kind)
    if shop_id is not None:
        stmt = stmt.where(col(Job.shop_id) == shop_id)
    return session.exec(stmt).all()
