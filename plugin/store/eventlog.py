"""Outbound events, written in the transaction of the change that causes them (promise 4).

    emit(conn, shop_id=, type=, data=, now=)   one event: an `event_message` row, and per
                                              enabled endpoint subscribed to its type an
                                              `event_delivery` row and its `events.deliver` job
    subscribed(conn, shop_id)                 the event types the shop's enabled endpoints want
    sync_failed(conn, job, error, now)        the `sync.failed` event of a job that gave up

Every domain calls `emit` inside its own transaction, so an event exists exactly when its cause
committed. Most shops have no endpoint: `emit` then costs one dictionary lookup, as the types
each shop subscribes to are cached per process (`plugin.store.caches`, `TTL_SECONDS`). A change
to an endpoint in this process is seen at once; one made in another process within
`TTL_SECONDS` (an event in that window, for a type just subscribed, is not sent to the new
endpoint; one just unsubscribed is still sent). The delivery itself (plugin.events.delivery)
runs in the worker.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from plugin.store import caches
from plugin.store.models import EventDelivery, EventEndpoint, EventMessage, Job

EVENT_TYPES = (
    "redemption.created",
    "redemption.rolled_back",
    "code.assigned",
    "code.voided",
    "campaign.paused",
    "pool.low",
    "sync.failed",
)
DELIVER = "events.deliver"
# attempts of one delivery: the Standard Webhooks example schedule's first eight (about 28 hours)
DELIVERY_ATTEMPTS = 8
# families of jobs that carry a change to a platform or provider: one that dies is `sync.failed`
SYNC_FAMILIES = ("sync", "distribution", "klaviyo", "expiry", "install")

_endpoint = EventEndpoint.__table__  # type: ignore[attr-defined]
_message = EventMessage.__table__  # type: ignore[attr-defined]
_delivery = EventDelivery.__table__  # type: ignore[attr-defined]


def new_message_id() -> str:
    """`msg_` and 24 URL-safe characters: no `.` (the signed content is `{id}.{timestamp}.{body}`)."""
    return "msg_" + secrets.token_urlsafe(18)


# Statements built once: building a Core statement per event costs more than running it
# (bench/events_emit.py); executed with parameters, they also reuse their compiled form.
_job = Job.__table__  # type: ignore[attr-defined]
_ENABLED = select(_endpoint.c.id, _endpoint.c.event_types).where(_endpoint.c.shop_id == bindparam("shop_id"), _endpoint.c.enabled)
_INSERT_MESSAGE = _message.insert().returning(_message.c.id)
_INSERT_DELIVERY = _delivery.insert().returning(_delivery.c.id)
_INSERT_JOB = _job.insert()


def subscribed(conn: Connection, shop_id: int) -> frozenset[str]:
    cache = caches.for_engine(conn.engine).event_types
    found = cache.get(shop_id)
    if found is None:
        gen = caches.generation()
        rows = conn.execute(_ENABLED, {"shop_id": shop_id}).all()
        found = frozenset(t for _, types in rows for t in (types or ()))
        cache.put(shop_id, found, gen)
    return found


def emit(conn: Connection, *, shop_id: int, type: str, data: Mapping[str, Any], now: datetime) -> str | None:
    """Write the event and its deliveries in the caller's transaction; its message id, or None
    when no enabled endpoint of the shop subscribes to `type`."""
    assert type in EVENT_TYPES, type
    if type not in subscribed(conn, shop_id):
        return None
    rows = conn.execute(_ENABLED, {"shop_id": shop_id}).all()
    targets = sorted(int(endpoint_id) for endpoint_id, types in rows if type in (types or ()))
    if not targets:
        return None
    msg_id = new_message_id()
    payload = {"type": type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": dict(data)}
    message_id = conn.execute(
        _INSERT_MESSAGE, {"shop_id": shop_id, "msg_id": msg_id, "type": type, "payload": payload, "created_at": now}
    ).scalar_one()
    for endpoint_id in targets:
        queue_delivery(conn, shop_id=shop_id, endpoint_id=endpoint_id, message_id=int(message_id), now=now)
    return msg_id


def queue_delivery(conn: Connection, *, shop_id: int, endpoint_id: int, message_id: int, now: datetime) -> int:
    values = {
        "shop_id": shop_id,
        "endpoint_id": endpoint_id,
        "message_id": message_id,
        "status": "pending",
        "attempts": 0,
        "created_at": now,
    }
    delivery_id = int(conn.execute(_INSERT_DELIVERY, values).scalar_one())
    conn.execute(
        _INSERT_JOB,
        {
            "kind": DELIVER,
            "payload": {"delivery_id": delivery_id},
            "shop_id": shop_id,
            "dedupe_key": None,
            # one endpoint's deliveries one at a time: a failing receiver is not hammered in parallel
            "serial_key": f"events:{shop_id}:{endpoint_id}",
            "status": "queued",
            "attempts": 0,
            "max_attempts": DELIVERY_ATTEMPTS,
            "run_after": now,
            "created_at": now,
        },
    )
    return delivery_id


def is_sync_job(kind: str) -> bool:
    return kind.partition(".")[0] in SYNC_FAMILIES


def sync_failed(
    conn: Connection,
    *,
    job_id: int,
    kind: str,
    shop_id: int | None,
    payload: Mapping[str, Any],
    attempts: int,
    error: str,
    now: datetime,
) -> str | None:
    """The `sync.failed` event of a dead job that synced to a platform or provider."""
    if shop_id is None or not is_sync_job(kind):
        return None
    data = {"job_id": job_id, "kind": kind, "attempts": attempts, "error": error[:500]}
    if payload.get("campaign_id") is not None:
        data["campaign_id"] = payload["campaign_id"]
    return emit(conn, shop_id=shop_id, type="sync.failed", data=data, now=now)
