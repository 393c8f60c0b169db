"""Relative expiry and extensions carried to the platforms (issue #13).

Where the platform holds an end per code (WooCommerce's `date_expires` per coupon, the
sandbox), a push sends each code's effective end (plugin.campaigns.codeends), and an end that changes
after the push (a claim starting a relative expiry, an extension) is noted in the caller's
transaction and sent by the `sync.ends` job: batched, by the id the push stored, idempotent
(the same end sent twice is the same end), retried like every job. Its outcome per code is the
code's `sync_error` (None when the platform confirmed the end); a code the platform no longer
holds is pushed again, which creates it with its end.

Where it holds one end per discount only (Shopify, BigCommerce), the worker's `ExpirySweep`
queues the existing deactivation (`sync.deactivate`, one queued per campaign) for every
campaign with synced codes whose end passed since its last run: explicit ends through the
partial index ix_code_expiry, ends relative to issue through each batch's issue time. An
extended code that was taken off for its expiry is pushed again (plugin.codes.percode).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete, update
from sqlmodel import Session, col, select

from connectors.base import CODE_GONE, CodeEnd, CodeEndControl, PushResult
from plugin.campaigns.codeends import ENDS, CodeEnds, holds_code_ends
from plugin.campaigns.lookup import campaign_format
from plugin.errors import InvalidInput
from plugin.formats import codes
from plugin.platforms import sync
from plugin.platforms.connections import shop_connector
from plugin.store.db import run, session_scope
from plugin.store.jobstore import ClaimedJob, aware
from plugin.store.models import Batch, Campaign, Code, CodeEndChange, Shop, utcnow

if TYPE_CHECKING:
    from plugin.store.jobcontext import Handler, JobContext


# --- the sync.ends job ------------------------------------------------------------------------


@dataclass
class _Page:
    """One page of noted changes: what to send, what waits for its push, what is moot."""

    send: list[tuple[Code, datetime]] = field(default_factory=list)  # (code, changed_at as read)
    moot: list[tuple[int, datetime]] = field(default_factory=list)
    waiting: int = 0
    last_id: int = 0


def _page(engine: Engine, campaign_id: int, after_id: int, limit: int) -> _Page:
    page = _Page()
    with Session(engine) as session:
        rows = session.exec(
            select(CodeEndChange, Code)
            .join(Code, col(Code.id) == col(CodeEndChange.code_id))
            .where(col(CodeEndChange.campaign_id) == campaign_id, col(CodeEndChange.code_id) > after_id)
            .order_by(col(CodeEndChange.code_id))
            .limit(limit)
        ).all()
    for change, code in rows:
        page.last_id = change.code_id
        if code.sync_status == "pending":
            page.waiting += 1  # its push sends the end, or read it before the change: after it
        elif code.sync_status == "synced" and code.status == "active":
            page.send.append((code, change.changed_at))
        else:  # failed (a resync pushes the end), deactivated or voided: nothing to update
            page.moot.append((change.code_id, change.changed_at))
    return page


def _forget(session: Session, done: Sequence[tuple[int, datetime]]) -> None:
    """Drop the noted changes that were handled, unless a later change moved them meanwhile."""
    for code_id, seen in done:
        session.execute(delete(CodeEndChange).where(col(CodeEndChange.code_id) == code_id, col(CodeEndChange.changed_at) == seen))


def _record(engine: Engine, campaign: Campaign, sent: Sequence[tuple[Code, datetime]], results: Sequence[PushResult]) -> bool:
    """Each code's outcome: confirmed (no error), refused (the platform's message), or gone from
    the platform (pending again, for a push that creates it). True when a push is needed."""
    by_code = {r.code: r for r in results}
    push = False
    with session_scope(engine) as session:
        for code, _ in sent:
            result = by_code.get(code.code)
            if result is not None and result.ok:
                values: dict[str, Any] = {"sync_error": None}
            elif result is not None and result.error == CODE_GONE:
                values, push = {"sync_status": "pending", "sync_error": "gone from the platform: pushed again with its end"}, True
            else:
                error = result.error if result is not None else "the platform did not answer for this code"
                values = {"sync_error": f"end not updated: {error or 'refused'}"[:1000]}
            session.execute(update(Code).where(col(Code.id) == code.id, col(Code.sync_status) == "synced").values(**values))
        _forget(session, [(code.id, seen) for code, seen in sent if code.id is not None])
        if push:
            sync.enqueue_push(session, shop_id=campaign.shop_id, campaign_id=campaign.id or 0)
    return push


def _drop_all(engine: Engine, campaign_id: int) -> None:
    with session_scope(engine) as session:
        session.execute(delete(CodeEndChange).where(col(CodeEndChange.campaign_id) == campaign_id))


def _load(engine: Engine, shop_id: int | None, campaign_id: int) -> tuple[Shop, Campaign, CodeEnds]:
    if shop_id is None:
        raise InvalidInput("a sync.ends job needs a shop")
    with session_scope(engine) as session:
        shop = session.get_one(Shop, shop_id)
        campaign = session.get_one(Campaign, campaign_id)
        return shop, campaign, CodeEnds.load(session, campaign)


async def handle_ends(ctx: JobContext, job: ClaimedJob) -> None:
    """Send the noted ends of the campaign's synced codes to the platform, page by page. Codes
    whose push has not written them synced yet keep their note: the push queues this job again
    when it ends. A fault (5xx, 429, timeout, an answer lost) leaves the notes, and the retry
    sends the same ends."""
    engine = ctx.engine
    campaign_id = int(job.payload["campaign_id"])
    shop, campaign, ends = await run(engine, partial(_load, engine, job.shop_id, campaign_id))
    discount_id = campaign.platform_discount_id
    if discount_id is None or shop.uninstalled_at is not None or campaign.status == "ended":
        await run(engine, partial(_drop_all, engine, campaign_id))  # nothing of ours to update there
        return
    connector = shop_connector(ctx.settings, ctx.http, shop, engine=engine)
    if not isinstance(connector, CodeEndControl):
        await run(engine, partial(_drop_all, engine, campaign_id))
        return
    fmt = campaign_format(campaign)
    after_id = 0
    while True:
        page = await run(engine, partial(_page, engine, campaign_id, after_id, getattr(connector, "BATCH_SIZE", 100)))
        if not page.last_id:
            return
        after_id = page.last_id
        if page.moot:
            await run(engine, partial(_forget_in_tx, engine, page.moot))
        if not page.send:
            continue
        items = [
            CodeEnd(code=c.code, display=codes.display(fmt, c.code), expires_at=ends.of(c), platform_id=c.platform_id)
            for c, _ in page.send
        ]
        results = await connector.set_code_ends(discount_id, items)
        await run(engine, partial(_record, engine, campaign, page.send, results))


def _forget_in_tx(engine: Engine, done: Sequence[tuple[int, datetime]]) -> None:
    with session_scope(engine) as session:
        _forget(session, done)


HANDLERS: dict[str, Handler] = {ENDS: handle_ends}


# --- the sweep: platforms without per-code ends -------------------------------------------------

SWEEP_OVERLAP = timedelta(minutes=5)  # ends re-read from the last run (clock skew between workers)


def _candidates(session: Session) -> dict[int, tuple[Campaign, Shop]]:
    """Campaigns whose codes the platform holds, on platforms that hold no end per code."""
    rows = session.exec(
        select(Campaign, Shop)
        .join(Shop, col(Shop.id) == col(Campaign.shop_id))
        .where(
            col(Campaign.platform_discount_id).is_not(None),
            col(Campaign.status) != "ended",  # its whole discount is taken off by the follow job
            col(Shop.uninstalled_at).is_(None),
        )
    ).all()
    return {c.id: (c, s) for c, s in rows if c.id is not None and not holds_code_ends(s.platform)}


def _explicit(session: Session, campaign_ids: Sequence[int], since: datetime, now: datetime) -> set[int]:
    """Which of these campaigns have a synced code whose stored end falls in (since, now]: a
    range on the partial index ix_code_expiry, then the rows it points to."""
    found: set[int] = set()
    for start in range(0, len(campaign_ids), 500):
        chunk = campaign_ids[start : start + 500]
        found.update(
            session.exec(
                select(Code.campaign_id)
                .where(
                    col(Code.expires_at) > since,
                    col(Code.expires_at) <= now,
                    col(Code.campaign_id).in_(chunk),
                    col(Code.sync_status) == "synced",
                    col(Code.status) == "active",
                )
                .distinct()
            ).all()
        )
    return found


def _from_issue(session: Session, campaign: Campaign, since: datetime, now: datetime) -> bool:
    """Whether some batch's codes reach their end relative to issue in (since, now]: a batch's
    codes were issued between its start and its finish, so their ends lie in that span moved
    by the duration (no code row is read)."""
    ends = CodeEnds.load(session, campaign)
    durations = ends.issue_durations()
    if not durations:
        return False
    batches = session.exec(
        select(Batch.id, Batch.created_at, Batch.finished_at).where(col(Batch.campaign_id) == campaign.id)
    ).all()
    for batch_id, started, finished in batches:
        delta = durations.get(batch_id) if batch_id in ends.batches else durations.get(None)
        if delta is None:
            continue
        first, last = aware(started) + delta, aware(finished or now) + delta
        if first <= now and last > since:
            return True
    return False


def sweep_expired(engine: Engine, *, since: datetime, now: datetime) -> int:
    """Queue the deactivation of every campaign (on a platform without per-code ends) with a
    synced code whose end passed in (since, now]; how many were queued."""
    with session_scope(engine) as session:
        candidates = _candidates(session)
        due = _explicit(session, sorted(candidates), since, now)
        due.update(
            cid for cid, (campaign, _) in candidates.items() if cid not in due and _from_issue(session, campaign, since, now)
        )
        queued = 0
        for campaign_id in sorted(due):
            campaign, _ = candidates[campaign_id]
            if sync.enqueue_deactivate(session, shop_id=campaign.shop_id, campaign_id=campaign_id) is not None:
                queued += 1
        return queued


@dataclass
class ExpirySweep:
    """The worker's sweep: every `every`, the ends that passed since the last run (from
    `lookback` ago on a process's first run; reconciliation repairs anything older)."""

    every: timedelta = timedelta(seconds=60)
    lookback: timedelta = timedelta(days=7)
    last: datetime | None = None

    async def __call__(self, ctx: JobContext) -> int:
        now = utcnow()
        if self.last is not None and now - self.last < self.every:
            return 0
        since = self.last - SWEEP_OVERLAP if self.last is not None else now - self.lookback
        engine = ctx.engine
        queued = await run(engine, partial(sweep_expired, engine, since=since, now=now))
        self.last = now
        return queued


__all__ = ["ENDS", "HANDLERS", "ExpirySweep", "handle_ends", "sweep_expired"]
