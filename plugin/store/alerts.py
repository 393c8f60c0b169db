"""Raising alerts, and sending each newly opened one on to the shop's alert channels.

    raise_alert(conn, values, now)   open the alert, or count one more sighting of the open one
                                     with the same `open_key`; True when it was opened now. An
                                     alert opened now, in a shop that set an email address or a
                                     Slack webhook (alert_channel), queues its `alerts.notify`
                                     job in the same transaction (plugin.events.channels sends it)

Only openings are sent: a pool that stays low is one message, not one per claim.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from plugin.store import jobstore
from plugin.store.models import Alert, AlertChannel

NOTIFY = "alerts.notify"
NOTIFY_ATTEMPTS = 8

_alert = Alert.__table__  # type: ignore[attr-defined]
_channel = AlertChannel.__table__  # type: ignore[attr-defined]


def raise_alert(conn: Connection, values: dict[str, Any], now: datetime, *, sightings: int = 1) -> bool:
    """Open the alert, or count more sightings of the open alert with the same `open_key`."""
    key = values.get("open_key")
    already = key is not None and conn.execute(select(_alert.c.id).where(_alert.c.open_key == key)).first() is not None
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(_alert).values(**values, count=sightings, created_at=now, last_seen_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=["open_key"],
        set_={
            "count": _alert.c.count + sightings,
            "last_seen_at": now,
            "message": stmt.excluded.message,
            "details": stmt.excluded.details,
        },
    )
    alert_id = conn.execute(stmt.returning(_alert.c.id)).scalar_one()
    if already:
        return False
    # (two transactions opening the same alert at once may both get here: sent twice, never lost)
    notify(conn, shop_id=int(values["shop_id"]), alert_id=int(alert_id), now=now)
    return True


def notify(conn: Connection, *, shop_id: int, alert_id: int, now: datetime) -> int | None:
    """Queue the alert's message to the shop's channels, if it has any."""
    row = conn.execute(select(_channel.c.email_to, _channel.c.slack_url_encrypted).where(_channel.c.shop_id == shop_id)).first()
    if row is None or not (row.email_to or row.slack_url_encrypted):
        return None
    return jobstore.insert_job(
        conn,
        {
            "kind": NOTIFY,
            "payload": {"alert_id": alert_id},
            "shop_id": shop_id,
            "dedupe_key": None,
            "serial_key": None,
            "status": "queued",
            "attempts": 0,
            "max_attempts": NOTIFY_ATTEMPTS,
            "run_after": now,
            "created_at": now,
        },
    )
