"""Klaviyo's own coupon pool as a distribution mode: a campaign's codes handed to a Klaviyo coupon.

    create_pool     a pool for a campaign, named by its Klaviyo coupon (created by the upload job
                    if it is missing), with low-stock thresholds
    add_codes       N free codes (live, unassigned, unbound; only a batch's when named) move into
                    the pool, so no claim, pull, push or partner gets them again, and are queued
                    for upload with one `klaviyo.upload` job, in the same transaction (promise 4)
    handle_upload   the worker: codes a lost answer left `sending` are looked up first; queued
                    codes then go in bulk create jobs of 1,000; each job's follow-up
                    (`klaviyo.upload_results`) reads its outcome per code
    handle_check    counts Klaviyo's unassigned codes: the pool_low alert under `alert_below`,
                    a top-up (more codes moved in, generated if the campaign has too few) under
                    `topup_below`; queued after each finished job and hourly by schedule_checks

Exactly once: a code becomes `sending` before a request carrying it leaves. A request Klaviyo
provably did not take (429, no connection) puts it back to `queued`; an ambiguous failure (5xx,
timeout, crash) leaves it `sending`, and the retry asks Klaviyo whether the code exists (a code's
id is `<coupon>-<code>`, one per coupon) before sending it again, waiting SETTLE_AFTER first so a
job that did arrive has run. A code a job did not create but Klaviyo holds (already there) is
`uploaded`, not failed.

Klaviyo, not we, picks the recipient (`{% coupon_code 'coupon id' %}` at send time), so these
codes are never bound to a person: bind-on-claim does not apply, and their redemptions are
attributed to channel `klaviyo` (plugin.checkout.redemptions.POOL_CHANNEL).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Protocol, cast

from sqlalchemy import Engine, func, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from connectors.base import CodeSpec
from connectors.errors import AuthError, RateLimited, Rejected
from connectors.http import NotSent
from plugin.campaigns import issuing, platform
from plugin.campaigns.lookup import get_campaign
from plugin.distribution import claimstore
from plugin.errors import InvalidInput, NotFound
from plugin.formats import codes
from plugin.rules import code_expires_at
from plugin.store import caches, outbox
from plugin.store.db import run, session_reader, session_scope
from plugin.store.jobstore import aware
from plugin.store.models import Code, CouponPool, PoolUpload, Shop, utcnow

if TYPE_CHECKING:
    from plugin.store.jobcontext import Handler, JobContext

PROVIDER = "klaviyo"
UPLOAD = "klaviyo.upload"
RESULTS = "klaviyo.upload_results"
CHECK = "klaviyo.pool_check"
STATUSES = ("queued", "sending", "submitted", "uploaded", "failed")
JOB_SIZE = 1_000  # Klaviyo's most codes per bulk create job
SETTLE_AFTER = timedelta(minutes=2)  # a lost job's codes are looked up only once it has had time to run
RESULTS_AFTER = timedelta(seconds=10)
CHECK_EVERY = timedelta(hours=1)
MAX_ADD = 1_000_000
_COUPON_ID = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_upload = PoolUpload.__table__  # type: ignore[attr-defined]
_code = Code.__table__  # type: ignore[attr-defined]


class _Coupons(Protocol):
    """What this module needs of the Klaviyo connector (connectors.klaviyo)."""

    async def ensure_coupon(self, coupon_id: str, description: str | None = None) -> str: ...
    async def submit_coupon_codes(self, coupon_id: str, codes: Sequence[CodeSpec]) -> str: ...
    async def coupon_job_outcome(self, job_id: str) -> tuple[_Job, frozenset[str]]: ...
    async def coupon_code_exists(self, coupon_id: str, unique_code: str) -> bool: ...
    async def count_unassigned(self, coupon_id: str, *, upto: int) -> int: ...


class _Job(Protocol):
    @property
    def done(self) -> bool: ...
    @property
    def errors(self) -> tuple[str, ...]: ...
    @property
    def status(self) -> str: ...


class JobRunning(Exception):
    """Klaviyo has not finished the job, or a lost job may still run; retried with backoff."""


# --- setting up -------------------------------------------------------------------------------


def create_pool(
    session: Session,
    *,
    shop_id: int,
    campaign_id: int,
    coupon_id: str,
    description: str = "",
    alert_below: int = 100,
    topup_below: int | None = None,
    topup_count: int = 0,
) -> CouponPool:
    """The campaign's pool at Klaviyo coupon `coupon_id` (its external id: letters, digits, `_`;
    the coupon code ids Klaviyo builds from it join with a hyphen). Idempotent per coupon."""
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    if not _COUPON_ID.match(coupon_id):
        raise InvalidInput("a Klaviyo coupon id is 1 to 64 letters, digits or underscores", reason="invalid_coupon_id")
    if len(description) > 500:
        raise InvalidInput("a description is at most 500 characters", reason="invalid_description")
    existing = session.exec(
        select(CouponPool).where(
            col(CouponPool.shop_id) == shop_id, col(CouponPool.provider) == PROVIDER, col(CouponPool.coupon_id) == coupon_id
        )
    ).first()
    if existing is not None:
        if existing.campaign_id != campaign_id:
            raise InvalidInput(
                f"Klaviyo coupon {coupon_id!r} already holds campaign {existing.campaign_id}'s codes", reason="coupon_in_use"
            )
        return existing
    pool = CouponPool(shop_id=shop_id, campaign_id=campaign_id, coupon_id=coupon_id, description=description, created_at=utcnow())
    _apply_policy(pool, alert_below, topup_below, topup_count)
    session.add(pool)
    session.flush()
    return pool


def set_policy(
    session: Session, *, shop_id: int, pool_id: int, alert_below: int, topup_below: int | None, topup_count: int
) -> CouponPool:
    pool = get_pool(session, shop_id=shop_id, pool_id=pool_id)
    _apply_policy(pool, alert_below, topup_below, topup_count)
    session.add(pool)
    session.flush()
    return pool


def _apply_policy(pool: CouponPool, alert_below: int, topup_below: int | None, topup_count: int) -> None:
    if alert_below < 0 or (topup_below is not None and topup_below < 1) or topup_count < 0:
        raise InvalidInput("thresholds and counts must not be negative", reason="invalid_policy")
    if topup_below is not None and not 1 <= topup_count <= issuing.MAX_BATCH:
        raise InvalidInput(f"a top-up needs a count between 1 and {issuing.MAX_BATCH:,}", reason="invalid_policy")
    pool.alert_below, pool.topup_below, pool.topup_count = alert_below, topup_below, topup_count


def get_pool(session: Session, *, shop_id: int, pool_id: int) -> CouponPool:
    pool = session.exec(select(CouponPool).where(col(CouponPool.id) == pool_id, col(CouponPool.shop_id) == shop_id)).first()
    if pool is None:
        raise NotFound(f"Klaviyo pool {pool_id} does not exist in this shop", reason="pool_not_found")
    return pool


def list_pools(session: Session, *, shop_id: int) -> Sequence[CouponPool]:
    return session.exec(select(CouponPool).where(col(CouponPool.shop_id) == shop_id).order_by(col(CouponPool.id))).all()


def add_codes(session: Session, *, shop_id: int, pool_id: int, count: int, batch_id: int | None = None) -> int:
    """Move up to `count` free codes of the pool's campaign into the pool and queue their
    upload; how many moved (fewer when the campaign ran short)."""
    if not 1 <= count <= MAX_ADD:
        raise InvalidInput(f"count must be 1 to {MAX_ADD:,}", reason="invalid_count")
    pool = get_pool(session, shop_id=shop_id, pool_id=pool_id)
    assert pool.id is not None
    conn = session.connection()
    now = utcnow()
    moved = claimstore.allocate_to_pool(
        conn, shop_id=shop_id, campaign_id=pool.campaign_id, pool_id=pool.id, count=count, batch_id=batch_id, now=now
    )
    for start in range(0, len(moved), 5_000):
        rows = [
            {"shop_id": shop_id, "pool_id": pool.id, "code_id": code_id, "status": "queued", "attempts": 0, "updated_at": now}
            for code_id in moved[start : start + 5_000]
        ]
        conn.execute(_upload.insert(), rows)
    if moved:
        _queue_upload(session, shop_id, pool.id)
    return len(moved)


def retry_failed(session: Session, *, shop_id: int, pool_id: int) -> int:
    """Queue the pool's failed codes for another upload; how many."""
    get_pool(session, shop_id=shop_id, pool_id=pool_id)
    result = session.connection().execute(
        update(_upload)
        .where(_upload.c.pool_id == pool_id, _upload.c.shop_id == shop_id, _upload.c.status == "failed")
        .values(status="queued", error=None, job_id=None, updated_at=utcnow())
    )
    count = int(result.rowcount)
    if count:
        _queue_upload(session, shop_id, pool_id)
    return count


def _queue_upload(session: Session, shop_id: int, pool_id: int) -> None:
    outbox.enqueue(session, UPLOAD, {"pool_id": pool_id}, shop_id, dedupe_key=f"{UPLOAD}:{pool_id}")


# --- status -----------------------------------------------------------------------------------


def upload_counts(session: Session, *, shop_id: int, pool_id: int) -> dict[str, int]:
    """{status: codes} of the pool, every status named."""
    rows = session.connection().execute(
        core_select(_upload.c.status, func.count())
        .where(_upload.c.pool_id == pool_id, _upload.c.shop_id == shop_id)
        .group_by(_upload.c.status)
    )
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({status: int(n) for status, n in rows})
    return counts


@dataclass(frozen=True)
class UploadRow:
    code: str
    status: str
    job_id: str | None
    error: str | None
    attempts: int
    updated_at: datetime


def list_uploads(session: Session, *, shop_id: int, pool_id: int, status: str | None = None, limit: int = 500) -> list[UploadRow]:
    get_pool(session, shop_id=shop_id, pool_id=pool_id)
    stmt = (
        core_select(_code.c.code, _upload.c.status, _upload.c.job_id, _upload.c.error, _upload.c.attempts, _upload.c.updated_at)
        .join(_code, _code.c.id == _upload.c.code_id)
        .where(_upload.c.pool_id == pool_id, _upload.c.shop_id == shop_id)
        .order_by(_upload.c.id)
        .limit(limit)
    )
    if status is not None:
        stmt = stmt.where(_upload.c.status == status)
    return [UploadRow(*row) for row in session.connection().execute(stmt)]


# --- the worker: uploads ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Pool:
    id: int
    shop_id: int
    campaign_id: int
    coupon_id: str
    description: str


@dataclass(frozen=True)
class _Item:
    upload_id: int
    spec: CodeSpec
    attempted_at: datetime | None


def _load(engine: Engine, shop_id: int, pool_id: int) -> tuple[_Pool, Shop]:
    with session_scope(engine) as session:
        pool = get_pool(session, shop_id=shop_id, pool_id=pool_id)
        shop = session.get_one(Shop, shop_id)
        assert pool.id is not None
        return _Pool(pool.id, pool.shop_id, pool.campaign_id, pool.coupon_id, pool.description), shop


def _connector(ctx: JobContext, shop: Shop) -> _Coupons:
    from plugin.distribution import pushes  # pushes builds messaging connectors from the settings

    return cast(_Coupons, pushes.messaging_connector(ctx.settings, ctx.http, PROVIDER, shop))


def _items(engine: Engine, pool: _Pool, status: str, limit: int, *, mark_sending: bool) -> list[_Item]:
    """The pool's next `limit` codes in `status`, as Klaviyo is sent them (display form, the
    expiry the rules give a code nobody we know holds). With `mark_sending`, they become
    `sending` with the time before anything leaves."""
    now = utcnow()
    with session_scope(engine) as session:
        conn = session.connection()
        rows = conn.execute(
            core_select(
                _upload.c.id, _upload.c.attempted_at, _code.c.code, _code.c.created_at, _code.c.expires_at, _code.c.batch_id
            )
            .join(_code, _code.c.id == _upload.c.code_id)
            .where(_upload.c.pool_id == pool.id, _upload.c.status == status)
            .order_by(_upload.c.id)
            .limit(limit)
        ).all()
        if not rows:
            return []
        with session_reader(session) as reader:
            campaign = claimstore.campaign_info(reader, shop_id=pool.shop_id, campaign_id=pool.campaign_id)
            overrides = {bid: claimstore.batch_override(reader, bid) for bid in {r.batch_id for r in rows}}
        assert campaign is not None
        fmt = caches.code_format(campaign.format_text)
        items = []
        for row in rows:
            rules = caches.effective_rules(campaign.rules_text, overrides[row.batch_id])
            created, explicit = aware(row.created_at), aware(row.expires_at) if row.expires_at is not None else None
            expires = code_expires_at(rules, created, None, explicit) if rules else explicit
            spec = CodeSpec(code=row.code, display=_display(fmt, row.code), expires_at=expires)
            items.append(_Item(int(row.id), spec, aware(row.attempted_at) if row.attempted_at is not None else None))
        if mark_sending:
            conn.execute(
                update(_upload)
                .where(_upload.c.id.in_([i.upload_id for i in items]), _upload.c.status == status)
                .values(status="sending", attempted_at=now, attempts=_upload.c.attempts + 1, updated_at=now)
            )
    return items


def _display(fmt: codes.CodeFormat, stored: str) -> str:
    return codes.display(fmt, stored) if codes.check(fmt, stored) is codes.CodeCheck.OK else stored


def _set(engine: Engine, upload_ids: Sequence[int], status: str, *, job_id: str | None = None, error: str | None = None) -> None:
    """Settle these codes; a submitted job's follow-up is queued in the same transaction."""
    if not upload_ids:
        return
    now = utcnow()
    with session_scope(engine) as session:
        session.connection().execute(
            update(_upload)
            .where(_upload.c.id.in_(list(upload_ids)))
            .values(status=status, job_id=job_id, error=error[:1000] if error else None, updated_at=now)
        )
        if status == "submitted" and job_id is not None:
            shop_id, pool_id = (
                session.connection()
                .execute(core_select(_upload.c.shop_id, _upload.c.pool_id).where(_upload.c.id == upload_ids[0]))
                .one()
            )
            outbox.enqueue(
                session,
                RESULTS,
                {"pool_id": pool_id, "job_id": job_id},
                shop_id,
                dedupe_key=f"{RESULTS}:{job_id}"[:255],
                run_after=now + RESULTS_AFTER,
            )


async def handle_upload(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    engine = ctx.engine
    assert job.shop_id is not None
    pool, shop = await run(engine, partial(_load, engine, job.shop_id, int(job.payload["pool_id"])))
    klaviyo = _connector(ctx, shop)
    await klaviyo.ensure_coupon(pool.coupon_id, pool.description or None)
    waiting = await _settle_lost(engine, klaviyo, pool)
    while True:
        items = await run(engine, partial(_items, engine, pool, "queued", JOB_SIZE, mark_sending=True))
        if not items:
            break
        ids = [i.upload_id for i in items]
        try:
            job_id = await klaviyo.submit_coupon_codes(pool.coupon_id, [i.spec for i in items])
        except (RateLimited, NotSent, AuthError):
            await run(engine, partial(_set, engine, ids, "queued"))  # Klaviyo provably did not take them
            raise
        except Rejected as exc:  # refused as a whole: nothing was created
            await run(engine, partial(_set, engine, ids, "failed", error=str(exc)))
            continue
        # anything else (5xx, timeout, a crash): the codes stay `sending`, looked up on the retry
        await run(engine, partial(_set, engine, ids, "submitted", job_id=job_id))
    if waiting:
        raise JobRunning(f"{waiting} code(s) of a request whose answer was lost are looked up once it has had time to run")


async def _settle_lost(engine: Engine, klaviyo: _Coupons, pool: _Pool) -> int:
    """Codes left `sending` by a lost answer: uploaded if Klaviyo holds them, else queued again.
    Those sent less than SETTLE_AFTER ago are left for a later run (their job may still be
    queued at Klaviyo); returns how many."""
    waiting = 0
    while True:
        items = await run(engine, partial(_items, engine, pool, "sending", JOB_SIZE, mark_sending=False))
        due = [i for i in items if i.attempted_at is None or i.attempted_at <= utcnow() - SETTLE_AFTER]
        waiting = len(items) - len(due)
        if not due:
            return waiting
        found: list[int] = []
        missing: list[int] = []
        for item in due:
            exists = await klaviyo.coupon_code_exists(pool.coupon_id, item.spec.display or item.spec.code)
            (found if exists else missing).append(item.upload_id)
        await run(engine, partial(_set, engine, found, "uploaded"))
        await run(engine, partial(_set, engine, missing, "queued"))
        if len(items) < JOB_SIZE:
            return waiting


async def handle_results(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    """A submitted job's outcome per code: created, or already at Klaviyo → uploaded; else failed."""
    engine = ctx.engine
    assert job.shop_id is not None
    pool, shop = await run(engine, partial(_load, engine, job.shop_id, int(job.payload["pool_id"])))
    job_id = str(job.payload["job_id"])
    items = await run(engine, partial(_submitted, engine, pool, job_id))
    if not items:
        return
    klaviyo = _connector(ctx, shop)
    outcome, created = await klaviyo.coupon_job_outcome(job_id)
    if not outcome.done:
        raise JobRunning(f"Klaviyo job {job_id} is {outcome.status}")
    uploaded, failed = [], []
    for upload_id, unique in items:
        if f"{pool.coupon_id}-{unique}" in created or await klaviyo.coupon_code_exists(pool.coupon_id, unique):
            uploaded.append(upload_id)
        else:
            failed.append(upload_id)
    error = outcome.errors[0] if outcome.errors else f"Klaviyo's job {job_id} ({outcome.status}) did not create this code"
    await run(engine, partial(_set, engine, uploaded, "uploaded", job_id=job_id))
    await run(engine, partial(_set, engine, failed, "failed", job_id=job_id, error=error))
    await run(engine, partial(_queue_check, engine, pool.shop_id, pool.id))


def _submitted(engine: Engine, pool: _Pool, job_id: str) -> list[tuple[int, str]]:
    items = _items_by_job(engine, pool, job_id)
    return [(i.upload_id, i.spec.display or i.spec.code) for i in items]


def _items_by_job(engine: Engine, pool: _Pool, job_id: str) -> list[_Item]:
    with session_scope(engine) as session:
        with session_reader(session) as reader:
            campaign = claimstore.campaign_info(reader, shop_id=pool.shop_id, campaign_id=pool.campaign_id)
        assert campaign is not None
        fmt = caches.code_format(campaign.format_text)
        rows = (
            session.connection()
            .execute(
                core_select(_upload.c.id, _code.c.code)
                .join(_code, _code.c.id == _upload.c.code_id)
                .where(_upload.c.pool_id == pool.id, _upload.c.job_id == job_id, _upload.c.status == "submitted")
                .order_by(_upload.c.id)
            )
            .all()
        )
    return [_Item(int(r.id), CodeSpec(code=r.code, display=_display(fmt, r.code)), None) for r in rows]


# --- the worker: pool health ------------------------------------------------------------------


def _queue_check(engine: Engine, shop_id: int, pool_id: int) -> None:
    with session_scope(engine) as session:
        outbox.enqueue(session, CHECK, {"pool_id": pool_id}, shop_id, dedupe_key=f"{CHECK}:{pool_id}")


def alert_key(shop_id: int, pool_id: int) -> str:
    return f"klaviyo_pool_low:{shop_id}:{pool_id}"


async def handle_check(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    """Count Klaviyo's unassigned codes (up to what the thresholds need), alert and top up."""
    engine = ctx.engine
    assert job.shop_id is not None
    pool, shop = await run(engine, partial(_load, engine, job.shop_id, int(job.payload["pool_id"])))
    policy = await run(engine, partial(_policy, engine, pool))
    watch = max(policy[0], policy[1] or 0)
    unassigned = await _connector(ctx, shop).count_unassigned(pool.coupon_id, upto=watch + 1) if watch else 0
    await run(engine, partial(_after_count, engine, pool, unassigned))


def _policy(engine: Engine, pool: _Pool) -> tuple[int, int | None, int]:
    with session_scope(engine) as session:
        row = get_pool(session, shop_id=pool.shop_id, pool_id=pool.id)
        return row.alert_below, row.topup_below, row.topup_count


def _after_count(engine: Engine, pool: _Pool, unassigned: int) -> None:
    alert_below, topup_below, topup_count = _policy(engine, pool)
    now = utcnow()
    with session_scope(engine) as session:
        conn = session.connection()
        conn.execute(
            update(CouponPool.__table__)  # type: ignore[attr-defined]
            .where(CouponPool.__table__.c.id == pool.id)  # type: ignore[attr-defined]
            .values(unassigned=unassigned, checked_at=now)
        )
        key = alert_key(pool.shop_id, pool.id)
        if unassigned < alert_below:
            claimstore.raise_alert(
                conn,
                {
                    "shop_id": pool.shop_id,
                    "campaign_id": pool.campaign_id,
                    "partner_id": None,
                    "kind": "klaviyo_pool_low",
                    "message": f"Klaviyo coupon {pool.coupon_id!r}: {unassigned} unassigned code(s) left",
                    "details": {"unassigned": unassigned, "threshold": alert_below, "pool_id": pool.id},
                    "open_key": key,
                },
                now,
            )
        else:
            claimstore.resolve_alert(conn, open_key=key, now=now)
        in_flight = sum(
            n for status, n in upload_counts(session, shop_id=pool.shop_id, pool_id=pool.id).items() if status in STATUSES[:3]
        )
    if topup_below is not None and unassigned + in_flight < topup_below:
        _topup(engine, pool, topup_count)


def _topup(engine: Engine, pool: _Pool, count: int) -> None:
    """Move `count` more codes in, generating the campaign's shortfall first (as poolhealth's top-up)."""
    with session_scope(engine) as session:
        free = claimstore.free_codes(
            session.connection(), shop_id=pool.shop_id, campaign_id=pool.campaign_id, partner_id=None, upto=count, now=utcnow()
        )
    if free < count:
        issuing.generate_codes(engine, shop_id=pool.shop_id, campaign_id=pool.campaign_id, count=count - free)
    with session_scope(engine) as session:
        campaign = get_campaign(session, shop_id=pool.shop_id, campaign_id=pool.campaign_id)
        if free < count and campaign.platform_discount_id and platform.is_installed(session, pool.shop_id):
            platform.enqueue_push(session, shop_id=pool.shop_id, campaign_id=pool.campaign_id)
        add_codes(session, shop_id=pool.shop_id, pool_id=pool.id, count=count)


async def schedule_checks(ctx: JobContext) -> int:
    """The sweep: a check for each pool not checked for CHECK_EVERY; how many were queued."""
    engine = ctx.engine

    def work() -> int:
        due = utcnow() - CHECK_EVERY
        with session_scope(engine) as session:
            pools = session.exec(
                select(CouponPool).where((col(CouponPool.checked_at).is_(None)) | (col(CouponPool.checked_at) < due))
            ).all()
            queued = 0
            for pool in pools:
                if outbox.enqueue(session, CHECK, {"pool_id": pool.id}, pool.shop_id, dedupe_key=f"{CHECK}:{pool.id}"):
                    queued += 1
            return queued

    return await run(engine, work)


HANDLERS: dict[str, Handler] = {UPLOAD: handle_upload, RESULTS: handle_results, CHECK: handle_check}
