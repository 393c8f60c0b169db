"""The outbox: enqueue in the caller's transaction, claims with leases, retries, dead letters."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import col, select

from plugin.errors import Conflict
from plugin.store import outbox
from plugin.store.db import session_scope
from plugin.store.models import AuditEvent, Job, utcnow

LEASE = timedelta(seconds=30)


def _enqueue(engine: Engine, shop_id: int, n: int = 1, **kwargs: object) -> list[int | None]:
    with session_scope(engine) as session:
        return [outbox.enqueue(session, "test.kind", {"n": i}, shop_id, **kwargs) for i in range(n)]  # type: ignore[arg-type]


def _job(engine: Engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        return session.get_one(Job, job_id)


def test_enqueue_commits_and_rolls_back_with_the_callers_transaction(engine: Engine, shop_id: int) -> None:
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        outbox.enqueue(session, "test.kind", {}, shop_id)
        raise RuntimeError("the change failed")
    assert outbox.claim(engine, "w1", LEASE) == []
    (job_id,) = _enqueue(engine, shop_id)
    assert [j.id for j in outbox.claim(engine, "w1", LEASE)] == [job_id]


def test_dedupe_key_coalesces_queued_jobs_only(engine: Engine, shop_id: int) -> None:
    first, second = _enqueue(engine, shop_id, 2, dedupe_key="push:1")
    assert first is not None and second is None
    (claimed,) = outbox.claim(engine, "w1", LEASE)
    # once running, a new request for the same effect must queue behind it
    (third,) = _enqueue(engine, shop_id, dedupe_key="push:1")
    assert third is not None and third != claimed.id


def test_claim_takes_due_jobs_once_and_counts_the_attempt(engine: Engine, shop_id: int) -> None:
    with session_scope(engine) as session:
        due = outbox.enqueue(session, "k", {}, shop_id)
        later = outbox.enqueue(session, "k", {}, shop_id, run_after=utcnow() + timedelta(hours=1))
    now = utcnow()
    claimed = outbox.claim(engine, "w1", LEASE, limit=10, now=now)
    assert [j.id for j in claimed] == [due]
    assert claimed[0].attempts == 1
    assert outbox.claim(engine, "w2", LEASE, limit=10, now=now) == []
    assert outbox.complete(engine, claimed[0], "w1")
    assert [j.id for j in outbox.claim(engine, "w2", LEASE, limit=10, now=now + timedelta(hours=2))] == [later]


def test_an_expired_lease_is_claimed_again_and_fences_the_old_worker(engine: Engine, shop_id: int) -> None:
    (job_id,) = _enqueue(engine, shop_id)
    now = utcnow()
    (mine,) = outbox.claim(engine, "w1", LEASE, now=now)
    assert outbox.claim(engine, "w2", LEASE, now=now + LEASE - timedelta(seconds=1)) == []
    (theirs,) = outbox.claim(engine, "w2", LEASE, now=now + LEASE + timedelta(seconds=1))
    assert theirs.id == job_id and theirs.attempts == 2
    assert not outbox.complete(engine, mine, "w1")  # w1 lost its lease: its word no longer counts
    assert outbox.fail(engine, mine, "w1", "late") is None
    assert outbox.complete(engine, theirs, "w2")
    assert _job(engine, job_id).status == "done"


def test_renew_keeps_a_long_job_away_from_other_workers(engine: Engine, shop_id: int) -> None:
    _enqueue(engine, shop_id)
    (job,) = outbox.claim(engine, "w1", timedelta(seconds=1))
    assert outbox.renew(engine, job, "w1", timedelta(hours=1))
    assert outbox.claim(engine, "w2", LEASE, now=utcnow() + timedelta(minutes=5)) == []
    assert not outbox.renew(engine, job, "w2", LEASE)


def test_fail_retries_with_backoff_honouring_retry_after(engine: Engine, shop_id: int) -> None:
    (job_id,) = _enqueue(engine, shop_id)
    (job,) = outbox.claim(engine, "w1", LEASE)
    now = utcnow()
    assert outbox.fail(engine, job, "w1", "429 slow down", retry_after=120, now=now) == "queued"
    stored = _job(engine, job_id)
    run_after = stored.run_after.replace(tzinfo=now.tzinfo)
    assert timedelta(seconds=120) <= run_after - now <= timedelta(seconds=121)
    assert stored.last_error == "429 slow down" and stored.locked_by is None


def test_backoff_is_full_jitter_growing_exponentially() -> None:
    for attempt in (1, 3, 6):
        delays = [outbox.backoff_delay(attempt) for _ in range(300)]
        high = outbox.BACKOFF_INITIAL * 2 ** (attempt - 1)
        assert min(delays) >= 0 and max(delays) <= high
        assert max(delays) > high * 0.8  # spread over the whole window, not bunched
    assert outbox.backoff_delay(50) <= outbox.BACKOFF_MAX
    assert outbox.backoff_delay(1, retry_after=30) >= 30


def test_dead_after_max_attempts_and_retried_by_hand(engine: Engine, shop_id: int) -> None:
    (job_id,) = _enqueue(engine, shop_id, max_attempts=2)
    assert job_id is not None
    for expected in ("queued", "dead"):
        (job,) = outbox.claim(engine, "w1", LEASE, now=utcnow() + timedelta(days=1))
        assert outbox.fail(engine, job, "w1", "boom") == expected
    assert outbox.claim(engine, "w1", LEASE, now=utcnow() + timedelta(days=2)) == []
    with session_scope(engine) as session:
        assert [j.id for j in outbox.list_jobs(session, status="dead", shop_id=shop_id)] == [job_id]
        job = outbox.retry_dead(session, job_id, actor="ops@example.com", shop_id=shop_id)
        assert (job.status, job.attempts) == ("queued", 0)
        audit = session.exec(select(AuditEvent).where(col(AuditEvent.subject) == f"job:{job_id}")).one()
        assert audit.actor == "ops@example.com" and audit.action == "job.retry"
        with pytest.raises(Conflict):
            outbox.retry_dead(session, job_id, actor="ops")
    assert [j.id for j in outbox.claim(engine, "w1", LEASE)] == [job_id]


def test_a_job_that_cannot_succeed_dies_at_once(engine: Engine, shop_id: int) -> None:
    (job_id,) = _enqueue(engine, shop_id)
    (job,) = outbox.claim(engine, "w1", LEASE)
    assert outbox.fail(engine, job, "w1", "credentials revoked", retryable=False) == "dead"
    assert job_id is not None and _job(engine, job_id).last_error == "credentials revoked"


def test_a_worker_dying_on_the_last_attempt_leaves_a_dead_job(engine: Engine, shop_id: int) -> None:
    (job_id,) = _enqueue(engine, shop_id, max_attempts=1)
    assert job_id is not None
    outbox.claim(engine, "w1", LEASE)  # ... and w1 is never heard of again
    assert outbox.claim(engine, "w2", LEASE, now=utcnow() + 2 * LEASE) == []
    job = _job(engine, job_id)
    assert job.status == "dead" and "stopped" in (job.last_error or "")


def test_concurrent_workers_never_claim_one_job_twice(engine: Engine, shop_id: int) -> None:
    """N workers claiming at once (threads, one connection each) on the same table: every job is
    claimed exactly once. On PostgreSQL this exercises FOR UPDATE SKIP LOCKED."""
    total = 400
    with session_scope(engine) as session:
        for i in range(total):
            outbox.enqueue(session, "k", {"i": i}, shop_id)
    claimed: dict[str, list[int]] = {}
    start = threading.Barrier(4)

    def work(name: str) -> None:
        mine = claimed.setdefault(name, [])
        start.wait()
        while batch := outbox.claim(engine, name, LEASE, limit=7):
            mine.extend(j.id for j in batch)
            for j in batch:
                assert outbox.complete(engine, j, name)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [job_id for ids in claimed.values() for job_id in ids]
    assert len(every) == total and len(set(every)) == total


@pytest.mark.postgres
def test_skip_locked_lets_a_second_worker_past_a_locked_row(engine: Engine, shop_id: int) -> None:
    """While one transaction holds a claimed-but-uncommitted row, another claim must skip it
    (not wait for it, not take it)."""
    first, second = _enqueue(engine, shop_id, 2)
    with engine.connect() as conn:
        tx = conn.begin()
        conn.exec_driver_sql("SELECT id FROM job WHERE id = %s FOR UPDATE", (first,))
        got = outbox.claim(engine, "w2", LEASE, limit=5)
        assert [j.id for j in got] == [second]
        tx.rollback()
