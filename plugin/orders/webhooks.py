"""Webhook deliveries: store each verified one once, list them for review, remove their PII;
keep a record of those refused for their size; delete old ignored and failed ones.

A delivery is stored before the platform gets its 2xx (promise 3, at least once) and
deduplicated by (platform, delivery id) with an insert that ignores a conflict, so retries and
duplicates of one delivery all land on the same row (at most once).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import delete, func, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from plugin.distribution import claimstore
from plugin.errors import InvalidInput, NotFound
from plugin.store.db import Reader, chunked, repeated, session_scope
from plugin.store.models import Alert, AuditEvent, Redemption, WebhookEvent, utcnow

_event = WebhookEvent.__table__  # type: ignore[attr-defined]
_alert_table = Alert.__table__  # type: ignore[attr-defined]

STATUSES = ("received", "processed", "deferred", "failed", "ignored")
_SECRET_HEADER = re.compile("hmac|signature|authorization|cookie|token|secret")


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The platform headers worth keeping to re-parse a delivery: its X-* ones, never a signature."""
    kept = {}
    for name, value in headers.items():
        lower = _kept_name(name)
        if lower is not None:
            kept[lower] = value
    return kept


@lru_cache(maxsize=512)
def _kept_name(name: str) -> str | None:
    """A header's name in lower case if it is kept, else None: decided once per name (a
    platform sends the same dozen on every delivery)."""
    lower = name.lower()
    keep = (lower.startswith("x-") or lower == "content-type") and _SECRET_HEADER.search(lower) is None
    return lower if keep else None


def store_delivery(
    session: Session,
    *,
    platform: str,
    delivery_id: str,
    topic: str,
    shop_id: int | None,
    payload: str,
    headers: Mapping[str, str],
    status: str = "received",
    error: str | None = None,
) -> tuple[int, bool]:
    """Store a verified delivery unless it is already stored: (its id, whether it is new)."""
    values = delivery_values(
        platform=platform,
        delivery_id=delivery_id,
        topic=topic,
        shop_id=shop_id,
        payload=payload,
        headers=headers,
        status=status,
        error=error,
    )
    conn = session.connection()
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = (
        insert(_event).values(**values).on_conflict_do_nothing(index_elements=["platform", "delivery_id"]).returning(_event.c.id)
    )
    new_id = conn.execute(stmt).scalar_one_or_none()
    if new_id is not None:
        return int(new_id), True
    found = conn.execute(
        select(_event.c.id).where(_event.c.platform == platform, _event.c.delivery_id == values["delivery_id"])
    ).scalar_one()
    return int(found), False


def delivery_values(
    *,
    platform: str,
    delivery_id: str,
    topic: str,
    shop_id: int | None,
    payload: str,
    headers: Mapping[str, str],
    status: str = "received",
    error: str | None = None,
) -> dict[str, Any]:
    """The row `store_deliveries` inserts for one verified delivery."""
    return {
        "platform": platform,
        "delivery_id": delivery_id[:255],
        "topic": topic[:128],
        "shop_id": shop_id,
        "payload": payload,
        "headers": kept_headers(headers),
        "status": status,
        "error": error[:2000] if error else None,
        "flagged": False,
        "campaign_id": None,
        "order_id": None,
        "outcome": {},
        "unknown_codes": 0,
        "received_at": utcnow(),
        "processed_at": None,
    }


_STORED = (
    "platform",
    "delivery_id",
    "topic",
    "shop_id",
    "payload",
    "headers",
    "status",
    "error",
    "flagged",
    "campaign_id",
    "order_id",
    "outcome",
    "unknown_codes",
    "received_at",
    "processed_at",
)
_JSON_COLUMNS = ("headers", "outcome")


def store_deliveries(
    db: Reader, rows: Sequence[dict[str, Any]], known: Mapping[tuple[str, str], int] | None = None
) -> list[tuple[int, bool]]:
    """Store many verified deliveries (rows of `delivery_values`) in the caller's write
    transaction, which commits once for all (a group commit): for each row, in order, (its id,
    whether this call stored it). Raw statements: this is the webhook hot path.

    Duplicates within `rows` and of stored deliveries insert nothing; the first of a repeated
    delivery id in `rows` is the one reported as new. `known`: what the caller found stored
    already in this transaction (`stored_ids`), neither inserted nor looked up again."""
    known = known or {}
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["platform"], row["delivery_id"])
        if key not in known:
            first.setdefault(key, row)
    insert = (
        f"INSERT INTO {_event.name} ({', '.join(_STORED)}) VALUES {{items}}"
        " ON CONFLICT (platform, delivery_id) DO NOTHING RETURNING id, platform, delivery_id"
    )
    new: dict[tuple[str, str], int] = {}
    processed_at: dict[datetime, Any] = {}  # a batch processed at once shares its instant: bound once
    for stored in chunked(list(first.values())):
        params = [value for row in stored for value in _bound(db, row, processed_at)]
        found = db.bulk(repeated(insert, len(stored), _row_placeholders(db.sqlite)), params)
        new.update({(platform, delivery_id): int(id_) for id_, platform, delivery_id in found})
    ids = {**known, **new, **stored_ids(db, [key for key in first if key not in new])}
    out: list[tuple[int, bool]] = []
    reported: set[tuple[str, str]] = set()
    for row in rows:
        key = (row["platform"], row["delivery_id"])
        created = key in new and key not in reported and first[key] is row
        reported.add(key)
        out.append((ids[key], created))
    return out


def stored_ids(db: Reader, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The ids of the deliveries already stored among these (platform, delivery id)s."""
    ids: dict[tuple[str, str], int] = {}
    select = f"SELECT id, delivery_id FROM {_event.name} WHERE platform = ? AND delivery_id IN ({{items}})"
    for platform in {p for p, _ in keys}:
        for wanted in chunked(sorted({d for p, d in keys if p == platform})):
            found = db.bulk(repeated(select, len(wanted)), [platform, *wanted])
            ids.update({(platform, delivery_id): int(id_) for id_, delivery_id in found})
    return ids


@lru_cache(maxsize=2)
def _row_placeholders(sqlite: bool) -> str:
    # PostgreSQL wants JSON parameters cast; SQLite keeps JSON as text
    marks = ["CAST(? AS JSON)" if not sqlite and name in _JSON_COLUMNS else "?" for name in _STORED]
    return f"({', '.join(marks)})"


def _bound(db: Reader, row: dict[str, Any], processed_at: dict[datetime, Any]) -> list[Any]:
    """A row's parameters, in `_STORED` order."""
    outcome = row["outcome"]
    done = row["processed_at"]
    if done is not None and done not in processed_at:
        processed_at[done] = db.instant(done)
    return [
        row["platform"],
        row["delivery_id"],
        row["topic"],
        row["shop_id"],
        row["payload"],
        orjson.dumps(row["headers"]).decode(),
        row["status"],
        row["error"],
        row["flagged"],
        row["campaign_id"],
        row["order_id"],
        orjson.dumps(outcome).decode() if outcome else "{}",
        row["unknown_codes"],
        db.instant(row["received_at"]),
        processed_at[done] if done is not None else None,
    ]


@dataclass(frozen=True)
class Page:
    items: Sequence[WebhookEvent]
    next_cursor: str | None


def list_deliveries(
    session: Session,
    shop_id: int,
    *,
    platform: str | None = None,
    status: str | None = None,
    flagged: bool | None = None,
    campaign_id: int | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """The shop's deliveries, newest first, filtered; `cursor` is the previous page's next_cursor."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", reason="invalid_status")
    limit = max(1, min(limit, 500))
    stmt = select(WebhookEvent).where(col(WebhookEvent.shop_id) == shop_id)
    if platform is not None:
        stmt = stmt.where(col(WebhookEvent.platform) == platform)
    if status is not None:
        stmt = stmt.where(col(WebhookEvent.status) == status)
    if flagged is not None:
        stmt = stmt.where(col(WebhookEvent.flagged) == flagged)
    if campaign_id is not None:
        stmt = stmt.where(col(WebhookEvent.campaign_id) == campaign_id)
    if cursor:
        try:
            before = int(cursor)
        except ValueError:
            raise InvalidInput("invalid cursor", reason="invalid_cursor") from None
        stmt = stmt.where(col(WebhookEvent.id) < before)
    rows = session.exec(stmt.order_by(col(WebhookEvent.id).desc()).limit(limit + 1)).all()
    items = rows[:limit]
    return Page(items, str(items[-1].id) if len(rows) > limit and items else None)


def get_delivery(session: Session, shop_id: int, event_id: int) -> WebhookEvent:
    event = session.exec(
        select(WebhookEvent).where(col(WebhookEvent.id) == event_id, col(WebhookEvent.shop_id) == shop_id)
    ).first()
    if event is None:
        raise NotFound(f"delivery {event_id} does not exist in this shop", reason="delivery_not_found")
    return event


def delivery_view(event: WebhookEvent, *, with_payload: bool = False) -> dict[str, Any]:
    """A delivery as the API and the CLI show it."""
    view: dict[str, Any] = {
        "id": event.id,
        "platform": event.platform,
        "delivery_id": event.delivery_id,
        "topic": event.topic,
        "status": event.status,
        "error": event.error,
        "flagged": event.flagged,
        "campaign_id": event.campaign_id,
        "order_id": event.order_id,
        "outcome": event.outcome,
        "unknown_codes": event.unknown_codes,
        "received_at": event.received_at.isoformat(),
        "processed_at": event.processed_at.isoformat() if event.processed_at else None,
        "redacted": event.redacted_at is not None,
    }
    if with_payload:
        view["payload"] = event.payload
    return view


def _redact(session: Session, shop_id: int, ids: Iterable[int], actor: str, why: str) -> int:
    ids = sorted(set(ids))
    if not ids:
        return 0
    now = utcnow()
    session.execute(
        update(WebhookEvent)
        .where(col(WebhookEvent.shop_id) == shop_id, col(WebhookEvent.id).in_(ids))
        .values(payload="", redacted_at=now)
    )
    session.add(
        AuditEvent(
            shop_id=shop_id,
            action="webhook.redacted",
            subject=f"webhooks:{len(ids)}",
            actor=actor,
            details={"ids": ids, "why": why},
        )
    )
    session.flush()
    return len(ids)


def redact_deliveries(session: Session, shop_id: int, ids: Iterable[int], *, actor: str, why: str) -> int:
    """Remove the payloads of these deliveries of the shop not yet redacted; how many lost theirs."""
    wanted = sorted(set(ids))
    if not wanted:
        return 0
    stmt = select(WebhookEvent.id).where(
        col(WebhookEvent.shop_id) == shop_id, col(WebhookEvent.id).in_(wanted), col(WebhookEvent.redacted_at).is_(None)
    )
    return _redact(session, shop_id, [i for i in session.exec(stmt).all() if i is not None], actor, why)


def redact_delivery(session: Session, shop_id: int, event_id: int, *, actor: str) -> WebhookEvent:
    """Remove one delivery's payload (the PII it holds); its outcome and status stay."""
    event = get_delivery(session, shop_id, event_id)
    assert event.id is not None
    _redact(session, shop_id, [event.id], actor, "by request")
    session.refresh(event)
    return event


def redact_customer(
    session: Session,
    shop_id: int,
    *,
    email: str | None = None,
    customer_id: str | None = None,
    order_ids: Sequence[str] = (),
    actor: str = "system",
) -> int:
    """Remove the payloads of every delivery about a customer (a GDPR redaction request):
    their orders as redemptions know them, the orders named, and any payload naming the email."""
    if not (email or customer_id or order_ids):
        raise InvalidInput("name a customer: email, customer id or orders", reason="invalid_redaction")
    orders = set(order_ids)
    who: list[Any] = []
    if email:
        who.append(col(Redemption.email) == email.strip().lower())
    if customer_id:
        who.append(col(Redemption.customer_id) == customer_id)
    if who:
        orders.update(session.exec(select(Redemption.order_id).where(col(Redemption.shop_id) == shop_id, or_(*who))).all())
    match: list[Any] = []
    if orders:
        match.append(col(WebhookEvent.order_id).in_(sorted(orders)))
    if email:
        match.append(func.lower(col(WebhookEvent.payload)).contains(email.strip().lower()))
    if not match:  # a customer id without orders: nothing names them (an empty or_() matches all)
        return 0
    ids = session.exec(
        select(WebhookEvent.id).where(col(WebhookEvent.shop_id) == shop_id, col(WebhookEvent.redacted_at).is_(None), or_(*match))
    ).all()
    return _redact(session, shop_id, [i for i in ids if i is not None], actor, "customer redaction")


# --- deliveries refused for their size ---------------------------------------------------------

TOO_LARGE = "webhook_too_large"
RECENT_REFUSALS = 20  # kept in the alert: it never grows with the refusals


def record_refused(
    session: Session,
    shop_id: int,
    *,
    platform: str,
    refusals: Sequence[dict[str, Any]],
    count: int,
    limit: int,
    fetched_later: bool,
) -> None:
    """Deliveries refused for their size (their bodies never read, nothing of them stored):
    one open alert per shop and platform counts them (`count` more) and keeps the last few
    (`refusals`, newest first: topic, delivery id, size, as their unsigned headers say), however
    many arrive, so a flood of them cannot grow a table."""
    key = f"{TOO_LARGE}:{shop_id}:{platform}"
    conn = session.connection()
    previous = conn.execute(select(_alert_table.c.details).where(_alert_table.c.open_key == key)).scalar_one_or_none() or {}
    recent = [*refusals, *previous.get("recent", [])][:RECENT_REFUSALS]
    last = recent[0]
    then = (
        "the orders are fetched by the next reconciliation"
        if fetched_later
        else f"{platform} orders are not polled: raise COUPONRY_WEBHOOK_BODY_LIMIT so the retries get through"
    )
    message = (
        f"{platform} webhook deliveries refused: larger than the {limit}-byte limit (last:"
        f" {last['topic'] or 'topic unknown'}, delivery {last['delivery_id'] or 'unknown'},"
        f" {'' if last['declared'] else 'over '}{last['size']} bytes); {then}"
    )
    values = {
        "shop_id": shop_id,
        "campaign_id": None,
        "partner_id": None,
        "kind": TOO_LARGE,
        "message": message[:500],
        "details": {"platform": platform, "limit": limit, "recent": recent},
        "open_key": key,
    }
    claimstore.raise_alert(conn, values, utcnow(), sightings=count)


# --- retention ---------------------------------------------------------------------------------

UNUSED = ("ignored", "failed")  # deliveries nothing acts on: for an unknown shop, or unreadable
_PURGE_BATCH = 1000


def purge_unused(engine: Engine, *, older_than: timedelta, now: datetime | None = None, batch: int = _PURGE_BATCH) -> int:
    """Delete ignored and failed deliveries received more than `older_than` ago, a batch per
    short transaction (the write lock is never held long); how many were deleted. The worker's
    sweep (plugin.orders.retention) calls it with COUPONRY_WEBHOOK_RETENTION_DAYS."""
    cutoff = (now or utcnow()) - older_than
    deleted = 0
    while True:
        with session_scope(engine) as session:
            ids = session.exec(
                select(WebhookEvent.id)
                .where(col(WebhookEvent.status).in_(UNUSED), col(WebhookEvent.received_at) < cutoff)
                .order_by(col(WebhookEvent.received_at))
                .limit(batch)
            ).all()
            if ids:
                session.execute(delete(WebhookEvent).where(col(WebhookEvent.id).in_(ids)))
        deleted += len(ids)
        if len(ids) < batch:
            return deleted
