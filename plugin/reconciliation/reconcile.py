"""Reconciliation: what the platform holds against what we hold, repaired; orders the webhooks missed.

An outbox job `reconcile` per shop, enqueued by the worker's idle sweep once every
`settings.reconcile_interval_hours` (COUPONRY_RECONCILE_HOURS, 0 = off). For each campaign that
has a platform discount it lists the platform's codes and compares them with ours:

    missing      ours, active and unexpired, but not live on the platform (deleted, or
                 deactivated by hand): pushed again, which re-adds or reactivates it
    extra        live on the platform, but voided or expired with us (every code once the
                 campaign has ended): deactivated (again)
    gone         not live with us, believed still on the platform, and absent from its full
                 listing: the listing confirms the removal, so it is marked deactivated
    unknown      on the platform under our discount, but not a code of this campaign (e.g.
                 Shopify's placeholder first code): counted, left alone

Where each code is its own platform object with an on/off state (WooCommerce coupons,
`connectors.base.CodeStatusControl`), what counts as held follows the campaign: while it is
active only a live (published) coupon is held, so a draft one is `missing` and pushed again (by
its id: published); while it is paused a paused coupon is held as correctly paused, and a live
one (`live_while_paused`) queues the follow job, which pauses it by its id.

The repairs run in the job itself, so its report says what they did (`repaired`: codes re-added
or reactivated, deactivated, failed or unconfirmed). A repair that fails (a code refused, a
removal the platform did not confirm, the platform unreachable: then the push and deactivate
jobs are queued to retry) opens the shop's `reconcile_failed` alert; a run whose repairs all
succeed resolves it. Shopify: the codes our discounts hold are counted against the per-store cap
and reported; past `settings.platform_capacity_alert` of it, the `platform_capacity` alert opens
(resolved once under it again).
WooCommerce never retries a failed delivery, BigCommerce and Shopify give up after 48 h, and a
webhook may be refused for its size, so for the platforms with `list_recent_orders` (all but
the sandbox) the job also polls the orders modified since the last
interval (plus an overlap) and feeds them through the webhook ingestion path as deliveries
deduplicated by order id, modification time and state.

Each run leaves an audit record `reconcile.report` with its figures.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from connectors.base import CodeStatusControl, OrderEvent
from connectors.errors import ConnectorError
from plugin.campaigns.codeends import CodeEnds
from plugin.distribution import claimstore
from plugin.errors import InvalidInput
from plugin.formats import codes
from plugin.orders import webhooks
from plugin.orders.orders import POLL_HEADER, Processor, polled_delivery, polled_delivery_id, polled_payload
from plugin.platforms import installs, sync
from plugin.platforms.connections import shop_connector
from plugin.store import outbox
from plugin.store.db import Reader, read_cursor, run, session_scope
from plugin.store.models import AuditEvent, Campaign, Code, Job, Shop, utcnow

if TYPE_CHECKING:
    from plugin.store.jobcontext import Handler, JobContext

RECONCILE = "reconcile"
RECONCILE_FAILED = "reconcile_failed"  # alert kinds
PLATFORM_CAPACITY = "platform_capacity"
POLL_OVERLAP = timedelta(hours=1)
_CHUNK = 500
_PAGE = 20_000  # our codes compared per read


def enqueue(session: Session, shop_id: int, *, since: datetime | None = None) -> int | None:
    payload = {"since": since.isoformat()} if since else {}
    return outbox.enqueue(session, RECONCILE, payload, shop_id, dedupe_key=f"{RECONCILE}:{shop_id}")


def due_shops(session: Session, *, interval: timedelta, now: datetime) -> list[int]:
    """Installed shops with no reconcile job created within the interval."""
    recent = set(
        session.exec(select(Job.shop_id).where(col(Job.kind) == RECONCILE, col(Job.created_at) > now - interval).distinct()).all()
    )
    shops = session.exec(
        select(Shop.id).where(
            col(Shop.uninstalled_at).is_(None),
            (col(Shop.platform) == "sandbox") | col(Shop.access_token_encrypted).is_not(None),
        )
    ).all()
    return [s for s in shops if s is not None and s not in recent]


async def schedule(ctx: JobContext) -> int:
    """The worker's sweep: queue a reconcile job for every shop that is due one."""
    hours = ctx.settings.reconcile_interval_hours
    if hours <= 0:
        return 0
    interval = timedelta(hours=hours)
    engine = ctx.engine

    def work() -> int:
        with session_scope(engine) as session:
            now = utcnow()
            queued = 0
            for shop_id in due_shops(session, interval=interval, now=now):
                if enqueue(session, shop_id, since=now - interval - POLL_OVERLAP) is not None:
                    queued += 1
                shop = session.get_one(Shop, shop_id)
                if shop.platform != "sandbox":
                    # platforms disable hooks (WooCommerce after failed deliveries, BigCommerce's
                    # is_active false): registering again brings them back
                    installs.enqueue_webhook_registration(session, shop_id)
            return queued

    return await run(engine, work)


# --- the job ---------------------------------------------------------------------------------


def _load(engine: Engine, shop_id: int | None) -> tuple[Shop, list[Campaign]]:
    if shop_id is None:
        raise InvalidInput("a reconcile job needs a shop")
    with session_scope(engine) as session:
        shop = session.get_one(Shop, shop_id)
        campaigns = session.exec(
            select(Campaign)
            .where(
                col(Campaign.shop_id) == shop_id,
                col(Campaign.platform_discount_id).is_not(None),
                # an ended campaign's discount is deleted where the platform deletes a whole one:
                # nothing of it is left to compare
                col(Campaign.status) != "ended",
            )
            .order_by(col(Campaign.id))
        ).all()
        return shop, list(campaigns)


def _repair(engine: Engine, shop_id: int, campaign_id: int, on_platform: set[str], now: datetime) -> dict[str, int]:
    """Compare the campaign's codes with the platform's (normalised) and mark what to repair:
    missing codes pending (for a push), extra ones synced (for a deactivation), gone ones
    deactivated. The caller runs the push and the deactivation.

    Our codes are read page by page (keyset on the id) in read transactions, and each page's
    marks are written in a short transaction of their own: a campaign of millions of codes
    neither sits in memory nor holds SQLite's write lock (which every checkout and webhook
    needs) for the whole comparison."""
    # pending: live codes waiting for their first push anyway (not a repair)
    figures = {"ours": 0, "on_platform": len(on_platform), "missing": 0, "extra": 0, "gone": 0, "pending": 0}
    matched = 0  # our codes found on the platform (codes are unique per shop: each counts once)
    after_id = 0
    with session_scope(engine) as session:
        campaign = session.get_one(Campaign, campaign_id)
        ended = campaign.status == "ended"
        ends = CodeEnds.load(session, campaign)  # an end relative to issue is not stored
    while True:
        with read_cursor(engine) as reader:
            page = reader.rows(
                "SELECT id, code, status, expires_at, sync_status, batch_id, created_at, assigned_at FROM code"
                " WHERE campaign_id = ? AND shop_id = ? AND id > ? ORDER BY id LIMIT ?",
                (campaign_id, shop_id, after_id, _PAGE),
            )
        if not page:
            break
        after_id = int(page[-1][0])
        missing: list[int] = []
        extra: list[int] = []
        gone: list[int] = []
        for code_id, code, status, expires_at, sync_status, batch_id, created_at, assigned_at in page:
            issued = Reader.as_instant(created_at)
            assert issued is not None
            expiry = ends.end(batch_id, issued, Reader.as_instant(assigned_at), Reader.as_instant(expires_at))
            live = not ended and status == "active" and (expiry is None or expiry > now)
            present = code in on_platform
            matched += present
            if live and not present and sync_status in ("synced", "deactivated"):
                missing.append(int(code_id))
            elif not live and present:
                extra.append(int(code_id))
            elif not live and not present and sync_status == "synced":
                gone.append(int(code_id))
            elif live and sync_status == "pending":
                figures["pending"] += 1
        figures["ours"] += len(page)
        figures["missing"] += len(missing)
        figures["extra"] += len(extra)
        figures["gone"] += len(gone)
        if missing or extra or gone:
            with session_scope(engine) as session:
                _mark(session, missing, extra, gone)
    figures["unknown"] = len(on_platform) - matched
    return figures


def _mark(session: Session, missing: list[int], extra: list[int], gone: list[int]) -> None:
    for start in range(0, len(missing), _CHUNK):
        session.execute(
            update(Code)
            # only codes still as read: one whose sync status changed since (a push, a failure) keeps it
            .where(col(Code.id).in_(missing[start : start + _CHUNK]), col(Code.sync_status).in_(("synced", "deactivated")))
            .values(sync_status="pending", sync_error="missing on the platform (reconciliation)")
        )
    for start in range(0, len(extra), _CHUNK):
        # the deactivate job takes synced codes that are voided or expired
        session.execute(update(Code).where(col(Code.id).in_(extra[start : start + _CHUNK])).values(sync_status="synced"))
    for start in range(0, len(gone), _CHUNK):
        # the full listing is the platform's answer that these are gone (a search is not)
        session.execute(
            update(Code)
            .where(col(Code.id).in_(gone[start : start + _CHUNK]), col(Code.sync_status) == "synced")
            .values(sync_status="deactivated", sync_error=None)
        )


async def _poll_orders(ctx: JobContext, shop: Shop, connector: Any, since: datetime) -> dict[str, int]:
    """Orders modified since `since`, into the ingestion path as deduplicated deliveries."""
    engine = ctx.engine
    processor = Processor(engine, ctx.settings, ctx.http)
    seen = stored = 0
    assert shop.id is not None
    shop_id = shop.id

    def store(event: OrderEvent) -> tuple[int, bool]:
        with session_scope(engine) as session:
            return webhooks.store_delivery(
                session,
                platform=shop.platform,
                delivery_id=polled_delivery_id(event),
                topic="poll",
                shop_id=shop_id,
                payload=polled_payload(event),
                headers={POLL_HEADER: "1"},
            )

    async for event in connector.list_recent_orders(since):
        if not event.codes:
            continue  # nothing a code of ours could be in
        seen += 1
        event_id, created = await run(engine, partial(store, event))
        if created:
            stored += 1
            delivery = polled_delivery(shop.platform, polled_payload(event))
            await processor.process(event_id, delivery=delivery, shop_id=shop_id)
    return {"orders_with_codes": seen, "new": stored}


async def _apply(engine: Engine, shop_id: int, connector: Any, campaign: Campaign, figures: dict[str, int]) -> dict[str, Any]:
    """Run the campaign's repairs now (and any push that was due anyway); what they did. When
    the platform cannot be reached the push and deactivate jobs are queued to retry them."""
    assert campaign.id is not None and campaign.platform_discount_id is not None
    repaired: dict[str, Any] = {"pushed": 0, "push_failed": 0, "deactivated": 0, "unconfirmed": 0}
    campaign_id = campaign.id
    try:
        if figures["missing"]:
            repaired["pushed"], repaired["push_failed"] = await sync.push_pending(
                engine, connector, campaign, campaign.platform_discount_id
            )
        elif figures["pending"]:  # a first push under way or due: its own job does it
            await run(engine, partial(_enqueue, engine, shop_id, campaign_id, push=True, deactivate=False))
        if figures.get("live_while_paused"):  # the follow job pauses every code by its id
            await run(engine, partial(_follow, engine, campaign_id))
            repaired["follow_queued"] = True
        if figures["extra"] or campaign.status == "ended":
            repaired["deactivated"], repaired["unconfirmed"] = await sync.deactivate_lapsed(engine, connector, campaign)
    except ConnectorError as exc:
        repaired["error"] = str(exc)[:300]
        await run(engine, partial(_enqueue, engine, shop_id, campaign_id, push=campaign.status != "ended", deactivate=True))
    return repaired


def _follow(engine: Engine, campaign_id: int) -> None:
    with session_scope(engine) as session:
        sync.enqueue_follow(session, campaign=session.get_one(Campaign, campaign_id))


async def _platform_codes(connector: Any, campaign: Campaign) -> tuple[set[str], int]:
    """The platform's codes held for the campaign (normalised), and how many of them are live while
    it is paused. Only a platform with per-code states tells a paused code from a live one."""
    assert campaign.platform_discount_id is not None
    if not isinstance(connector, CodeStatusControl) or campaign.status == "active":
        return {codes.normalise_generic(c) async for c in connector.list_codes(campaign.platform_discount_id)}, 0
    held: set[str] = set()
    live = 0
    async for code, state in connector.list_code_states(campaign.platform_discount_id):
        held.add(codes.normalise_generic(code))
        live += state == "active"
    return held, live


def _enqueue(engine: Engine, shop_id: int, campaign_id: int, *, push: bool, deactivate: bool) -> None:
    with session_scope(engine) as session:
        if push:
            sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
        if deactivate:
            sync.enqueue_deactivate(session, shop_id=shop_id, campaign_id=campaign_id)


def _failures(report: dict[str, Any]) -> dict[str, Any]:
    """The campaigns whose repairs did not all succeed, and how."""
    failed: dict[str, Any] = {}
    for campaign_id, figures in report["campaigns"].items():
        repaired = figures.get("repaired") or {}
        if repaired.get("error") or repaired.get("push_failed") or repaired.get("unconfirmed"):
            failed[campaign_id] = repaired
    return failed


def _alerts(engine: Engine, shop_id: int, report: dict[str, Any], threshold: float, now: datetime) -> None:
    """Open or resolve the shop's `reconcile_failed` and `platform_capacity` alerts (one open
    alert each per shop: raising it again counts a sighting)."""
    failed = _failures(report)
    capacity = report.get("capacity")
    with session_scope(engine) as session:
        conn = session.connection()
        key = f"{RECONCILE_FAILED}:{shop_id}"
        if failed:
            values = {
                "shop_id": shop_id,
                "kind": RECONCILE_FAILED,
                "message": f"reconciliation could not repair every code of {len(failed)} campaign(s): see details, retried",
                "details": {"campaigns": failed},
                "open_key": key,
            }
            claimstore.raise_alert(conn, values, now)
        else:
            claimstore.resolve_alert(conn, open_key=key, now=now)
        key = f"{PLATFORM_CAPACITY}:{shop_id}"
        if capacity and threshold > 0 and capacity["used"] >= threshold:
            values = {
                "shop_id": shop_id,
                "kind": PLATFORM_CAPACITY,
                "message": (
                    f"the store holds {capacity['codes_on_platform']:,} of the platform's "
                    f"{capacity['store_limit']:,} codes ({capacity['used']:.0%}): end or clean up campaigns"
                ),
                "details": capacity,
                "open_key": key,
            }
            claimstore.raise_alert(conn, values, now)
        else:
            claimstore.resolve_alert(conn, open_key=key, now=now)


async def handle_reconcile(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    engine = ctx.engine
    shop, campaigns = await run(engine, lambda: _load(engine, job.shop_id))
    if shop.uninstalled_at is not None:
        return
    assert shop.id is not None
    shop_id = shop.id
    connector: Any = shop_connector(ctx.settings, ctx.http, shop, engine=ctx.engine)
    now = utcnow()
    report: dict[str, Any] = {"campaigns": {}}
    platform_total = 0
    for campaign in campaigns:
        assert campaign.id is not None and campaign.platform_discount_id is not None
        try:
            on_platform, live_while_paused = await _platform_codes(connector, campaign)
        except ConnectorError as exc:  # e.g. the discount deleted on the platform: alerted, the others go on
            report["campaigns"][str(campaign.id)] = {"repaired": {"error": f"listing the platform's codes: {exc}"[:300]}}
            continue
        platform_total += len(on_platform)
        figures: dict[str, Any] = await run(engine, partial(_repair, engine, shop_id, campaign.id, on_platform, now))
        if live_while_paused:
            figures["live_while_paused"] = live_while_paused
        figures["repaired"] = await _apply(engine, shop_id, connector, campaign, figures)
        report["campaigns"][str(campaign.id)] = figures
    store_limit = getattr(connector, "MAX_CODES_PER_STORE", None)
    if store_limit:
        report["capacity"] = {
            "codes_on_platform": platform_total,
            "store_limit": store_limit,
            "used": platform_total / store_limit,
        }
    if hasattr(connector, "list_recent_orders"):
        interval = timedelta(hours=ctx.settings.reconcile_interval_hours or 24)
        since = datetime.fromisoformat(job.payload["since"]) if job.payload.get("since") else now - interval - POLL_OVERLAP
        report["orders"] = await _poll_orders(ctx, shop, connector, since)

    def record() -> None:
        with session_scope(engine) as session:
            session.add(AuditEvent(shop_id=shop_id, action="reconcile.report", subject=f"shop:{shop_id}", details=report))
        _alerts(engine, shop_id, report, ctx.settings.platform_capacity_alert, utcnow())

    await run(engine, record)


HANDLERS: dict[str, Handler] = {RECONCILE: handle_reconcile}
