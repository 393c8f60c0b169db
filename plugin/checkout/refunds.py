"""The refund ledger: what platforms refunded on our orders, and what it does to their redemptions.

Partial refunds used to roll a whole redemption back in one run and be ignored in another,
depending on which delivery came first. Now every refund of an order is written to the ledger
(`OrderRefund`), once per refund, and the order's redemptions are then *settled* from the whole
ledger, never from the one delivery at hand:

- Each refund is a row keyed by the platform's refund id (Shopify's refunds/create and the
  order's `refunds[]` name the same ids; WooCommerce's `refunds[]` too), so a refund delivered
  twice counts once. A platform that states only the order's refunded sum (BigCommerce's
  `refunded_amount`) keeps one row, "total", holding the largest sum seen: the sum only grows.
  A platform's word that the whole order is refunded (status "refunded") is a row "whole".
- The order is wholly refunded when a row says so, when every unit of its lines is refunded
  (the refunds' `items` reach the order's units), or when the money refunded reaches the order's
  total. Then its redemptions are rolled back, as for a cancellation (the campaign's `on_cancel`).
- Otherwise each redemption keeps its use, and `refunded` (the part of its order's subtotal
  taken back) is the subtotal's share of the money refunded: subtotal x refunded / total. The
  attributed revenue is `subtotal - refunded`.

Settling reads only the set of rows, and sums and maxima do not depend on the order in which
rows arrived, so the same deliveries in any order end in the same state. On PostgreSQL the
caller holds the order's redemption rows locked (`lock_order`) while it writes and settles, so
two refunds of one order committing side by side cannot each settle without the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from connectors.base import OrderEvent
from plugin.checkout.redemptions import rollback_redemption
from plugin.store.db import session_reader
from plugin.store.models import AuditEvent, OrderRefund, Redemption

TOTAL = "total"  # the row of a platform's cumulative refunded sum
WHOLE = "whole"  # the row of a platform's word that the whole order is refunded


@dataclass
class Settled:
    """What settling an order did: redemptions rolled back, and redemptions whose refunded part changed."""

    rolled_back: int = 0
    adjusted: int = 0


def lock_order(session: Session, shop_id: int, order_id: str) -> Sequence[Redemption]:
    """The order's redemptions, locked until the transaction ends (PostgreSQL; SQLite has one writer)."""
    stmt = (
        select(Redemption)
        .where(col(Redemption.shop_id) == shop_id, col(Redemption.order_id) == order_id)
        .order_by(col(Redemption.id))
        .with_for_update()
    )
    return session.exec(stmt).all()


def record_refunds(session: Session, shop_id: int, event: OrderEvent, *, now: datetime) -> tuple[int, int]:
    """Write what `event` says of refunds to the ledger: (rows new or grown, rows already known)."""
    entries = [(r.refund_id[:255], max(0, r.amount), max(0, r.items), False, False) for r in event.refunds if r.refund_id]
    if event.kind == "refunded":
        entries.append((WHOLE, 0, 0, False, True))
    if event.refunded_total:
        entries.append((TOTAL, max(0, event.refunded_total), 0, True, False))
    new = known = 0
    session.flush()  # nothing of the ORM may be pending under the raw statements below
    with session_reader(session) as writer:
        for refund_id, amount, items, cumulative, whole in entries:
            values = {
                "shop_id": shop_id,
                "order_id": event.order_id,
                "refund_id": refund_id,
                "amount": amount,
                "items": items,
                "cumulative": cumulative,
                "whole": whole,
                "created_at": now,
            }
            grew = writer.insert(_TABLE, values, unique=("shop_id", "order_id", "refund_id")) is not None
            if not grew and cumulative:  # the stated sum only grows: keep the largest seen
                grew = bool(writer.execute(_GROW, (amount, shop_id, event.order_id, refund_id, amount)))
            new, known = (new + 1, known) if grew else (new, known + 1)
    return new, known


_TABLE = OrderRefund.__table__  # type: ignore[attr-defined]
_GROW = "UPDATE orderrefund SET amount = ? WHERE shop_id = ? AND order_id = ? AND refund_id = ? AND amount < ?"


@dataclass(frozen=True)
class OrderRefunds:
    """An order's refunds summed from the ledger."""

    amount: int  # money refunded so far, minor units
    items: int  # units of its lines refunded so far
    whole_said: bool  # a platform said the whole order is refunded

    def whole(self, total: int, units: int) -> bool:
        """Wholly refunded: the platform says so, every unit is refunded, or the money reaches the total."""
        return self.whole_said or (units > 0 and self.items >= units) or (total > 0 and self.amount >= total)


def order_refunds(session: Session, shop_id: int, order_id: str) -> OrderRefunds | None:
    """The order's ledger summed; None when it has no refund."""
    rows = session.exec(
        select(OrderRefund).where(col(OrderRefund.shop_id) == shop_id, col(OrderRefund.order_id) == order_id)
    ).all()
    if not rows:
        return None
    # Refunds listed one by one and a platform's stated sum describe the same money: the larger wins.
    listed = sum(r.amount for r in rows if not r.cumulative)
    stated = max((r.amount for r in rows if r.cumulative), default=0)
    return OrderRefunds(
        amount=max(listed, stated),
        items=sum(r.items for r in rows if not r.cumulative),
        whole_said=any(r.whole for r in rows),
    )


def refunded_share(subtotal: int, refunded: int, total: int) -> int:
    """The part of a redemption's subtotal that `refunded` of its order's `total` takes back:
    the same proportion (refunds include tax and shipping, as the total does); without a known
    total, the refunded money itself, up to the subtotal."""
    if refunded <= 0 or subtotal <= 0:
        return 0
    if total <= 0:
        return min(subtotal, refunded)
    return min(subtotal, subtotal * refunded // total)


def settle(session: Session, shop_id: int, redemptions: Sequence[Redemption], *, now: datetime, actor: str) -> Settled:
    """Bring the order's redemptions (locked by `lock_order`) in line with its ledger."""
    settled = Settled()
    if not redemptions:
        return settled
    order_id = redemptions[0].order_id
    refunds = order_refunds(session, shop_id, order_id)
    if refunds is None:
        return settled
    total = max(r.order_total for r in redemptions)
    units = max(r.order_items for r in redemptions)
    whole = refunds.whole(total, units)
    for redemption in redemptions:
        assert redemption.id is not None
        share = redemption.subtotal if whole else refunded_share(redemption.subtotal, refunds.amount, total)
        if share != redemption.refunded:
            session.execute(update(Redemption).where(col(Redemption.id) == redemption.id).values(refunded=share))
            if redemption.status == "active" and not whole:
                settled.adjusted += 1
                session.add(
                    AuditEvent(
                        shop_id=shop_id,
                        action="redemption.refund_adjusted",
                        subject=f"redemption:{redemption.id}",
                        actor=actor,
                        details={
                            "order_id": order_id,
                            "code": redemption.code,
                            "refunded": share,
                            "previously_refunded": redemption.refunded,
                            "order_refunded": refunds.amount,
                            "order_total": total,
                        },
                        created_at=now,
                    )
                )
        if whole and redemption.status == "active":
            rollback_redemption(
                session, shop_id=shop_id, redemption_id=redemption.id, now=now, actor=actor, reason="order wholly refunded"
            )
            settled.rolled_back += 1
    session.flush()
    for redemption in redemptions:
        session.refresh(redemption)
    return settled
