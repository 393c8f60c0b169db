"""Sync: a campaign's codes into the shop's platform discount, and voided or expired ones out.

Enqueuing is a service call inside the caller's transaction (the outbox); the handlers run in
the worker. A push is idempotent: it only takes codes still `pending`, and each chunk's
results are written as soon as the platform answers, so a re-run after a crash pushes only
what was not confirmed; a code the platform already holds counts as synced (connectors answer
it as ok). A push job sends at most `sync_chunk` codes (COUPONRY_SYNC_CHUNK), then queues the
rest as a new job behind the jobs that came due meanwhile, so a million-code push never holds
up a small sync of another campaign. The platform discount is created once per campaign and its id stored on the
campaign before any code is pushed. Its first code (the marker) is chosen and stored before the
first create, so every attempt sends the same one and a create whose answer was lost is found
again by it on the platform instead of being made twice. A code is marked deactivated only
when the platform confirms its removal; an unconfirmed one stays synced and the job is retried.

Platforms with no campaign-level discount (WooCommerce: `connectors.base.CodeStatusControl`)
follow code by code: every synced code is updated in place by its stored platform id (rules and
state, in batches), a paused campaign's pending codes wait for its resume (a code pushed live
while paused would take orders), and the outcome is written on each code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Engine, bindparam, func, or_, text, update
from sqlmodel import Session, col, select

from connectors.base import (
    CODE_GONE,
    CodeEndControl,
    CodeSpec,
    CodeState,
    CodeStatusControl,
    DiscountState,
    DiscountStatusControl,
    PushResult,
    discount_marker,
)
from connectors.errors import ConnectorError
from plugin.campaigns.codeends import CodeEnds, ends_waiting, enqueue_ends
from plugin.campaigns.lookup import campaign_format, get_campaign
from plugin.errors import Conflict, InvalidInput
from plugin.formats import codes
from plugin.metrics import SYNC_FAILURES
from plugin.platforms.connections import shop_connector
from plugin.store import outbox
from plugin.store.db import run, session_scope
from plugin.store.jobstore import aware
from plugin.store.models import PENDING_CODE_PREDICATE, AuditEvent, Campaign, Code, Job, Shop, utcnow

if TYPE_CHECKING:
    from plugin.store.jobcontext import Handler, JobContext


# the queueing services are defined with campaigns (which call them) and are part of sync's face
from plugin.campaigns.platform import (
    DEACTIVATE as DEACTIVATE,
)
from plugin.campaigns.platform import (
    FOLLOW as FOLLOW,
)
from plugin.campaigns.platform import (
    PUSH as PUSH,
)
from plugin.campaigns.platform import (
    REPLACES_ON_TYPE_CHANGE as REPLACES_ON_TYPE_CHANGE,
)
from plugin.campaigns.platform import (
    NotSyncable as NotSyncable,
)
from plugin.campaigns.platform import (
    ShopUninstalled as ShopUninstalled,
)
from plugin.campaigns.platform import (
    discount_spec as discount_spec,
)
from plugin.campaigns.platform import (
    enqueue_deactivate as enqueue_deactivate,
)
from plugin.campaigns.platform import (
    enqueue_follow as enqueue_follow,
)
from plugin.campaigns.platform import (
    enqueue_push as enqueue_push,
)
from plugin.campaigns.platform import (
    enqueue_replace as enqueue_replace,
)
from plugin.campaigns.platform import (
    follow_rule_edit as follow_rule_edit,
)
from plugin.campaigns.platform import (
    is_installed as is_installed,
)
from plugin.campaigns.platform import (
    resync as resync,
)
from plugin.campaigns.platform import (
    sync_counts as sync_counts,
)

SYNC_JOBS = (PUSH, DEACTIVATE, FOLLOW)
FOLLOW_ACTIONS = ("campaign.platform_followed", "campaign.platform_replaced")


def platform_status(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Where the campaign stands on the shop's platform: its discount's id, its codes per sync
    status, what the last follow-up of a pause / resume / end / rule edit did (its audit row),
    and the error of a sync job still being retried or dead-lettered (None once one succeeded)."""
    assert campaign.id is not None
    shop = session.get(Shop, campaign.shop_id)
    followed = session.exec(
        select(AuditEvent)
        .where(
            col(AuditEvent.shop_id) == campaign.shop_id,
            col(AuditEvent.subject) == f"campaign:{campaign.id}",
            col(AuditEvent.action).in_(FOLLOW_ACTIONS),
        )
        .order_by(col(AuditEvent.id).desc())
        .limit(1)
    ).first()
    return {
        "platform": shop.platform if shop else None,
        "discount_id": campaign.platform_discount_id,
        "codes": sync_counts(session, shop_id=campaign.shop_id, campaign_id=campaign.id),
        "last_follow": (
            {"at": aware(followed.created_at), "action": followed.action, "outcome": followed.details} if followed else None
        ),
        "last_error": _failing_job(session, campaign),
    }


def _failing_job(session: Session, campaign: Campaign) -> dict[str, Any] | None:
    """The newest sync job of the campaign, when it is failing (queued for a retry, or dead)."""
    job = session.exec(
        select(Job)
        .where(
            col(Job.shop_id) == campaign.shop_id,
            col(Job.kind).in_(SYNC_JOBS),
            col(Job.payload)["campaign_id"].as_integer() == campaign.id,
        )
        .order_by(col(Job.id).desc())
        .limit(1)
    ).first()
    if job is None or job.last_error is None or job.status not in ("queued", "running", "dead"):
        return None
    return {"job": job.kind, "status": job.status, "attempts": job.attempts, "error": job.last_error}


# --- handlers (in the worker) -----------------------------------------------------------------


def _load(engine: Engine, shop_id: int | None, campaign_id: int) -> tuple[Shop, Campaign]:
    if shop_id is None:
        raise InvalidInput("a sync job needs a shop")
    with session_scope(engine) as session:
        shop = session.get_one(Shop, shop_id)
        return shop, get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)


def _stored_marker(engine: Engine, campaign_id: int) -> str:
    """The campaign's discount marker: drawn and stored now unless a run before us stored one."""
    with session_scope(engine) as session:
        session.execute(
            update(Campaign)
            .where(col(Campaign.id) == campaign_id, col(Campaign.platform_discount_marker).is_(None))
            .values(platform_discount_marker=discount_marker())
        )
        return session.exec(select(Campaign.platform_discount_marker).where(col(Campaign.id) == campaign_id)).one() or ""


def _save_discount_id(engine: Engine, campaign_id: int, discount_id: str) -> None:
    with session_scope(engine) as session:
        session.execute(update(Campaign).where(col(Campaign.id) == campaign_id).values(platform_discount_id=discount_id))


def _pending(engine: Engine, campaign_id: int, after_id: int, limit: int) -> list[Code]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Code)
                .where(
                    col(Code.campaign_id) == campaign_id,
                    text(PENDING_CODE_PREDICATE),  # literal: ix_code_pending serves it on SQLite too
                    col(Code.status) == "active",
                    col(Code.id) > after_id,
                )
                .order_by(col(Code.id))
                .limit(limit)
            ).all()
        )


_code = Code.__table__  # type: ignore[attr-defined]


def _write_results(
    engine: Engine,
    rows: Sequence[Code],
    results: Sequence[PushResult],
    *,
    ok_status: str,
    fail_status: str,
    now: datetime,
    gone_status: str | None = None,
    then: Callable[[Session], object] | None = None,
) -> None:
    """A chunk's answers. A push's answer replaces the code's platform id, also with none (an id
    from a replaced discount must not outlive it); a removal's keeps the stored one when the
    platform names none. With `gone_status`, a code the platform no longer holds (CODE_GONE)
    gets that status instead of `fail_status`."""
    by_code = {r.code: r for r in results}
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    gone: list[dict[str, Any]] = []
    for row in rows:
        result = by_code.get(row.code)
        if result is None:
            bad.append({"b_id": row.id, "b_error": "the platform did not answer for this code"})
        elif result.ok:
            good.append({"b_id": row.id, "b_platform_id": result.platform_id})
        elif gone_status and result.error == CODE_GONE:
            gone.append({"b_id": row.id, "b_error": "missing on the platform: pushed again"})
        else:
            bad.append({"b_id": row.id, "b_error": (result.error or "refused")[:1000]})
    platform_id: Any = bindparam("b_platform_id")
    if ok_status == "deactivated":
        platform_id = func.coalesce(platform_id, _code.c.platform_id)
    with engine.begin() as conn:
        if good:
            conn.execute(
                update(_code)
                .where(_code.c.id == bindparam("b_id"))
                .values(sync_status=ok_status, platform_id=platform_id, sync_error=None, synced_at=now),
                good,
            )
        if bad:
            conn.execute(
                update(_code)
                .where(_code.c.id == bindparam("b_id"))
                .values(sync_status=fail_status, sync_error=bindparam("b_error")),
                bad,
            )
        if gone:
            conn.execute(
                update(_code)
                .where(_code.c.id == bindparam("b_id"))
                .values(sync_status=gone_status, sync_error=bindparam("b_error")),
                gone,
            )
        if then is not None:
            with Session(bind=conn) as session:
                then(session)


async def handle_push(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    engine = ctx.engine
    campaign_id = int(job.payload["campaign_id"])
    shop, campaign = await run(engine, lambda: _load(engine, job.shop_id, campaign_id))
    connector = shop_connector(ctx.settings, ctx.http, shop, engine=ctx.engine)
    try:
        await _push(ctx, connector, shop, campaign, retire=job.payload.get("retire"))
    except ConnectorError:
        SYNC_FAILURES.labels(connector.name, "call").inc()
        raise


async def _push(ctx: JobContext, connector: Any, shop: Shop, campaign: Campaign, *, retire: Any) -> None:
    engine = ctx.engine
    campaign_id = campaign.id
    assert campaign_id is not None
    if retire:
        await _retire(engine, connector, campaign, str(retire))
    discount_id = campaign.platform_discount_id
    if discount_id is None:
        marker = campaign.platform_discount_marker or await run(engine, lambda: _stored_marker(engine, campaign_id))
        discount_id = await connector.ensure_discount(replace(discount_spec(campaign), marker=marker))
        if campaign.status != "active" and isinstance(connector, DiscountStatusControl):
            # a paused campaign's new discount (a replacement, a first push) takes no order:
            # switched off before its id is stored, so a retry that adopts it switches it off too
            await connector.set_discount_status(str(discount_id), "paused")
        await run(engine, lambda: _save_discount_id(engine, campaign_id, str(discount_id)))
    # a chunk per job: the rest is queued again behind the jobs that came due meanwhile, in the
    # transaction that writes the chunk's last answers, so other campaigns' syncs interleave
    more = partial(_queue_rest, shop_id=shop.id, campaign_id=campaign_id)
    await push_pending(engine, connector, campaign, str(discount_id), limit=ctx.settings.sync_chunk, then=more)


def _queue_rest(session: Session, *, shop_id: int | None, campaign_id: int) -> None:
    rest = select(Code.id).where(
        col(Code.campaign_id) == campaign_id, col(Code.sync_status) == "pending", col(Code.status) == "active"
    )
    if session.exec(rest.limit(1)).first() is not None:
        # a push already queued (dedupe) covers the rest as well
        outbox.enqueue(session, PUSH, {"campaign_id": campaign_id}, shop_id, dedupe_key=f"{PUSH}:{campaign_id}")


async def _retire(engine: Engine, connector: Any, campaign: Campaign, old_id: str) -> None:
    """Delete a replaced discount (its codes with it) before its codes go to the new one. A code
    a concurrent push tried to add while the old discount still held it failed as taken: it is
    pending again now that the old one is gone."""
    assert campaign.id is not None
    campaign_id = campaign.id
    if isinstance(connector, DiscountStatusControl):
        await connector.set_discount_status(old_id, "deleted")
    else:  # not reached today (only platforms that can delete a discount replace it)
        raise Conflict("this platform can't delete a discount: a type change can't replace it")

    def after() -> None:
        with session_scope(engine) as session:
            session.execute(
                update(Code)
                .where(col(Code.campaign_id) == campaign_id, col(Code.status) == "active", col(Code.sync_status) == "failed")
                .values(sync_status="pending", sync_error=None)
            )
            _audit(session, campaign, "campaign.platform_replaced", {"old_discount_id": old_id})

    await run(engine, after)


def _audit(session: Session, campaign: Campaign, action: str, details: dict[str, Any]) -> None:
    session.add(
        AuditEvent(shop_id=campaign.shop_id, action=action, subject=f"campaign:{campaign.id}", actor="worker", details=details)
    )


async def handle_follow(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    engine = ctx.engine
    campaign_id = int(job.payload["campaign_id"])
    shop, campaign = await run(engine, lambda: _load(engine, job.shop_id, campaign_id))
    if campaign.platform_discount_id is None:
        return  # replaced or never created: the push that creates it uses the rules of the day
    connector = shop_connector(ctx.settings, ctx.http, shop, engine=ctx.engine)
    outcome = await follow_campaign(engine, connector, campaign)
    await run(engine, lambda: _record(engine, campaign, outcome))


def _record(engine: Engine, campaign: Campaign, outcome: dict[str, Any]) -> None:
    with session_scope(engine) as session:
        _audit(session, campaign, "campaign.platform_followed", outcome)


async def follow_campaign(engine: Engine, connector: Any, campaign: Campaign) -> dict[str, Any]:
    """Make the platform discount say what the campaign says now; return what was done.

    Where the platform switches a whole discount in one call, end deletes it (and its synced codes
    are recorded deactivated), pause deactivates it and resume activates it; elsewhere an ended
    campaign's codes are deactivated one by one. The rules are sent as an update in place by the
    discount's id; on a paused discount the deactivation is sent again after them, as an update
    (e.g. of its end date) may make it live again."""
    assert campaign.id is not None and campaign.platform_discount_id is not None
    discount_id = campaign.platform_discount_id
    whole = isinstance(connector, DiscountStatusControl)
    outcome: dict[str, Any] = {"status": campaign.status, "discount_id": discount_id}
    if campaign.status != "ended" and isinstance(connector, CodeStatusControl):
        return await follow_codes(engine, connector, campaign)
    if campaign.status == "ended":
        if whole:
            await connector.set_discount_status(discount_id, "deleted")
            outcome["deleted"] = True
            outcome["codes_deactivated"] = await run(engine, partial(_all_deactivated, engine, campaign.id))
        else:
            done, unconfirmed = await deactivate_lapsed(engine, connector, campaign)
            outcome["codes_deactivated"] = done
            if unconfirmed:
                raise Unconfirmed(f"{unconfirmed} code(s) not confirmed removed by the platform; left synced, tried again")
        return outcome
    state: DiscountState = "active" if campaign.status == "active" else "paused"
    if whole and state == "paused":
        await connector.set_discount_status(discount_id, state)  # stop the checkout first
    try:
        spec = discount_spec(campaign)
    except NotSyncable as exc:
        outcome["rules"] = f"not updated: {exc}"
    else:
        updated = str(await connector.ensure_discount(replace(spec, platform_discount_id=discount_id)))
        outcome["rules"] = "updated"
        if updated != discount_id:  # BigCommerce's id carries the per-code limits its codes get
            await run(engine, partial(_save_discount_id, engine, campaign.id, updated))
            discount_id = outcome["discount_id"] = updated
    if whole:
        await connector.set_discount_status(discount_id, state)
        outcome["discount_status"] = state
    return outcome


async def follow_codes(engine: Engine, connector: Any, campaign: Campaign) -> dict[str, Any]:
    """A platform without a campaign-level discount: the template takes the campaign's rules (its
    new id stored), then every synced code is updated in place by its platform id, in batches, to
    those rules and to its state: active while the campaign is active and the code live with us,
    else paused (a voided or expired code waiting for its removal never comes back). A code the
    platform lost is made pending; an active campaign's pending codes (left while it was paused,
    or lost) are then pushed. A code the platform refused keeps its error, and the job is retried."""
    assert campaign.id is not None and campaign.platform_discount_id is not None
    campaign_id = campaign.id
    discount_id = campaign.platform_discount_id
    outcome: dict[str, Any] = {"status": campaign.status, "discount_id": discount_id}
    try:
        spec = discount_spec(campaign)
    except NotSyncable as exc:
        outcome["rules"] = f"not updated: {exc}"
    else:
        discount_id = str(await connector.ensure_discount(replace(spec, platform_discount_id=discount_id)))
        outcome["rules"] = "updated"
        if discount_id != campaign.platform_discount_id:  # WooCommerce's id is the coupon template
            await run(engine, partial(_save_discount_id, engine, campaign_id, discount_id))
            outcome["discount_id"] = discount_id
    fmt = campaign_format(campaign)
    ends = await run(engine, partial(_code_ends, engine, campaign))
    after_id = updated = failed = gone = 0
    while True:
        now = utcnow()
        rows = await run(engine, partial(_synced, engine, campaign_id, after_id, connector.BATCH_SIZE))
        if not rows:
            break
        for state in ("active", "paused"):
            chosen = [r for r in rows if _code_state(campaign, r, ends, now) == state]
            if not chosen:
                continue
            results = await connector.update_codes(discount_id, [_spec(fmt, r, ends) for r in chosen], state)
            write = partial(_write_results, engine, chosen, results, ok_status="synced", fail_status="synced", now=now)
            await run(engine, partial(write, gone_status="pending"))
            updated += sum(1 for r in results if r.ok)
            gone += sum(1 for r in results if r.error == CODE_GONE)
            failed += sum(1 for r in results if not r.ok and r.error != CODE_GONE)
        after_id = rows[-1].id or after_id
    outcome |= {"codes_updated": updated, "codes_failed": failed, "codes_lost": gone}
    if campaign.status == "active":
        outcome["codes_pushed"], _ = await push_pending(engine, connector, campaign, discount_id)
    if failed:
        await run(engine, lambda: _record(engine, campaign, outcome))  # what was done, before the retry
        raise Unconfirmed(f"{failed} code(s) not updated by the platform (see each code's error); tried again")
    return outcome


def _code_state(campaign: Campaign, row: Code, ends: CodeEnds, now: datetime) -> CodeState:
    end = ends.of(row)  # its effective end: explicit, relative to issue or claim, the campaign's
    live = campaign.status == "active" and row.status == "active" and (end is None or end > now)
    return "active" if live else "paused"


def _spec(fmt: codes.CodeFormat, row: Code, ends: CodeEnds | None = None) -> CodeSpec:
    """The code as sent, with its effective end when `ends` is given (else its explicit one)."""
    expires_at = ends.of(row) if ends is not None else aware(row.expires_at) if row.expires_at else None
    return CodeSpec(code=row.code, display=_display(fmt, row.code), expires_at=expires_at, platform_id=row.platform_id)


def _synced(engine: Engine, campaign_id: int, after_id: int, limit: int) -> list[Code]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Code)
                .where(col(Code.campaign_id) == campaign_id, col(Code.sync_status) == "synced", col(Code.id) > after_id)
                .order_by(col(Code.id))
                .limit(limit)
            ).all()
        )


def _all_deactivated(engine: Engine, campaign_id: int) -> int:
    """Record every synced code of a campaign whose discount was deleted as deactivated."""
    with engine.begin() as conn:
        result = conn.execute(
            update(_code)
            .where(_code.c.campaign_id == campaign_id, _code.c.sync_status == "synced")
            .values(sync_status="deactivated", sync_error=None, synced_at=utcnow())
        )
        return int(result.rowcount)


async def push_pending(
    engine: Engine,
    connector: Any,
    campaign: Campaign,
    discount_id: str,
    *,
    limit: int | None = None,
    then: Callable[[Session], object] | None = None,
) -> tuple[int, int]:
    """Push the campaign's pending active codes into its platform discount, chunk by chunk,
    each chunk's answers written at once; return (synced, failed). With a `limit`, stop after
    that many codes, running `then` in the transaction that writes the last answers (a pushed
    code is no longer pending, so a later call carries on where this one stopped)."""
    assert campaign.id is not None
    campaign_id = campaign.id
    fmt = campaign_format(campaign)
    ends = await run(engine, partial(_code_ends, engine, campaign))
    per_code = isinstance(connector, CodeStatusControl)
    after_id = synced = failed = 0
    lapsed = False  # a code pushed with its end already passed
    while True:
        if per_code:  # each code is live once pushed: only while the campaign is, under its rules of now
            status, current = await run(engine, partial(_campaign_state, engine, campaign_id))
            if after_id and (status != "active" or current != discount_id):
                # paused or edited while our last chunk was out: the follow job brings it along
                await run(engine, partial(_follow_later, engine, campaign_id))
            if status != "active" or current is None:
                return synced, failed
            discount_id = current
        size = connector.BATCH_SIZE if limit is None else min(connector.BATCH_SIZE, limit - synced - failed)
        rows = await run(engine, partial(_pending, engine, campaign_id, after_id, size))
        if not rows:
            await run(engine, partial(_after_push, engine, campaign, lapsed=lapsed and not isinstance(connector, CodeEndControl)))
            return synced, failed
        # each code's effective end (explicit, relative to issue or claim, campaign end): a
        # platform that holds an end per code holds it; the others ignore it (plugin.platforms.expiry)
        specs = [_spec(fmt, r, ends) for r in rows]
        now = utcnow()
        lapsed = lapsed or any(spec.expires_at is not None and spec.expires_at <= now for spec in specs)
        last = limit is not None and synced + failed + len(rows) >= limit
        results = await connector.push_codes(discount_id, specs)
        write = partial(
            _write_results,
            engine,
            rows,
            results,
            ok_status="synced",
            fail_status="failed",
            now=utcnow(),
            then=then if last else None,
        )
        await run(engine, write)
        ok = sum(1 for r in results if r.ok)
        if ok < len(rows):
            SYNC_FAILURES.labels(connector.name, "code").inc(len(rows) - ok)
        synced, failed = synced + ok, failed + len(rows) - ok
        after_id = rows[-1].id or after_id
        if last:  # the rest is queued as its own job (`then`): other jobs run in between
            await run(engine, partial(_after_push, engine, campaign, lapsed=lapsed and not isinstance(connector, CodeEndControl)))
            return synced, failed


def _after_push(engine: Engine, campaign: Campaign, *, lapsed: bool) -> None:
    """What a push leaves to other jobs: ends changed while it ran (a claim, an extension) are
    sent by `sync.ends`; a code already expired when pushed to a platform without per-code ends
    is taken off again by the deactivation."""
    assert campaign.id is not None
    with session_scope(engine) as session:
        if ends_waiting(session, campaign_id=campaign.id):
            enqueue_ends(session, shop_id=campaign.shop_id, campaign_id=campaign.id)
        if lapsed and is_installed(session, campaign.shop_id):
            enqueue_deactivate(session, shop_id=campaign.shop_id, campaign_id=campaign.id)


def _campaign_state(engine: Engine, campaign_id: int) -> tuple[str, str | None]:
    with Session(engine) as session:
        status, discount_id = session.exec(
            select(Campaign.status, Campaign.platform_discount_id).where(col(Campaign.id) == campaign_id)
        ).one()
        return status, discount_id


def _follow_later(engine: Engine, campaign_id: int) -> None:
    with session_scope(engine) as session:
        enqueue_follow(session, campaign=session.get_one(Campaign, campaign_id))


def _display(fmt: codes.CodeFormat, stored: str) -> str:
    return codes.display(fmt, stored)


def _reference(connector: Any, fmt: codes.CodeFormat, row: Code) -> str:
    """What the platform removes a code by: the id it gave the code when it was pushed, where the
    connector takes ids (Shopify's redeem-code gid: no search); else its display form, which the
    connector looks up first (a lookup that misses leaves the code synced)."""
    if row.platform_id and getattr(connector, "DEACTIVATES_BY_ID", False):
        return row.platform_id
    return _display(fmt, row.code)


def _code_ends(engine: Engine, campaign: Campaign) -> CodeEnds:
    with Session(engine) as session:
        return CodeEnds.load(session, campaign)


def _to_deactivate(
    engine: Engine, campaign: Campaign, after_id: int, limit: int, now: datetime, *, everything: bool
) -> list[Code]:
    """Synced codes the platform must stop accepting: voided or expired ones (an explicit end,
    or one relative to issue), or every one once the campaign has ended."""
    campaign_id = campaign.id
    with Session(engine) as session:
        lapsed: ColumnElement[bool]
        if everything:
            lapsed = col(Code.id) > 0
        else:
            from_issue = CodeEnds.load(session, campaign).issue_lapsed(now)
            lapsed = or_(col(Code.status) == "voided", col(Code.expires_at) <= now, from_issue)
        return list(
            session.exec(
                select(Code)
                .where(
                    col(Code.campaign_id) == campaign_id,
                    col(Code.sync_status) == "synced",
                    lapsed,
                    col(Code.id) > after_id,
                )
                .order_by(col(Code.id))
                .limit(limit)
            ).all()
        )


class Unconfirmed(ConnectorError):
    """Some codes' removal is not confirmed by the platform (e.g. Shopify's search did not find
    them): they stay synced, and the job is tried again."""

    retryable = True


async def handle_deactivate(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    engine = ctx.engine
    campaign_id = int(job.payload["campaign_id"])
    shop, campaign = await run(engine, lambda: _load(engine, job.shop_id, campaign_id))
    if campaign.platform_discount_id is None:
        return  # nothing was ever pushed
    connector = shop_connector(ctx.settings, ctx.http, shop, engine=ctx.engine)
    _, unconfirmed = await deactivate_lapsed(engine, connector, campaign)
    if unconfirmed:
        raise Unconfirmed(f"{unconfirmed} code(s) not confirmed removed by the platform; left synced, tried again")


async def deactivate_lapsed(engine: Engine, connector: Any, campaign: Campaign) -> tuple[int, int]:
    """Take the campaign's voided or expired synced codes (all of them once it has ended) off
    the platform; return (deactivated, unconfirmed). Only the platform's confirmation marks a
    code deactivated: any other answer leaves it synced, with the platform's message. Each code
    goes by its stored platform id where the connector takes one (`_reference`)."""
    assert campaign.id is not None and campaign.platform_discount_id is not None
    fmt = campaign_format(campaign)
    after_id = deactivated = unconfirmed = 0
    while True:
        rows = await run(
            engine,
            partial(
                _to_deactivate,
                engine,
                campaign,
                after_id,
                connector.BATCH_SIZE,
                utcnow(),
                everything=campaign.status == "ended",
            ),
        )
        if not rows:
            return deactivated, unconfirmed
        if isinstance(connector, CodeStatusControl):  # by the stored ids: a paused code can't be looked up
            results = await connector.delete_codes(campaign.platform_discount_id, [_spec(fmt, r) for r in rows])
        else:
            given = [_reference(connector, fmt, r) for r in rows]
            answers = await connector.deactivate_codes(campaign.platform_discount_id, given)
            # connectors answer with the string they were given; map back to the stored form
            back = {d: r.code for d, r in zip(given, rows, strict=True)}
            results = [
                PushResult(code=back.get(a.code, a.code), ok=a.ok, platform_id=a.platform_id, error=a.error) for a in answers
            ]
        done = partial(_write_results, engine, rows, results, ok_status="deactivated", fail_status="synced", now=utcnow())
        await run(engine, done)
        ok = sum(1 for r in results if r.ok)
        deactivated, unconfirmed = deactivated + ok, unconfirmed + len(rows) - ok
        after_id = rows[-1].id or after_id


HANDLERS: dict[str, Handler] = {PUSH: handle_push, DEACTIVATE: handle_deactivate, FOLLOW: handle_follow}
