"""Distribution's atomic operations, per dialect (store layer).

A claim gives a recipient the next free code of a campaign (or of a partner's block):

- PostgreSQL: `UPDATE code SET recipient ... WHERE id = (SELECT id ... ORDER BY id LIMIT 1
  FOR UPDATE SKIP LOCKED) AND recipient IS NULL RETURNING ...`, so concurrent claims skip the
  rows others are taking instead of queueing behind them.
- SQLite: the same statement without the lock clause; the transaction began with
  `BEGIN IMMEDIATE` (plugin.store.db), so claimers take turns.

The partial unique index `uq_code_campaign_recipient` makes "one recipient, one code" a database
guarantee: two racing first claims of one recipient cannot both commit. The loser's UPDATE
raises IntegrityError inside its savepoint, and the caller answers with the winner's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from plugin.store import alerts
from plugin.store.db import Reader
from plugin.store.jobstore import aware
from plugin.store.models import Alert, Code

_code = Code.__table__  # type: ignore[attr-defined]
_alert = Alert.__table__  # type: ignore[attr-defined]
_COLUMNS = (
    _code.c.id,
    _code.c.code,
    _code.c.campaign_id,
    _code.c.batch_id,
    _code.c.partner_id,
    _code.c.recipient,
    _code.c.status,
    _code.c.created_at,
    _code.c.assigned_at,
    _code.c.expires_at,
)


@dataclass(frozen=True)
class AssignedCode:
    id: int
    code: str
    campaign_id: int
    batch_id: int | None
    partner_id: int | None
    recipient: str
    status: str
    created_at: datetime
    assigned_at: datetime
    expires_at: datetime | None
    # the binding: who alone may use the code (a claim under the `claim` policy, or an import)
    email: str | None = None
    customer_id: str | None = None

    @property
    def bound(self) -> bool:
        return self.email is not None or self.customer_id is not None


def _assigned(row: Any) -> AssignedCode:
    return AssignedCode(
        id=int(row.id),
        code=row.code,
        campaign_id=int(row.campaign_id),
        batch_id=row.batch_id,
        partner_id=row.partner_id,
        recipient=row.recipient,
        status=row.status,
        created_at=aware(row.created_at),
        assigned_at=aware(row.assigned_at),
        expires_at=aware(row.expires_at) if row.expires_at is not None else None,
    )


@dataclass(frozen=True)
class CampaignInfo:
    id: int
    shop_id: int
    name: str
    status: str
    rules_text: str | None
    format_text: str


def campaign_info(reader: Reader, *, shop_id: int, campaign_id: int) -> CampaignInfo | None:
    rows = reader.rows(
        "SELECT id, shop_id, name, status, CAST(rules AS TEXT), CAST(code_format AS TEXT) FROM campaign"
        " WHERE id = ? AND shop_id = ?",
        (campaign_id, shop_id),
    )
    return CampaignInfo(*rows[0]) if rows else None


# The read of a repeat claim: the recipient's code with its campaign and batch, in one statement
# on the partial unique index (campaign_id, recipient).
_LOOKUP = """
SELECT c.id, c.code, c.campaign_id, c.batch_id, c.partner_id, c.recipient, c.status, c.created_at, c.assigned_at,
       c.expires_at, k.id, k.shop_id, k.name, k.status, CAST(k.rules AS TEXT), CAST(k.code_format AS TEXT),
       CAST(b.rules_override AS TEXT), c.email, c.customer_id
FROM code c
JOIN campaign k ON k.id = c.campaign_id
LEFT JOIN batch b ON b.id = c.batch_id
WHERE c.campaign_id = ? AND c.recipient = ? AND c.shop_id = ? AND k.shop_id = ?
"""


def lookup_assigned(
    reader: Reader, *, shop_id: int, campaign_id: int, recipient: str
) -> tuple[AssignedCode, CampaignInfo, str | None] | None:
    """(the recipient's code, its campaign, its batch's override text), or None."""
    rows = reader.rows(_LOOKUP, (campaign_id, recipient, shop_id, shop_id))
    if not rows:
        return None
    r = rows[0]
    at = Reader.as_instant
    created, assigned = at(r[7]), at(r[8])
    assert created is not None and assigned is not None
    code = AssignedCode(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5], r[6], created, assigned, at(r[9]), r[17], r[18])
    return code, CampaignInfo(*r[10:16]), r[16]


def assigned_page(
    reader: Reader, *, shop_id: int, campaign_id: int, partner_id: int | None, after_id: int, limit: int
) -> list[AssignedCode]:
    """Assigned codes of the campaign in id order after `after_id` (keyset pagination)."""
    sql = (
        "SELECT id, code, campaign_id, batch_id, partner_id, recipient, status, created_at, assigned_at, expires_at FROM code "
        "WHERE campaign_id = ? AND shop_id = ? AND recipient IS NOT NULL AND id > ?"
    )
    params: list[Any] = [campaign_id, shop_id, after_id]
    if partner_id is not None:
        sql += " AND partner_id = ?"
        params.append(partner_id)
    at = Reader.as_instant
    out = []
    for r in reader.rows(sql + " ORDER BY id LIMIT ?", [*params, limit]):
        created, assigned = at(r[7]), at(r[8])
        assert created is not None and assigned is not None
        out.append(AssignedCode(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5], r[6], created, assigned, at(r[9])))
    return out


def batch_override(reader: Reader, batch_id: int | None) -> str | None:
    if batch_id is None:
        return None
    rows = reader.rows("SELECT CAST(rules_override AS TEXT) FROM batch WHERE id = ?", (batch_id,))
    return rows[0][0] if rows else None


# What "free" means (promise 9: every code handed out is live): never assigned, never used (no
# use now and no redemption ever, rolled back or not: someone outside knows a code that was on an
# order), not voided, not expired, not held by a checkout, and not handed to a provider's own pool
# (Klaviyo gives those out). The partial index ix_code_unassigned (campaign_id, id) WHERE
# recipient IS NULL AND uses = 0 AND status = 'active' AND pool_id IS NULL serves the scan in id
# order; expiry, holds and past redemptions depend on the moment or on other tables, so they are
# checked per candidate (one probe of an indexed column each).
_FREE_WHERE = """campaign_id = ? AND recipient IS NULL AND uses = 0 AND status = 'active' AND pool_id IS NULL
              AND shop_id = ? AND {partner}
              AND (expires_at IS NULL OR expires_at > ?)
              AND NOT EXISTS (SELECT 1 FROM reservation r
                              WHERE r.code_id = code.id AND r.released_at IS NULL AND r.expires_at > ?)
              AND NOT EXISTS (SELECT 1 FROM redemption d WHERE d.code_id = code.id)"""
# The hot write of a first claim, as plain SQL (no statement building per call).
_TAKE = f"""
UPDATE code SET recipient = ?, assigned_at = ?
WHERE id = (SELECT id FROM code WHERE {_FREE_WHERE} ORDER BY id LIMIT 1{{lock}})
  AND recipient IS NULL AND uses = 0
RETURNING id, code, campaign_id, batch_id, partner_id, recipient, status, created_at, assigned_at, expires_at
"""
_FREE = f"""
SELECT count(*) FROM (SELECT 1 FROM code WHERE {_FREE_WHERE} LIMIT ?) AS free
"""
_PICK = f"SELECT id FROM code WHERE {_FREE_WHERE} ORDER BY id LIMIT ?"


@contextmanager
def _raw(conn: Connection) -> Iterator[Reader]:
    """A Reader on the connection's own DBAPI connection, inside its transaction."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        yield Reader(cursor, conn.dialect.name == "sqlite")
    finally:
        cursor.close()


def _free_params(shop_id: int, campaign_id: int, partner_id: int | None, now: Any) -> tuple[str, list[Any]]:
    """The partner condition and the parameters of `_FREE_WHERE`, in placeholder order."""
    if partner_id is None:
        return "partner_id IS NULL", [campaign_id, shop_id, now, now]
    return "partner_id = ?", [campaign_id, shop_id, partner_id, now, now]


def take_free_code(
    conn: Connection, *, shop_id: int, campaign_id: int, partner_id: int | None, recipient: str, now: datetime
) -> AssignedCode | None:
    """Assign the next free code to the recipient; None when the pool is empty.

    Runs in a savepoint; raises IntegrityError when the recipient got a code meanwhile."""
    pg = conn.dialect.name == "postgresql"
    with _raw(conn) as raw:
        at = raw.instant(now)
        partner, params = _free_params(shop_id, campaign_id, partner_id, at)
        params = [recipient, at, *params]
        sql = _TAKE.format(partner=partner, lock=" FOR UPDATE SKIP LOCKED" if pg else "")
        dbapi_error = conn.dialect.loaded_dbapi.IntegrityError
        try:
            with conn.begin_nested():
                rows = raw.rows(sql, params)
        except dbapi_error as exc:
            raise IntegrityError(sql, params, exc) from exc
    if not rows:
        return None
    r = rows[0]
    created, assigned = Reader.as_instant(r[7]), Reader.as_instant(r[8])
    assert created is not None and assigned is not None
    return AssignedCode(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5], r[6], created, assigned, Reader.as_instant(r[9]))


def bind(conn: Connection, *, code_id: int, email: str | None, customer_id: str | None) -> None:
    """Bind the code to its recipient: only that email or customer id may use it from now on."""
    conn.execute(update(_code).where(_code.c.id == code_id).values(email=email, customer_id=customer_id))


def set_expiry(conn: Connection, *, code_id: int, expires_at: datetime) -> None:
    conn.execute(update(_code).where(_code.c.id == code_id).values(expires_at=expires_at))


def free_codes(conn: Connection, *, shop_id: int, campaign_id: int, partner_id: int | None, upto: int, now: datetime) -> int:
    """How many codes are still free, counted only up to `upto` (cheap on a large pool)."""
    with _raw(conn) as raw:
        partner, params = _free_params(shop_id, campaign_id, partner_id, raw.instant(now))
        return int(raw.rows(_FREE.format(partner=partner), [*params, upto])[0][0])


def allocate(conn: Connection, *, shop_id: int, campaign_id: int, partner_id: int, count: int, now: datetime) -> int:
    """Move up to `count` free codes without a partner into the partner's block; how many moved."""
    pg = conn.dialect.name == "postgresql"
    with _raw(conn) as raw:
        partner, params = _free_params(shop_id, campaign_id, None, raw.instant(now))
        pick = _PICK.format(partner=partner) + (" FOR UPDATE SKIP LOCKED" if pg else "")
        # A CTE runs once; PostgreSQL may re-run an `IN (subquery)` per row, and a locking
        # subquery with LIMIT then hands out more rows than asked for.
        sql = (
            f"WITH chosen AS ({pick}) UPDATE code SET partner_id = ? "
            "WHERE id IN (SELECT id FROM chosen) AND partner_id IS NULL RETURNING id"
        )
        return len(raw.rows(sql, [*params, count, partner_id]))


def allocate_to_pool(
    conn: Connection, *, shop_id: int, campaign_id: int, pool_id: int, count: int, batch_id: int | None, now: datetime
) -> list[int]:
    """Hand up to `count` free codes of the campaign's own pool (no partner; only `batch_id`'s
    when given) to the provider pool `pool_id`; the ids of those moved. Never a bound code: the
    provider picks the recipient, so nothing a checkout checks may name another person."""
    pg = conn.dialect.name == "postgresql"
    with _raw(conn) as raw:
        partner, params = _free_params(shop_id, campaign_id, None, raw.instant(now))
        if batch_id is not None:
            partner += " AND batch_id = ?"
            params.insert(2, batch_id)  # after campaign_id and shop_id, where {partner} stands in _FREE_WHERE
        partner += " AND email IS NULL AND customer_id IS NULL"
        pick = _PICK.format(partner=partner) + (" FOR UPDATE SKIP LOCKED" if pg else "")
        # A CTE runs once (see allocate).
        sql = (
            f"WITH chosen AS ({pick}) UPDATE code SET pool_id = ? "
            "WHERE id IN (SELECT id FROM chosen) AND pool_id IS NULL AND recipient IS NULL RETURNING id"
        )
        return sorted(int(r[0]) for r in raw.rows(sql, [*params, count, pool_id]))


def raise_alert(conn: Connection, values: dict[str, Any], now: datetime, *, sightings: int = 1) -> bool:
    """Open the alert (True), or count more sightings of the open alert with the same `open_key`;
    a newly opened alert goes to the shop's alert channels (plugin.store.alerts)."""
    return alerts.raise_alert(conn, values, now, sightings=sightings)


def alert_seen_since(conn: Connection, *, open_key: str, since: datetime) -> bool:
    """True when the open alert with this key was raised or seen at `since` or later."""
    seen = conn.execute(select(_alert.c.last_seen_at).where(_alert.c.open_key == open_key)).scalar_one_or_none()
    return seen is not None and aware(seen) >= since


def resolve_alert(conn: Connection, *, open_key: str, now: datetime) -> bool:
    result = conn.execute(update(_alert).where(_alert.c.open_key == open_key).values(open_key=None, resolved_at=now))
    return bool(result.rowcount)


__all__ = [
    "AssignedCode",
    "CampaignInfo",
    "IntegrityError",
    "alert_seen_since",
    "allocate",
    "allocate_to_pool",
    "assigned_page",
    "batch_override",
    "campaign_info",
    "free_codes",
    "lookup_assigned",
    "raise_alert",
    "resolve_alert",
    "set_expiry",
    "take_free_code",
]
