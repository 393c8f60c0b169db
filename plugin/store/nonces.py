"""One-time values spent once, on every process and database: a row in `used_nonce` whose
primary key makes a second spend fail atomically (install states, setup links, return links)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from plugin.store.models import UsedNonce, utcnow


def nonce_key(purpose: str, nonce: str) -> str:
    return f"{purpose}:{nonce}"[:160]


def spend(session: Session, purpose: str, nonce: str, *, expires_at: datetime) -> bool:
    """Record the nonce as spent; False if it already was.

    One INSERT ... ON CONFLICT DO NOTHING RETURNING on the primary key: of two requests carrying
    the same value, on any processes, exactly one inserts the row. Rows whose signed value has
    expired (it could not verify any more) are pruned first; spends are rare, so this costs nothing."""
    now = utcnow()
    session.execute(delete(UsedNonce).where(col(UsedNonce.expires_at) < now))
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    table = UsedNonce.__table__  # type: ignore[attr-defined]
    inserted = session.execute(
        dialect_insert(table)
        .values(key=nonce_key(purpose, nonce), expires_at=max(expires_at, now))
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(table.c.key)  # psycopg reports no rowcount for this statement
    ).first()
    return inserted is not None


def is_spent(session: Session, purpose: str, nonce: str) -> bool:
    """Whether the nonce was spent (and has not expired yet)."""
    row = session.get(UsedNonce, nonce_key(purpose, nonce))
    return row is not None and row.expires_at >= utcnow()
