"""The sandbox platform's logic: discounts, codes, test orders, knobs and the webhook queue.

Functions take the caller's session (the API and the CLI both call them). Money is minor
units inside; the API speaks decimal strings like a real platform.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Engine, and_, update
from sqlmodel import Session, col, select

from plugin.rules.refusals import minor_unit_exponent
from plugin.store.models import utcnow
from plugin.store.sandbox_models import SandboxCode, SandboxDelivery, SandboxDiscount, SandboxOrder, SandboxSetting


class SandboxError(Exception):
    """A refusal of the sandbox API, with the HTTP status it answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Knobs:
    """Test knobs of one sandbox shop. Rates are probabilities in [0, 1]."""

    webhook_url: str | None = None  # default: the app's /webhooks/sandbox
    duplicate: float = 0.0  # deliver a webhook twice (same delivery id)
    reorder: bool = False  # deliver due webhooks in random order
    delay_ms: int = 0  # hold each new webhook up to this long (random), which also reorders
    webhook_fail_rate: float = 0.0  # a delivery attempt fails: dropped, or sent with its answer lost
    api_fail_rate: float = 0.0  # API requests answered 503
    api_timeout_rate: float = 0.0  # API requests answered only after `slow_seconds`
    slow_seconds: float = 15.0
    rate_limit: float = 40.0  # API requests per second (leaky bucket, burst of the same size)
    batch_limit: int = 250  # codes per push
    retry_base_seconds: float = 1.0  # webhook retries wait 1, 2, 4, ... times this
    max_retries: int = 8  # then the delivery is failed, as on Shopify

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Knobs:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def get_knobs(session: Session, shop: str) -> Knobs:
    row = session.get(SandboxSetting, shop)
    return Knobs.from_dict(row.knobs) if row else Knobs()


def set_knobs(session: Session, shop: str, changes: dict[str, Any]) -> Knobs:
    names = {f.name for f in fields(Knobs)}
    unknown = set(changes) - names
    if unknown:
        raise SandboxError(422, f"unknown knob(s): {', '.join(sorted(unknown))}")
    row = session.get(SandboxSetting, shop)
    merged = {**(row.knobs if row else {}), **changes}
    try:
        knobs = Knobs.from_dict(merged)
    except TypeError as exc:
        raise SandboxError(422, str(exc)) from exc
    if row is None:
        session.add(SandboxSetting(shop=shop, knobs=asdict(knobs)))
    else:
        row.knobs = asdict(knobs)
    session.flush()
    return knobs


# --- money --------------------------------------------------------------------------------


def to_minor(amount: str | int | float | Decimal, currency: str) -> int:
    exponent = minor_unit_exponent(currency)
    try:
        return int(Decimal(str(amount)).scaleb(exponent).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except ArithmeticError as exc:
        raise SandboxError(422, f"malformed amount {amount!r}") from exc


def from_minor(amount: int, currency: str) -> str:
    exponent = minor_unit_exponent(currency)
    return str(Decimal(amount).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent)))


# --- discounts and codes --------------------------------------------------------------------


def discount_json(d: SandboxDiscount) -> dict[str, Any]:
    return {
        "id": d.id,
        "title": d.title,
        "kind": d.kind,
        "value": d.value,
        "currency": d.currency,
        "uses_per_code": d.uses_per_code,
        "ends_at": d.ends_at.isoformat() if d.ends_at else None,
        "reference": d.reference,
        "status": d.status,
    }


def save_discount(
    session: Session, shop: str, data: dict[str, Any], discount_id: int | None = None
) -> tuple[SandboxDiscount, bool]:
    """Create a discount (or return the one with the same reference), or update one by id."""
    kind = str(data.get("kind", "percentage"))
    if kind not in ("percentage", "fixed_amount", "free_shipping"):
        raise SandboxError(422, f"unknown discount kind {kind!r}")
    ends_at = _parse_time(data.get("ends_at"))
    values = {
        "title": str(data.get("title", ""))[:255],
        "kind": kind,
        "value": int(data.get("value") or 0),
        "currency": str(data.get("currency") or "USD").upper()[:3],
        "uses_per_code": data.get("uses_per_code", 1),
        "ends_at": ends_at,
    }
    if discount_id is not None:
        discount = get_discount(session, shop, discount_id)
        for key, value in values.items():
            setattr(discount, key, value)
        session.flush()
        return discount, False
    reference = data.get("reference")
    if reference:
        found = session.exec(
            select(SandboxDiscount).where(col(SandboxDiscount.shop) == shop, col(SandboxDiscount.reference) == reference)
        ).first()
        if found is not None:
            return found, False
    discount = SandboxDiscount(shop=shop, reference=reference, **values)
    session.add(discount)
    session.flush()
    return discount, True


DISCOUNT_STATUSES = ("active", "paused", "deleted")


def set_discount_status(session: Session, shop: str, discount_id: int, status: str) -> SandboxDiscount:
    """Switch a whole discount on or off, or delete it (its codes are refused for good and may be
    pushed to another discount). Setting the status it already has is a no-op."""
    if status not in DISCOUNT_STATUSES:
        raise SandboxError(422, f"status must be one of {', '.join(DISCOUNT_STATUSES)}")
    discount = get_discount(session, shop, discount_id)
    if discount.status == "deleted" and status != "deleted":
        raise SandboxError(409, f"discount {discount_id} was deleted")
    discount.status = status
    session.flush()
    return discount


def get_discount(session: Session, shop: str, discount_id: int) -> SandboxDiscount:
    discount = session.get(SandboxDiscount, discount_id)
    if discount is None or discount.shop != shop:
        raise SandboxError(404, f"discount {discount_id} not found")
    return discount


def add_codes(session: Session, shop: str, discount_id: int, items: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Create codes under a discount; one result each. A code the discount already holds is
    `ok` with `existing: true` (and active again, `reactivated: true`, if it was deactivated);
    one held by another discount is refused."""
    if len(items) > limit:
        raise SandboxError(422, f"at most {limit} codes per request, got {len(items)}")
    get_discount(session, shop, discount_id)
    wanted: dict[str, dict[str, Any]] = {}
    for item in items:
        code = str(item.get("code", "")).strip()
        if code:
            wanted.setdefault(code.upper(), {**item, "code": code})
    existing = {
        c.code_key: c
        for c in session.exec(
            select(SandboxCode).where(col(SandboxCode.shop) == shop, col(SandboxCode.code_key).in_(list(wanted)))
        ).all()
    }
    results: list[dict[str, Any]] = []
    now = utcnow()
    for item in items:
        code = str(item.get("code", "")).strip()
        key = code.upper()
        if not code or len(code) > 255:
            results.append({"code": code, "ok": False, "error": "code must be 1 to 255 characters"})
            continue
        row = existing.get(key)
        if row is not None and row.discount_id != discount_id and _deleted(session, row.discount_id):
            row.discount_id, row.active, row.usage_count = discount_id, True, 0  # a deleted discount's code is free
            results.append({"code": code, "ok": True, "id": row.id, "existing": False})
            continue
        if row is not None:
            if row.discount_id != discount_id:
                results.append({"code": code, "ok": False, "error": "code already used by another discount"})
                continue
            row.pushes += 1
            # a push means "accept this code": one deactivated on the platform is live again,
            # until the end the push states (a code's extended expiry is pushed again)
            reactivated, row.active = not row.active, True
            if "expires_at" in item:
                row.expires_at = _parse_time(item.get("expires_at"))
            results.append({"code": code, "ok": True, "id": row.id, "existing": True, "reactivated": reactivated})
            continue
        row = SandboxCode(
            shop=shop,
            discount_id=discount_id,
            code=code,
            code_key=key,
            expires_at=_parse_time(item.get("expires_at")),
            created_at=now,
        )
        session.add(row)
        existing[key] = row
        results.append({"code": code, "ok": True, "row": row, "existing": False})
    session.flush()
    for r in results:
        row = r.pop("row", None)
        if row is not None:
            r["id"] = row.id
    return results


def _deleted(session: Session, discount_id: int) -> bool:
    discount = session.get(SandboxDiscount, discount_id)
    return discount is not None and discount.status == "deleted"


def remove_codes(session: Session, shop: str, discount_id: int, codes: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """Deactivate codes: checkouts refuse them from now on. Unknown codes count as done."""
    if len(codes) > limit:
        raise SandboxError(422, f"at most {limit} codes per request, got {len(codes)}")
    get_discount(session, shop, discount_id)
    keys = [str(c).strip().upper() for c in codes]
    rows = {
        c.code_key: c
        for c in session.exec(
            select(SandboxCode).where(
                col(SandboxCode.shop) == shop, col(SandboxCode.discount_id) == discount_id, col(SandboxCode.code_key).in_(keys)
            )
        ).all()
    }
    results = []
    for code, key in zip(codes, keys, strict=True):
        row = rows.get(key)
        if row is not None:
            row.active = False
        results.append({"code": code, "ok": True, "id": row.id if row else None})
    session.flush()
    return results


def set_code_ends(
    session: Session, shop: str, discount_id: int, items: Sequence[dict[str, Any]], limit: int
) -> list[dict[str, Any]]:
    """Give codes the discount holds a new end (`expires_at`, null for none), active or not: an
    end is not a reactivation. A code the discount does not hold fails `not_found`."""
    if len(items) > limit:
        raise SandboxError(422, f"at most {limit} codes per request, got {len(items)}")
    get_discount(session, shop, discount_id)
    keys = [str(i.get("code", "")).strip().upper() for i in items]
    rows = {
        c.code_key: c
        for c in session.exec(
            select(SandboxCode).where(
                col(SandboxCode.shop) == shop, col(SandboxCode.discount_id) == discount_id, col(SandboxCode.code_key).in_(keys)
            )
        ).all()
    }
    results: list[dict[str, Any]] = []
    for item, key in zip(items, keys, strict=True):
        row = rows.get(key)
        if row is None:
            results.append({"code": item.get("code"), "ok": False, "error": "not_found"})
            continue
        row.expires_at = _parse_time(item.get("expires_at"))
        results.append({"code": item.get("code"), "ok": True, "id": row.id})
    session.flush()
    return results


def list_codes(
    session: Session, shop: str, discount_id: int, *, after: int = 0, limit: int = 1000
) -> tuple[list[SandboxCode], int | None]:
    get_discount(session, shop, discount_id)
    limit = max(1, min(limit, 1000))
    rows = list(
        session.exec(
            select(SandboxCode)
            .where(col(SandboxCode.shop) == shop, col(SandboxCode.discount_id) == discount_id, col(SandboxCode.id) > after)
            .order_by(col(SandboxCode.id))
            .limit(limit)
        ).all()
    )
    return rows, (rows[-1].id if len(rows) == limit else None)


# --- orders -------------------------------------------------------------------------------


def order_json(order: SandboxOrder) -> dict[str, Any]:
    c = order.currency
    return {
        "id": order.id,
        "shop": order.shop,
        "status": order.status,
        "email": order.email,
        "customer_id": order.customer_id,
        "currency": c,
        "subtotal": from_minor(order.subtotal, c),
        "total_discounts": from_minor(order.discount_total, c),
        "total": from_minor(max(0, order.subtotal - order.discount_total), c),
        "channel": order.channel,
        "discount_codes": [{"code": d["code"], "amount": from_minor(int(d["amount"]), c)} for d in order.discount_codes],
        "shipping_address": order.shipping_address,
        "created_at": order.created_at.isoformat(),
        "updated_at": order.updated_at.isoformat(),
    }


ADDRESS_FIELDS = ("address1", "address2", "zip", "country_code")


def shipping_fields(address: Mapping[str, Any] | None) -> dict[str, str] | None:
    """A shipping address as the sandbox keeps it (Shopify's field names); 422 when malformed."""
    if address is None:
        return None
    if not isinstance(address, Mapping) or set(address) - set(ADDRESS_FIELDS):
        raise SandboxError(422, f"shipping_address takes only {', '.join(ADDRESS_FIELDS)}")
    if not all(isinstance(v, str) and len(v) <= 255 for v in address.values()):
        raise SandboxError(422, "shipping_address fields are strings of at most 255 characters")
    return {name: str(address.get(name) or "") for name in ADDRESS_FIELDS}


def place_order(
    session: Session,
    shop: str,
    *,
    codes: Sequence[str],
    subtotal: int,
    currency: str = "USD",
    email: str | None = None,
    customer_id: str | None = None,
    channel: str | None = "web",
    force: bool = False,
    now: datetime | None = None,
    shipping_address: Mapping[str, Any] | None = None,
) -> SandboxOrder:
    """Place a paid test order using `codes`. The sandbox enforces what a platform would
    (the code exists, is active, unexpired, under its uses); `force` skips that, as if the
    shop had a generic code of that name, for testing unknown codes and misuse."""
    now = now or utcnow()
    currency = currency.upper()
    ship_to = shipping_fields(shipping_address)
    applied: list[dict[str, Any]] = []
    for typed in codes:
        row = session.exec(
            select(SandboxCode).where(col(SandboxCode.shop) == shop, col(SandboxCode.code_key) == typed.upper())
        ).first()
        if row is None:
            if not force:
                raise SandboxError(422, f"discount code {typed!r} is not valid")
            applied.append({"code": typed, "amount": 0})
            continue
        discount = session.get_one(SandboxDiscount, row.discount_id)
        problem = _code_problem(row, discount, now)
        if problem and not force:
            raise SandboxError(422, f"discount code {typed!r} {problem}")
        # claim a use atomically, as a platform must under concurrent checkouts
        session.execute(update(SandboxCode).where(col(SandboxCode.id) == row.id).values(usage_count=SandboxCode.usage_count + 1))
        applied.append({"code": row.code, "amount": _discount_amount(discount, subtotal, currency)})
    order = SandboxOrder(
        shop=shop,
        status="paid",
        email=email,
        customer_id=customer_id,
        currency=currency,
        subtotal=subtotal,
        discount_total=min(subtotal, sum(a["amount"] for a in applied)),
        channel=channel,
        discount_codes=applied,
        shipping_address=ship_to,
        created_at=now,
        updated_at=now,
    )
    session.add(order)
    session.flush()
    queue_webhook(session, order, "orders/create", now=now)
    return order


def _code_problem(row: SandboxCode, discount: SandboxDiscount, now: datetime) -> str | None:
    if not row.active or discount.status == "deleted":
        return "is no longer active"
    if discount.status == "paused":
        return "is paused"
    for moment in (row.expires_at, discount.ends_at):
        if moment is not None and _aware(moment) <= now:
            return "has expired"
    if discount.uses_per_code is not None and row.usage_count >= discount.uses_per_code:
        return "has reached its usage limit"
    return None


def _discount_amount(discount: SandboxDiscount, subtotal: int, currency: str) -> int:
    if discount.kind == "percentage":
        return int((Decimal(subtotal) * discount.value / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if discount.kind == "fixed_amount" and discount.currency == currency:
        return min(discount.value, subtotal)
    return 0


def get_order(session: Session, shop: str, order_id: int) -> SandboxOrder:
    order = session.get(SandboxOrder, order_id)
    if order is None or order.shop != shop:
        raise SandboxError(404, f"order {order_id} not found")
    return order


def recent_orders(session: Session, shop: str, *, before: int | None = None, limit: int = 25) -> list[SandboxOrder]:
    """The shop's orders, newest first, a page at a time: keyset on the id (`before` = the last id
    of the previous page), never an offset."""
    query = select(SandboxOrder).where(col(SandboxOrder.shop) == shop)
    if before is not None:
        query = query.where(col(SandboxOrder.id) < before)
    return list(session.exec(query.order_by(col(SandboxOrder.id).desc()).limit(limit)).all())


_TRANSITIONS = {
    "cancel": ("cancelled", "orders/cancelled"),
    "refund": ("refunded", "orders/refunded"),
    "fail": ("failed", "orders/failed"),
}


def change_order(session: Session, shop: str, order_id: int, action: str, *, now: datetime | None = None) -> SandboxOrder:
    """Cancel, refund or fail an order; its codes get their use back, as most platforms do."""
    now = now or utcnow()
    status, topic = _TRANSITIONS[action]
    order = get_order(session, shop, order_id)
    if order.status in ("cancelled", "refunded", "failed"):
        raise SandboxError(409, f"order {order_id} is already {order.status}")
    order.status, order.updated_at = status, now
    keys = [str(d["code"]).upper() for d in order.discount_codes]
    if keys:
        session.execute(
            update(SandboxCode)
            .where(col(SandboxCode.shop) == shop, col(SandboxCode.code_key).in_(keys), col(SandboxCode.usage_count) > 0)
            .values(usage_count=SandboxCode.usage_count - 1)
        )
    session.flush()
    queue_webhook(session, order, topic, now=now)
    return order


# --- webhook queue ------------------------------------------------------------------------


def queue_webhook(session: Session, order: SandboxOrder, topic: str, *, now: datetime) -> SandboxDelivery:
    knobs = get_knobs(session, order.shop)
    delay = timedelta(milliseconds=random.uniform(0, knobs.delay_ms)) if knobs.delay_ms else timedelta(0)
    delivery = SandboxDelivery(
        shop=order.shop,
        delivery_id=str(uuid.uuid4()),
        topic=topic,
        order_id=order.id,
        body=json.dumps(order_json(order), separators=(",", ":")),
        next_attempt_at=now + delay,
        created_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery


@dataclass(frozen=True)
class DueDelivery:
    id: int
    shop: str
    delivery_id: str
    topic: str
    body: str
    attempts: int


def claim_deliveries(engine: Engine, *, now: datetime, lease: timedelta, limit: int) -> list[DueDelivery]:
    """Take due deliveries for one deliverer until now + lease (then another may retry them)."""
    table = SandboxDelivery.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        pick = (
            table.select()
            .with_only_columns(table.c.id)
            .where(table.c.status == "pending", table.c.next_attempt_at <= now)
            .order_by(table.c.next_attempt_at, table.c.id)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        rows = conn.execute(
            update(table)
            .where(table.c.id.in_(pick.scalar_subquery()))
            .values(next_attempt_at=now + lease, attempts=table.c.attempts + 1)
            .returning(table.c.id, table.c.shop, table.c.delivery_id, table.c.topic, table.c.body, table.c.attempts)
        ).all()
    return sorted((DueDelivery(*r) for r in rows), key=lambda d: d.id)


def finish_delivery(
    engine: Engine, delivery: DueDelivery, *, ok: bool, sends: int, error: str | None, knobs: Knobs, now: datetime
) -> None:
    table = SandboxDelivery.__table__  # type: ignore[attr-defined]
    values: dict[str, Any] = {"sends": table.c.sends + sends, "last_error": error}
    if ok:
        values.update(status="delivered", delivered_at=now)
    elif delivery.attempts > knobs.max_retries:
        values.update(status="failed")
    else:
        values.update(next_attempt_at=now + timedelta(seconds=knobs.retry_base_seconds * 2 ** (delivery.attempts - 1)))
    with engine.begin() as conn:
        conn.execute(update(table).where(and_(table.c.id == delivery.id, table.c.status == "pending")).values(**values))


def redeliver(session: Session, shop: str, delivery_id: str) -> None:
    """Send a delivered or failed webhook again, as a platform's "resend" button does."""
    row = session.exec(
        select(SandboxDelivery).where(col(SandboxDelivery.shop) == shop, col(SandboxDelivery.delivery_id) == delivery_id)
    ).first()
    if row is None:
        raise SandboxError(404, f"delivery {delivery_id} not found")
    row.status, row.attempts, row.next_attempt_at = "pending", 0, utcnow()
    session.flush()


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return _aware(datetime.fromisoformat(str(value)))
    except ValueError as exc:
        raise SandboxError(422, f"malformed time {value!r}") from exc


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
