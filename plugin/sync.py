"""Sync: a campaign's codes into the shop's platform discount, and voided or expired ones out.

Enqueuing is a service call inside the caller's transaction (the outbox); the handlers run in
the worker. A push is idempotent: it only takes codes still `pending`, and each chunk's
results are written as soon as the platform answers, so a re-run after a crash pushes only
what was not confirmed; a code the platform already holds counts as synced (connectors answer
it as ok). The platform discount is created once per campaign and its id stored on the
campaign before any code is pushed. Its first code (the marker) is chosen and stored before the
first create, so every attempt sends the same one and a create whose answer was lost is found
again by it on the platform instead of being made twice. A code is marked deactivated only
when the platform confirms its removal; an unconfirmed one stays synced and the job is retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, bindparam, func, or_, update
from sqlmodel import Session, col, select

from connectors.base import CodeSpec, DiscountSpec, DiscountState, DiscountStatusControl, PushResult, discount_marker
from connectors.errors import ConnectorError
from plugin import codes, outbox
from plugin.campaigns import campaign_format, get_campaign
from plugin.connections import shop_connector
from plugin.db import run, session_scope
from plugin.errors import Conflict, InvalidInput
from plugin.jobstore import aware
from plugin.models import AuditEvent, Campaign, Code, Job, Shop, utcnow
from plugin.rules import CampaignRules, FixedDiscount, FreeShippingDiscount, PercentageDiscount

if TYPE_CHECKING:
    from plugin.worker import Handler, JobContext

PUSH = "sync.push"
DEACTIVATE = "sync.deactivate"
FOLLOW = "sync.follow"  # the platform discount follows the campaign's status and rules
# platforms whose discount can't change type in place: a type change there replaces the discount
REPLACES_ON_TYPE_CHANGE = frozenset({"shopify"})


# --- services (in the caller's transaction) ---------------------------------------------------


class ShopUninstalled(Conflict):
    reason = "shop_uninstalled"


def is_installed(session: Session, shop_id: int) -> bool:
    shop = session.get(Shop, shop_id)
    return shop is not None and shop.uninstalled_at is None


def _require_installed(session: Session, shop_id: int) -> None:
    # Refused here rather than queued: a job for a shop that revoked our access can only die.
    if not is_installed(session, shop_id):
        raise ShopUninstalled("the app is uninstalled from this shop: install it again before syncing codes to its platform")


def enqueue_push(session: Session, *, shop_id: int, campaign_id: int) -> int | None:
    """Queue a push of the campaign's pending codes (one queued push per campaign covers all);
    refuses a campaign the platform can't hold (NotSyncable) or a shop that uninstalled the
    app (ShopUninstalled), before any work."""
    discount_spec(get_campaign(session, shop_id=shop_id, campaign_id=campaign_id))
    _require_installed(session, shop_id)
    return outbox.enqueue(session, PUSH, {"campaign_id": campaign_id}, shop_id, dedupe_key=f"{PUSH}:{campaign_id}")


def resync(session: Session, *, shop_id: int, campaign_id: int, failed_only: bool = True) -> int:
    """Mark the campaign's failed codes (or all its active codes) pending again and queue a push;
    return how many codes will be pushed again."""
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    which = ["failed"] if failed_only else ["failed", "synced"]
    result = session.execute(
        update(Code)
        .where(
            col(Code.shop_id) == shop_id,
            col(Code.campaign_id) == campaign_id,
            col(Code.status) == "active",
            col(Code.sync_status).in_(which),
        )
        .values(sync_status="pending", sync_error=None)
    )
    enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    return int(result.rowcount)  # type: ignore[attr-defined]


def enqueue_deactivate(session: Session, *, shop_id: int, campaign_id: int) -> int | None:
    """Queue the removal from the platform of the campaign's voided and expired codes."""
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    _require_installed(session, shop_id)
    return outbox.enqueue(session, DEACTIVATE, {"campaign_id": campaign_id}, shop_id, dedupe_key=f"{DEACTIVATE}:{campaign_id}")


def enqueue_follow(session: Session, *, campaign: Campaign) -> int | None:
    """Queue the platform discount's catching up with the campaign's status and rules (pause,
    resume, end, rule edits), in the caller's transaction. The job reads the campaign when it
    runs, so one queued job covers every change made before it starts. Nothing to do before the
    discount exists (the first push creates it from the rules of the day) or once the app is
    uninstalled (nothing of ours reaches that platform any more)."""
    if campaign.platform_discount_id is None or not is_installed(session, campaign.shop_id):
        return None
    assert campaign.id is not None
    return outbox.enqueue(session, FOLLOW, {"campaign_id": campaign.id}, campaign.shop_id, dedupe_key=f"{FOLLOW}:{campaign.id}")


def enqueue_replace(session: Session, *, campaign: Campaign) -> int | None:
    """A rule edit changed the discount's type where the platform can't change it in place: the
    campaign lets go of its discount (a new marker will be drawn), its codes are pending again,
    and one push job deletes the old discount before it creates the new one and moves the codes
    there, so no code is ever live in both."""
    old = campaign.platform_discount_id
    if old is None or not is_installed(session, campaign.shop_id):
        return None
    assert campaign.id is not None
    campaign.platform_discount_id = None
    campaign.platform_discount_marker = None
    session.add(campaign)
    session.execute(
        update(Code)
        .where(
            col(Code.campaign_id) == campaign.id,
            col(Code.status) == "active",
            col(Code.sync_status).in_(["synced", "failed"]),
        )
        .values(sync_status="pending", sync_error=None)
    )
    # no dedupe: this job carries the discount to retire, which a queued plain push does not
    return outbox.enqueue(session, PUSH, {"campaign_id": campaign.id, "retire": old}, campaign.shop_id)


def follow_rule_edit(session: Session, *, campaign: Campaign, before: dict[str, Any]) -> int | None:
    """Queue the platform discount's update in place after a rule edit, or its replacement when
    the edit changed the discount's type (amount off ⇄ free shipping) on a platform that can't
    change a discount's type in place."""
    shop = session.get(Shop, campaign.shop_id)
    changed = before and _discount_family(before) != _discount_family(campaign.rules)
    if changed and shop is not None and shop.platform in REPLACES_ON_TYPE_CHANGE:
        return enqueue_replace(session, campaign=campaign)
    return enqueue_follow(session, campaign=campaign)


def _discount_family(rules: dict[str, Any]) -> str:
    """Percentage and fixed amount are one kind of platform discount; free shipping another."""
    discount = rules.get("discount")
    kind = discount.get("type") if isinstance(discount, dict) else None
    return "free_shipping" if kind == "free_shipping" else "amount"


def sync_counts(session: Session, *, shop_id: int, campaign_id: int) -> dict[str, int]:
    """Codes per sync status, for progress and the admin."""
    rows = session.exec(
        select(Code.sync_status, func.count())
        .where(col(Code.shop_id) == shop_id, col(Code.campaign_id) == campaign_id)
        .group_by(col(Code.sync_status))
    ).all()
    return {status: int(count) for status, count in rows}


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


class NotSyncable(InvalidInput):
    reason = "not_syncable"


def discount_spec(campaign: Campaign) -> DiscountSpec:
    """What the platform can hold of the campaign's rules; Couponry flags the rest at the webhook.

    A campaign whose discount a platform discount can't express (no rules yet, tiers, bundles)
    is refused rather than pushed as something that gives a different discount.
    """
    assert campaign.id is not None
    if not campaign.rules:
        raise NotSyncable("the campaign has no rules yet: give it a discount before syncing its codes")
    rules = CampaignRules.model_validate(campaign.rules)
    d = rules.discount
    kind: Any
    if isinstance(d, PercentageDiscount):
        # platforms hold whole percents; a fraction is truncated (never gives more than the rule)
        kind, value = "percentage", int(d.percent)
    elif isinstance(d, FixedDiscount):
        kind, value = "fixed_amount", d.amount
    elif isinstance(d, FreeShippingDiscount):
        kind, value = "free_shipping", 0
    else:
        raise NotSyncable(
            f"a {d.type} discount can't be held by a platform discount: redeem these codes through the checkout API"
        )
    eligible = rules.basket.eligible
    excluded = rules.basket.excluded
    # only a plain product/collection list maps onto the platforms' entitlements; anything
    # finer (variants, SKUs, exclusions) stays ours to check at the webhook
    simple_items = eligible is not None and not (eligible.variant_ids or eligible.skus) and excluded.is_empty()
    return DiscountSpec(
        campaign_id=campaign.id,
        title=f"Couponry: {campaign.name}"[:255],
        kind=kind,
        value=value,
        currency=rules.currency or campaign.currency,
        starts_at=rules.time.starts_at,
        ends_at=rules.time.ends_at,
        uses_per_code=rules.usage.uses_per_code,
        once_per_customer=rules.usage.uses_per_customer == 1,
        minimum_subtotal=rules.basket.minimum_subtotal,
        minimum_quantity=rules.basket.minimum_quantity,
        product_ids=tuple(eligible.product_ids) if eligible is not None and simple_items else (),
        collection_ids=tuple(eligible.collection_ids) if eligible is not None and simple_items else (),
        combines_with_codes=rules.stacking.with_other_codes,
        combines_with_automatic=rules.stacking.with_automatic_discounts,
    )


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
                    col(Code.sync_status) == "pending",
                    col(Code.status) == "active",
                    col(Code.id) > after_id,
                )
                .order_by(col(Code.id))
                .limit(limit)
            ).all()
        )


_code = Code.__table__  # type: ignore[attr-defined]


def _write_results(
    engine: Engine, rows: Sequence[Code], results: Sequence[PushResult], *, ok_status: str, fail_status: str, now: datetime
) -> None:
    """A chunk's answers. A push's answer replaces the code's platform id, also with none (an id
    from a replaced discount must not outlive it); a removal's keeps the stored one when the
    platform names none."""
    by_code = {r.code: r for r in results}
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for row in rows:
        result = by_code.get(row.code)
        if result is None:
            bad.append({"b_id": row.id, "b_error": "the platform did not answer for this code"})
        elif result.ok:
            good.append({"b_id": row.id, "b_platform_id": result.platform_id})
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


async def handle_push(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    engine = ctx.engine
    campaign_id = int(job.payload["campaign_id"])
    shop, campaign = await run(engine, lambda: _load(engine, job.shop_id, campaign_id))
    connector = shop_connector(ctx.settings, ctx.http, shop, engine=ctx.engine)
    if retire := job.payload.get("retire"):
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
    await push_pending(engine, connector, campaign, str(discount_id))


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


def _all_deactivated(engine: Engine, campaign_id: int) -> int:
    """Record every synced code of a campaign whose discount was deleted as deactivated."""
    with engine.begin() as conn:
        result = conn.execute(
            update(_code)
            .where(_code.c.campaign_id == campaign_id, _code.c.sync_status == "synced")
            .values(sync_status="deactivated", sync_error=None, synced_at=utcnow())
        )
        return int(result.rowcount)


async def push_pending(engine: Engine, connector: Any, campaign: Campaign, discount_id: str) -> tuple[int, int]:
    """Push the campaign's pending active codes into its platform discount, chunk by chunk,
    each chunk's answers written at once; return (synced, failed)."""
    assert campaign.id is not None
    campaign_id = campaign.id
    fmt = campaign_format(campaign)
    after_id = synced = failed = 0
    while True:
        rows = await run(engine, partial(_pending, engine, campaign_id, after_id, connector.BATCH_SIZE))
        if not rows:
            return synced, failed
        specs = [
            CodeSpec(code=r.code, display=_display(fmt, r.code), expires_at=aware(r.expires_at) if r.expires_at else None)
            for r in rows
        ]
        results = await connector.push_codes(discount_id, specs)
        await run(engine, partial(_write_results, engine, rows, results, ok_status="synced", fail_status="failed", now=utcnow()))
        ok = sum(1 for r in results if r.ok)
        synced, failed = synced + ok, failed + len(rows) - ok
        after_id = rows[-1].id or after_id


def _display(fmt: codes.CodeFormat, stored: str) -> str:
    return codes.display(fmt, stored)


def _reference(connector: Any, fmt: codes.CodeFormat, row: Code) -> str:
    """What the platform removes a code by: the id it gave the code when it was pushed, where the
    connector takes ids (Shopify's redeem-code gid: no search); else its display form, which the
    connector looks up first (a lookup that misses leaves the code synced)."""
    if row.platform_id and getattr(connector, "DEACTIVATES_BY_ID", False):
        return row.platform_id
    return _display(fmt, row.code)


def _to_deactivate(engine: Engine, campaign_id: int, after_id: int, limit: int, now: datetime, *, everything: bool) -> list[Code]:
    """Synced codes the platform must stop accepting: voided or expired ones, or every one once
    the campaign has ended."""
    lapsed = col(Code.id) > 0 if everything else or_(col(Code.status) == "voided", col(Code.expires_at) <= now)
    with Session(engine) as session:
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
                campaign.id,
                after_id,
                connector.BATCH_SIZE,
                utcnow(),
                everything=campaign.status == "ended",
            ),
        )
        if not rows:
            return deactivated, unconfirmed
        given = [_reference(connector, fmt, r) for r in rows]
        answers = await connector.deactivate_codes(campaign.platform_discount_id, given)
        # connectors answer with the string they were given; map back to the stored form
        back = {d: r.code for d, r in zip(given, rows, strict=True)}
        results = [PushResult(code=back.get(a.code, a.code), ok=a.ok, platform_id=a.platform_id, error=a.error) for a in answers]
        done = partial(_write_results, engine, rows, results, ok_status="deactivated", fail_status="synced", now=utcnow())
        await run(engine, done)
        ok = sum(1 for r in results if r.ok)
        deactivated, unconfirmed = deactivated + ok, unconfirmed + len(rows) - ok
        after_id = rows[-1].id or after_id


HANDLERS: dict[str, Handler] = {PUSH: handle_push, DEACTIVATE: handle_deactivate, FOLLOW: handle_follow}
