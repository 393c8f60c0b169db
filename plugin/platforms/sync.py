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

from sqlalchemy import Engine, bindparam, or_, update
from sqlmodel import Session, col, select

from connectors.base import CodeSpec, DiscountState, DiscountStatusControl, PushResult, discount_marker
from connectors.errors import ConnectorError
from plugin.campaigns.lookup import campaign_format, get_campaign
from plugin.errors import Conflict, InvalidInput
from plugin.formats import codes
from plugin.platforms.connections import shop_connector
from plugin.store import outbox
from plugin.store.db import run, session_scope
from plugin.store.jobstore import aware
from plugin.store.models import AuditEvent, Campaign, Code, Shop, utcnow

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
    with engine.begin() as conn:
        if good:
            conn.execute(
                update(_code)
                .where(_code.c.id == bindparam("b_id"))
                .values(sync_status=ok_status, platform_id=bindparam("b_platform_id"), sync_error=None, synced_at=now),
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
    code deactivated: any other answer leaves it synced, with the platform's message."""
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
        displays = [_display(fmt, r.code) for r in rows]
        answers = await connector.deactivate_codes(campaign.platform_discount_id, displays)
        # connectors answer with the string they were given; map back to the stored form
        back = {d: r.code for d, r in zip(displays, rows, strict=True)}
        results = [PushResult(code=back.get(a.code, a.code), ok=a.ok, platform_id=a.platform_id, error=a.error) for a in answers]
        done = partial(_write_results, engine, rows, results, ok_status="deactivated", fail_status="synced", now=utcnow())
        await run(engine, done)
        ok = sum(1 for r in results if r.ok)
        deactivated, unconfirmed = deactivated + ok, unconfirmed + len(rows) - ok
        after_id = rows[-1].id or after_id


HANDLERS: dict[str, Handler] = {PUSH: handle_push, DEACTIVATE: handle_deactivate, FOLLOW: handle_follow}
