"""Reconciliation: what the platform holds against what we hold, repaired; orders the webhooks missed.

An outbox job `reconcile` per shop, enqueued by the worker's idle sweep once every
`settings.reconcile_interval_hours` (COUPONRY_RECONCILE_HOURS, 0 = off). For each campaign that
has a platform discount it lists the platform's codes and compares them with ours:

    missing      ours, active and unexpired, but not on the platform (lost, or deactivated
                 by hand): marked pending and pushed again
    extra        on the platform, but voided or expired with us: deactivated (again)
    unknown      on the platform under our discount, but not a code of this campaign (e.g.
                 Shopify's placeholder first code): counted, left alone

Shopify: the codes our discounts hold are counted against the per-store cap and reported.
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

from connectors.base import OrderEvent
from plugin import codes, installs, outbox, sync, webhooks
from plugin.connections import shop_connector
from plugin.db import Reader, read_cursor, run, session_scope
from plugin.errors import InvalidInput
from plugin.models import AuditEvent, Campaign, Code, Job, Shop, utcnow
from plugin.orders import POLL_HEADER, Processor, polled_delivery, polled_delivery_id, polled_payload

if TYPE_CHECKING:
    from plugin.worker import Handler, JobContext

RECONCILE = "reconcile"
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
            .where(col(Campaign.shop_id) == shop_id, col(Campaign.platform_discount_id).is_not(None))
            .order_by(col(Campaign.id))
        ).all()
        return shop, list(campaigns)


def _repair(engine: Engine, shop_id: int, campaign_id: int, on_platform: set[str], now: datetime) -> dict[str, int]:
    """Compare the campaign's codes with the platform's (normalised) and queue the repairs.

    Our codes are read page by page (keyset on the id) in read transactions, and each page's
    repairs are written in a short transaction of their own: a campaign of millions of codes
    neither sits in memory nor holds SQLite's write lock (which every checkout and webhook
    needs) for the whole comparison."""
    figures = {"ours": 0, "on_platform": len(on_platform), "missing": 0, "extra": 0}
    pending = 0  # live codes waiting for a push anyway: a push job is due
    matched = 0  # our codes found on the platform (codes are unique per shop: each counts once)
    after_id = 0
    while True:
        with read_cursor(engine) as reader:
            page = reader.rows(
                "SELECT id, code, status, expires_at, sync_status FROM code"
                " WHERE campaign_id = ? AND shop_id = ? AND id > ? ORDER BY id LIMIT ?",
                (campaign_id, shop_id, after_id, _PAGE),
            )
        if not page:
            break
        after_id = int(page[-1][0])
        missing: list[int] = []
        extra: list[int] = []
        for code_id, code, status, expires_at, sync_status in page:
            expiry = Reader.as_instant(expires_at)
            live = status == "active" and (expiry is None or expiry > now)
            present = code in on_platform
            matched += present
            if live and not present and sync_status in ("synced", "deactivated"):
                missing.append(int(code_id))
            elif not live and present:
                extra.append(int(code_id))
            elif live and sync_status == "pending":
                pending += 1
        figures["ours"] += len(page)
        figures["missing"] += len(missing)
        figures["extra"] += len(extra)
        if missing or extra:
            with session_scope(engine) as session:  # the marks and their job commit together
                _mark(session, missing, extra)
                if missing:
                    sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
                if extra:
                    sync.enqueue_deactivate(session, shop_id=shop_id, campaign_id=campaign_id)
    if pending and not figures["missing"]:
        with session_scope(engine) as session:
            sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    figures["unknown"] = len(on_platform) - matched
    return figures


def _mark(session: Session, missing: list[int], extra: list[int]) -> None:
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


async def handle_reconcile(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    engine = ctx.engine
    shop, campaigns = await run(engine, lambda: _load(engine, job.shop_id))
    if shop.uninstalled_at is not None:
        return
    assert shop.id is not None
    connector: Any = shop_connector(ctx.settings, ctx.http, shop, engine=ctx.engine)
    now = utcnow()
    report: dict[str, Any] = {"campaigns": {}}
    platform_total = 0
    for campaign in campaigns:
        assert campaign.id is not None and campaign.platform_discount_id is not None
        on_platform = {codes.normalise_generic(c) async for c in connector.list_codes(campaign.platform_discount_id)}
        platform_total += len(on_platform)
        figures = await run(engine, partial(_repair, engine, shop.id, campaign.id, on_platform, now))
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
            session.add(AuditEvent(shop_id=shop.id or 0, action="reconcile.report", subject=f"shop:{shop.id}", details=report))

    await run(engine, record)


HANDLERS: dict[str, Handler] = {RECONCILE: handle_reconcile}
