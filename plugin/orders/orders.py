"""Order webhooks into redemptions, exactly once (promise 3).

A stored delivery (plugin.orders.webhooks) is processed in one transaction that first moves it out
of `received` with a conditional UPDATE: whoever wins that runs it; a concurrent runner (the
request's background task and a sweep, two workers) finds nothing to do. The redemptions
themselves are unique per shop, order and code, so a second delivery of the same order with
another delivery id (orders/create then orders/paid) changes nothing either.

- created / paid / updated: record each code's use with its order's revenue and discount;
  rules the platform could not enforce are not refused but flagged on the redemption.
- cancelled / refunded / failed: roll the order's redemptions back under the campaign's
  `on_cancel` policy (restore, reissue, keep), with an audit event. One that arrives before
  its order is kept as `deferred` and applied when the order comes.
- refunds (a Shopify refunds/create, an order state that lists refunds or states a refunded
  sum) go to the refund ledger (plugin.checkout.refunds), which rolls the redemptions back only when the
  whole order is refunded and otherwise reduces their attributed revenue. A refund of an order
  we have not seen is kept `deferred` (Shopify's carry no codes, so whether the order is ours is
  unknown until it comes) for `Settings.early_refund_days`, then `ignored` with the reason.
- codes the shop doesn't have (its generic codes) are counted on the delivery, not errors.

The final status of a delivery: processed, deferred, ignored (nothing of ours in it) or
failed (with the error; `reprocess` tries it again).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import Engine, exists, update
from sqlmodel import Session, col, select

from connectors.base import CodeUse, Delivery, OrderEvent, Refund, ShippingAddress, ShopConnector
from connectors.errors import ConnectorError
from plugin.checkout import refunds
from plugin.checkout.redemptions import UnknownCode, record_redemption, rollback_redemption
from plugin.distribution import referrals
from plugin.errors import Conflict
from plugin.formats import codes
from plugin.orders import addresses, privacy, webhooks
from plugin.platforms.connections import platform_connector, shop_connector
from plugin.settings import Settings
from plugin.shops import tokens
from plugin.store.db import is_sqlite, run, session_scope
from plugin.store.models import Code, Redemption, Shop, WebhookEvent, utcnow

if TYPE_CHECKING:
    from plugin.store.jobcontext import Handler, JobContext

log = logging.getLogger("couponry.orders")

ROLLBACK_KINDS = frozenset({"cancelled", "refunded", "failed"})
REDEEM_KINDS = frozenset({"created", "paid", "updated"})
SWEEP_AFTER = timedelta(seconds=5)  # a delivery still unprocessed this long after arriving lost its task


@dataclass
class Outcome:
    """What one delivery did; stored on it as `outcome`."""

    redeemed: int = 0
    duplicates: int = 0
    rolled_back: int = 0
    unknown_codes: list[str] = field(default_factory=list)
    flagged: list[dict[str, str]] = field(default_factory=list)
    campaign_id: int | None = None
    order_id: str | None = None
    deferred: bool = False
    applied_deferred: list[int] = field(default_factory=list)
    refunds: int = 0  # refund ledger rows this delivery added (or grew)
    refund_adjusted: int = 0  # redemptions whose refunded part changed
    early_refund: bool = False  # deferred: a refund whose order we have not seen

    @property
    def busy(self) -> bool:
        """Whether the delivery did (or found done) anything of ours."""
        return bool(
            self.redeemed or self.duplicates or self.rolled_back or self.unknown_codes or self.refunds or self.refund_adjusted
        )

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"redeemed": self.redeemed, "duplicates": self.duplicates, "rolled_back": self.rolled_back}
        if self.refunds or self.refund_adjusted:
            data["refunds"] = self.refunds
            data["refund_adjusted"] = self.refund_adjusted
        if self.early_refund:
            data["early_refund"] = True
        if self.unknown_codes:
            data["unknown_codes"] = self.unknown_codes
        if self.flagged:
            data["flagged"] = self.flagged
        if self.applied_deferred:
            data["applied_deferred"] = self.applied_deferred
        return data


class Processor:
    """Processes stored deliveries of one app: parses with the platform's connector, writes
    redemptions, and fetches thin orders with the shop's connector when needed."""

    def __init__(self, engine: Engine, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.http = http or httpx.AsyncClient()
        self.address_secret = tokens.address_key(settings)  # fingerprints orders' shipping addresses
        self._connectors: dict[str, ShopConnector] = {}

    def connector(self, platform: str) -> ShopConnector:
        connector = self._connectors.get(platform)
        if connector is None:
            connector = self._connectors[platform] = platform_connector(self.settings, self.http, platform)
        return connector

    def address_key(self, event: OrderEvent) -> str | None:
        """The order's shipping-address fingerprint (plugin.orders.addresses), or None without one."""
        return addresses.fingerprint(self.address_secret, event.shipping_address)

    def parse_stored(self, platform: str, headers: Mapping[str, str], payload: str) -> Delivery:
        """A stored delivery parsed again: a platform's webhook, or an order the poll found."""
        if headers.get(POLL_HEADER):
            return polled_delivery(platform, payload)
        return self.connector(platform).parse_webhook(headers, payload.encode())

    async def process(self, event_id: int, *, delivery: Delivery | None = None, shop_id: int | None = None) -> str | None:
        """Process a stored delivery if it still waits; return its new status (None if it was
        not waiting: someone else processed it). The webhook route passes the delivery it
        already parsed; the sweep lets it be parsed again from the stored payload."""
        engine = self.engine
        try:
            if delivery is None:
                row = await run(engine, lambda: _load(engine, event_id))
                if row is None or row.status != "received":
                    return None
                shop_id = row.shop_id
                delivery = self.parse_stored(row.platform, row.headers, row.payload)
            delivery = await self._fill_thin_orders(shop_id, delivery)
        except ConnectorError as exc:
            if exc.retryable:  # the platform was unreachable for a thin order: the sweep tries again
                await run(engine, partial(_note_error, engine, event_id, str(exc)))
                return "received"
            return await run(engine, partial(_mark_failed, engine, event_id, str(exc)))
        parsed = delivery
        try:
            status, outcome = await run(engine, lambda: self._apply_once(event_id, parsed))
        except Exception as exc:
            log.exception("delivery %s failed", event_id)
            return await run(engine, partial(_mark_failed, engine, event_id, f"{type(exc).__name__}: {exc}"))
        if status is not None and not is_sqlite(engine):
            # On PostgreSQL a cancellation and its order can commit side by side, each unseen by
            # the other; looking again after our commit closes that window (SQLite serialises).
            await run(engine, lambda: self._after_commit(shop_id, outcome))
        return status

    async def _fill_thin_orders(self, shop_id: int | None, delivery: Delivery) -> Delivery:
        """Thin webhooks (BigCommerce) carry only ids: fetch the orders they name."""
        if shop_id is None or not any(e.needs_fetch for e in delivery.events):
            return delivery
        shop = await run(self.engine, lambda: _shop(self.engine, shop_id))
        connector = shop_connector(self.settings, self.http, shop, engine=self.engine)
        events = []
        for event in delivery.events:
            if event.needs_fetch:
                # The webhook's kind says what happened when it knows (statusUpdated); a bare
                # "updated" only says the order changed, and the fetched order says what it is
                # now (a BigCommerce "incomplete" checkout is "failed" and must never redeem).
                fetched = await connector.fetch_order(event.order_id)
                kind = fetched.kind if event.kind == "updated" else event.kind
                event = replace(fetched, kind=kind, delivery_id=event.delivery_id)
                if event.kind in ROLLBACK_KINDS and kind is fetched.kind and not await self._has_order(shop_id, event.order_id):
                    # a state, not a cancellation that overtook its order: nothing to undo or
                    # keep (kept, it would undo the order once a payment turns it paid)
                    event = replace(event, kind="updated", codes=())
            events.append(event)
        return replace(delivery, events=tuple(events))

    async def _has_order(self, shop_id: int, order_id: str) -> bool:
        def look() -> bool:
            with Session(self.engine) as session:
                stmt = select(Redemption.id).where(col(Redemption.shop_id) == shop_id, col(Redemption.order_id) == order_id)
                return session.exec(stmt).first() is not None

        return await run(self.engine, look)

    def _apply_once(self, event_id: int, delivery: Delivery) -> tuple[str | None, Outcome]:
        with session_scope(self.engine) as session:
            if not _claim(session, event_id, ("received",)):
                return None, Outcome()
            event = session.get_one(WebhookEvent, event_id)
            status, outcome = self._apply(session, event, delivery)
            _finish(session, event, status, outcome)
            return status, outcome

    def _apply(self, session: Session, event: WebhookEvent, delivery: Delivery) -> tuple[str, Outcome]:
        outcome = Outcome()
        shop_id = event.shop_id
        if shop_id is None:
            return "ignored", outcome
        now = utcnow()
        if delivery.kind in privacy.LIFECYCLE_KINDS:  # uninstall, privacy requests
            return privacy.apply_lifecycle(session, shop_id, event, delivery), outcome
        if delivery.kind != "order" or not delivery.events:
            return "ignored", outcome
        for order_event in delivery.events:
            apply_order_event(
                session, shop_id, order_event, outcome, now=now, actor=f"webhook:{event.platform}",
                address_key=self.address_key(order_event),
            )  # fmt: skip
        if outcome.deferred:
            return "deferred", outcome
        if any(e.kind in REDEEM_KINDS for e in delivery.events) and outcome.order_id is not None:
            outcome.applied_deferred = self._apply_deferred(session, shop_id, outcome.order_id, now)
        if not (outcome.busy or outcome.applied_deferred):
            return "ignored", outcome
        return "processed", outcome

    def _apply_deferred(self, session: Session, shop_id: int, order_id: str, now: datetime) -> list[int]:
        """Apply the cancellations of this order that arrived before it, oldest first."""
        waiting = session.exec(
            select(WebhookEvent)
            .where(
                col(WebhookEvent.shop_id) == shop_id,
                col(WebhookEvent.order_id) == order_id,
                col(WebhookEvent.status) == "deferred",
            )
            .order_by(col(WebhookEvent.id))
        ).all()
        applied = []
        expired_before = now - self.early_refund_window
        for event in waiting:
            assert event.id is not None
            if not _claim(session, event.id, ("deferred",)):
                continue
            if event.outcome.get("early_refund") and event.received_at < expired_before:
                _expire(session, event, self.settings)  # its order came too late
                continue
            delivery = self.parse_stored(event.platform, event.headers, event.payload)
            outcome = Outcome()
            for order_event in delivery.events:
                apply_order_event(
                    session, shop_id, order_event, outcome, now=now, actor=f"webhook:{event.platform}",
                    address_key=self.address_key(order_event),
                )  # fmt: skip
            _finish(session, event, "deferred" if outcome.deferred else "processed", outcome)
            applied.append(event.id)
        return applied

    def _after_commit(self, shop_id: int | None, outcome: Outcome) -> None:
        if shop_id is None or outcome.order_id is None:
            return
        with session_scope(self.engine) as session:
            has_order = session.exec(
                select(Redemption.id).where(col(Redemption.shop_id) == shop_id, col(Redemption.order_id) == outcome.order_id)
            ).first()
            if has_order is not None:
                self._apply_deferred(session, shop_id, outcome.order_id, utcnow())

    @property
    def early_refund_window(self) -> timedelta:
        return timedelta(days=self.settings.early_refund_days)

    async def sweep(self, *, older_than: timedelta = SWEEP_AFTER, limit: int = 500) -> int:
        """Process deliveries left `received` (their process died after answering), deferred
        cancellations and refunds whose order has arrived meanwhile, and give up on refunds
        whose order has not come within `early_refund_days`."""
        engine = self.engine
        ids = await run(engine, lambda: _stale(engine, utcnow() - older_than, limit))
        done = 0
        for event_id in ids:
            if await self.process(event_id) is not None:
                done += 1
        pairs = await run(engine, lambda: _ready_deferred(engine, limit))
        for shop_id, order_id in pairs:
            await run(engine, partial(self._after_commit, shop_id, Outcome(order_id=order_id)))
            done += 1
        cutoff = utcnow() - self.early_refund_window
        done += await run(engine, lambda: _expire_early_refunds(engine, self.settings, cutoff, limit))
        return done


def apply_order_event(
    session: Session,
    shop_id: int,
    event: OrderEvent,
    outcome: Outcome,
    *,
    now: datetime,
    actor: str,
    address_key: str | None = None,
) -> None:
    """Record (or roll back) one order event's code uses; `address_key`, the fingerprint of the
    order's shipping address, is kept on each redemption (self-referral by address)."""
    outcome.order_id = event.order_id
    keys = [codes.normalise_generic(use.code) for use in event.codes]
    if event.kind == "refund":
        _refund(session, shop_id, event, outcome, now=now, actor=actor)
        return
    if event.kind in ROLLBACK_KINDS:
        _roll_back(session, shop_id, event, keys, outcome, now=now, actor=actor)
        return
    if event.kind not in REDEEM_KINDS:
        return
    for use, key in zip(event.codes, keys, strict=True):
        try:
            result = record_redemption(
                session,
                shop_id=shop_id,
                code=key,
                order_id=event.order_id,
                now=now,
                amount=use.amount,
                subtotal=event.subtotal,
                revenue=event.net_subtotal,
                currency=event.currency,
                customer_id=event.customer_id,
                email=event.email,
                channel=event.channel,
                source="webhook",
                enforce=False,
                address_key=address_key,
                order_total=event.total,
                order_items=event.items,
            )
        except UnknownCode:
            outcome.unknown_codes.append(use.code)
            continue
        redemption = result.redemption
        outcome.campaign_id = outcome.campaign_id or redemption.campaign_id
        if result.duplicate:
            outcome.duplicates += 1
            continue
        outcome.redeemed += 1
        referrals.on_redemption(session, redemption, now=now)  # a friend's order rewards its referrer
        if redemption.flagged_reason:
            outcome.flagged.append({"code": key, "reason": redemption.flagged_reason})
    if event.reports_refunds:  # an order state that lists its refunds (WooCommerce, Shopify) or their sum
        redemptions = refunds.lock_order(session, shop_id, event.order_id)
        if redemptions:
            _settle_refunds(session, shop_id, event, redemptions, outcome, now=now, actor=actor)


def _refund(session: Session, shop_id: int, event: OrderEvent, outcome: Outcome, *, now: datetime, actor: str) -> None:
    """One refund of an order (Shopify's refunds/create): to the ledger, then the order settled.
    The refund names no code: if the order is not here yet, it waits for it."""
    redemptions = refunds.lock_order(session, shop_id, event.order_id)
    if not redemptions:
        outcome.deferred = outcome.early_refund = True
        return
    new = _settle_refunds(session, shop_id, event, redemptions, outcome, now=now, actor=actor)
    if not new:
        outcome.duplicates += 1  # this refund was counted before


def _settle_refunds(
    session: Session,
    shop_id: int,
    event: OrderEvent,
    redemptions: Sequence[Redemption],
    outcome: Outcome,
    *,
    now: datetime,
    actor: str,
) -> int:
    """Write the event's refunds to the ledger and settle the order; the ledger rows new or grown."""
    new, _known = refunds.record_refunds(session, shop_id, event, now=now)
    settled = refunds.settle(session, shop_id, redemptions, now=now, actor=actor)
    outcome.campaign_id = outcome.campaign_id or redemptions[0].campaign_id
    outcome.refunds += new
    outcome.rolled_back += settled.rolled_back
    outcome.refund_adjusted += settled.adjusted
    return new


def _roll_back(
    session: Session, shop_id: int, event: OrderEvent, keys: Sequence[str], outcome: Outcome, *, now: datetime, actor: str
) -> None:
    redemptions = refunds.lock_order(session, shop_id, event.order_id)
    if not redemptions:
        ours = keys and session.exec(select(Code.id).where(col(Code.shop_id) == shop_id, col(Code.code).in_(keys))).first()
        if ours:
            outcome.deferred = True  # the order has not arrived yet: keep this for when it does
        else:
            outcome.unknown_codes.extend(u.code for u in event.codes)
        return
    for redemption in redemptions:
        assert redemption.id is not None
        outcome.campaign_id = outcome.campaign_id or redemption.campaign_id
        if redemption.status != "active":
            outcome.duplicates += 1
            continue
        rollback_redemption(
            session, shop_id=shop_id, redemption_id=redemption.id, now=now, actor=actor, reason=f"order {event.kind}"
        )
        outcome.rolled_back += 1
    if event.kind == "refunded" or event.reports_refunds:  # the ledger keeps the refunded revenue too
        _settle_refunds(session, shop_id, event, redemptions, outcome, now=now, actor=actor)


# --- orders found by the reconciliation poll (platforms that never retry a webhook) ----------

POLL_HEADER = "x-couponry-poll"


def polled_delivery_id(event: OrderEvent) -> str:
    """Dedupe key of a polled order state: order id, modification time and what it is."""
    when = event.occurred_at.isoformat() if event.occurred_at else ""
    return f"poll:order:{event.order_id}:{when}:{event.kind}"


def polled_payload(event: OrderEvent) -> str:
    """A polled order in neutral form, stored as a delivery's payload (like a webhook's raw
    payload, it holds the shipping address until processed; customers/redact clears it)."""
    data = asdict(event)
    data["occurred_at"] = event.occurred_at.isoformat() if event.occurred_at else None
    return json.dumps(data, separators=(",", ":"))


def polled_delivery(platform: str, payload: str) -> Delivery:
    data = json.loads(payload)
    data["codes"] = tuple(CodeUse(**c) for c in data.get("codes") or ())
    data["refunds"] = tuple(Refund(**r) for r in data.get("refunds") or ())
    data["occurred_at"] = datetime.fromisoformat(data["occurred_at"]) if data.get("occurred_at") else None
    address = data.get("shipping_address")
    data["shipping_address"] = ShippingAddress(**address) if isinstance(address, dict) else None
    event = OrderEvent(**data)
    return Delivery(delivery_id=polled_delivery_id(event), topic="poll", shop=event.shop, kind="order", events=(event,))


# --- store helpers ----------------------------------------------------------------------------


def _claim(session: Session, event_id: int, from_statuses: Sequence[str]) -> bool:
    """Take a delivery for processing in this transaction; False if another runner has it."""
    result = session.execute(
        update(WebhookEvent)
        .where(col(WebhookEvent.id) == event_id, col(WebhookEvent.status).in_(from_statuses))
        .values(status="processing")
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _finish(session: Session, event: WebhookEvent, status: str, outcome: Outcome) -> None:
    event.status = status
    event.error = None
    event.flagged = bool(outcome.flagged)
    event.campaign_id = outcome.campaign_id
    event.order_id = outcome.order_id
    event.outcome = outcome.as_dict()
    event.unknown_codes = len(outcome.unknown_codes)
    event.processed_at = utcnow()
    session.add(event)
    session.flush()


def _load(engine: Engine, event_id: int) -> WebhookEvent | None:
    with Session(engine, expire_on_commit=False) as session:
        return session.get(WebhookEvent, event_id)


def _shop(engine: Engine, shop_id: int | None) -> Shop:
    with Session(engine) as session:
        return session.get_one(Shop, shop_id)


def _mark_failed(engine: Engine, event_id: int, error: str) -> str:
    with session_scope(engine) as session:
        session.execute(
            update(WebhookEvent)
            .where(col(WebhookEvent.id) == event_id, col(WebhookEvent.status) == "received")
            .values(status="failed", error=error[:2000], processed_at=utcnow())
        )
    return "failed"


def _note_error(engine: Engine, event_id: int, error: str) -> None:
    with session_scope(engine) as session:
        session.execute(update(WebhookEvent).where(col(WebhookEvent.id) == event_id).values(error=error[:2000]))


def _stale(engine: Engine, before: datetime, limit: int) -> list[int]:
    with Session(engine) as session:
        ids = session.exec(
            select(WebhookEvent.id)
            .where(col(WebhookEvent.status) == "received", col(WebhookEvent.received_at) < before)
            .order_by(col(WebhookEvent.id))
            .limit(limit)
        ).all()
    return [i for i in ids if i is not None]


def _expire(session: Session, event: WebhookEvent, settings: Settings) -> None:
    """A deferred refund whose order did not come in time: ignored, with the reason."""
    event.status = "ignored"
    event.error = f"refund of an order not seen within {settings.early_refund_days:g} days (COUPONRY_EARLY_REFUND_DAYS)"
    event.outcome = {**event.outcome, "ignored": "order_not_seen"}
    event.processed_at = utcnow()
    session.add(event)
    session.flush()


def _expire_early_refunds(engine: Engine, settings: Settings, before: datetime, limit: int) -> int:
    """Give up on deferred refunds received before `before` whose order never came."""
    with session_scope(engine) as session:
        waiting = session.exec(
            select(WebhookEvent)
            .where(col(WebhookEvent.status) == "deferred", col(WebhookEvent.received_at) < before)
            .order_by(col(WebhookEvent.id))
            .limit(limit)
        ).all()
        expired = 0
        for event in waiting:
            assert event.id is not None
            if event.outcome.get("early_refund") and _claim(session, event.id, ("deferred",)):
                _expire(session, event, settings)
                expired += 1
        return expired


def _ready_deferred(engine: Engine, limit: int) -> list[tuple[int, str]]:
    with Session(engine) as session:
        has_order = exists().where(
            col(Redemption.shop_id) == WebhookEvent.shop_id,
            col(Redemption.order_id) == WebhookEvent.order_id,
        )
        rows = session.exec(
            select(WebhookEvent.shop_id, WebhookEvent.order_id)
            .where(col(WebhookEvent.status) == "deferred", has_order)
            .distinct()
            .limit(limit)
        ).all()
    return [(s, o) for s, o in rows if s is not None and o is not None]


def reprocess(session: Session, shop_id: int, event_id: int) -> WebhookEvent:
    """Put a failed delivery back in line (after fixing its cause)."""
    event = webhooks.get_delivery(session, shop_id, event_id)
    if event.status != "failed":
        raise Conflict(f"delivery {event_id} is {event.status}; only failed ones are processed again", reason="not_failed")
    event.status, event.error = "received", None
    session.add(event)
    session.flush()
    return event


# --- worker wiring ----------------------------------------------------------------------------


async def sweep_unprocessed(ctx: JobContext) -> int:
    return await Processor(ctx.engine, ctx.settings, ctx.http).sweep()


HANDLERS: dict[str, Handler] = {}
