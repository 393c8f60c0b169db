"""The worker's side of events: one `events.deliver` job sends one event to one endpoint.

Each attempt is recorded (status, latency, error, the start of the answer) with the delivery's
state and the endpoint's failure count, in one transaction after the call. Then:

- 2xx: delivered; the endpoint's failure count starts again.
- anything else (timeout, refused connection, 3xx, 4xx, 5xx): the job is failed for the outbox
  to retry, no sooner than the Standard Webhooks schedule says (5 s, 5 min, 30 min, 2 h, 5 h,
  10 h, 10 h: `RETRY_SCHEDULE`) nor than the receiver's Retry-After (429, 503); after
  `DELIVERY_ATTEMPTS` attempts (about 28 hours) the delivery is failed.
- the endpoint is disabled, with an alert, when it answers 410 Gone, when its attempts failed
  `settings.event_disable_failures` times in a row (default 30), or when it has failed without
  a success for `settings.event_disable_days` (default 5); its deliveries still waiting are then
  halted, not sent. The merchant enables it again in the admin or the API.

Exactly once in effect: every attempt of a delivery carries the event's `webhook-id`, so a
receiver that committed but whose answer was lost (a timeout, a dropped connection, a worker
that died before recording) recognises the retry and ignores it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select, update
from sqlalchemy.engine import Connection

from connectors import standardwebhooks
from connectors.errors import UpstreamError
from connectors.standardwebhooks import Outcome
from plugin.settings import Settings
from plugin.shops import tokens
from plugin.store import alerts, caches, eventlog
from plugin.store.db import run, session_scope
from plugin.store.models import EventAttempt, EventDelivery, EventEndpoint, EventMessage, utcnow

if TYPE_CHECKING:
    from plugin.store.jobcontext import Handler, JobContext
    from plugin.store.jobstore import ClaimedJob

# seconds before attempt n + 2 (Standard Webhooks' example schedule, without its last two rows)
RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)
assert len(RETRY_SCHEDULE) == eventlog.DELIVERY_ATTEMPTS - 1
DISABLED_ALERT = "event_endpoint_disabled"

_endpoint = EventEndpoint.__table__  # type: ignore[attr-defined]
_delivery = EventDelivery.__table__  # type: ignore[attr-defined]
_attempt = EventAttempt.__table__  # type: ignore[attr-defined]
_message = EventMessage.__table__  # type: ignore[attr-defined]


class DeliveryFailed(UpstreamError):
    """This attempt failed; the outbox tries again no sooner than `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Target:
    delivery_id: int
    shop_id: int
    endpoint_id: int
    url: str
    secret: str
    msg_id: str
    body: bytes


def body_of(payload: dict[str, Any]) -> bytes:
    """The bytes sent and signed: compact JSON, the same on every attempt."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _load(engine: Engine, settings: Settings, delivery_id: int, shop_id: int, now: datetime) -> Target | None:
    """The delivery to attempt, or None when there is nothing to send: done already, deleted,
    or its endpoint disabled (then halted here)."""
    with session_scope(engine) as session:
        conn = session.connection()
        row = conn.execute(
            select(
                _delivery.c.status,
                _delivery.c.endpoint_id,
                _endpoint.c.url,
                _endpoint.c.enabled,
                _endpoint.c.secret_encrypted,
                _message.c.msg_id,
                _message.c.payload,
            )
            .join(_endpoint, _endpoint.c.id == _delivery.c.endpoint_id)
            .join(_message, _message.c.id == _delivery.c.message_id)
            .where(_delivery.c.id == delivery_id, _delivery.c.shop_id == shop_id)
        ).first()
        if row is None or row.status != "pending":
            return None
        if not row.enabled:
            _halt(conn, endpoint_id=row.endpoint_id, now=now, only=delivery_id)
            return None
        secret = tokens.decrypt(settings, row.secret_encrypted).access_token
        return Target(delivery_id, shop_id, row.endpoint_id, row.url, secret, row.msg_id, body_of(dict(row.payload)))


def _halt(conn: Connection, *, endpoint_id: int, now: datetime, only: int | None = None) -> None:
    stmt = update(_delivery).where(_delivery.c.endpoint_id == endpoint_id, _delivery.c.status == "pending")
    if only is not None:
        stmt = stmt.where(_delivery.c.id == only)
    conn.execute(stmt.values(status="halted", finished_at=now, last_error="the endpoint is disabled"))


def record(
    engine: Engine, settings: Settings, target: Target, outcome: Outcome, *, attempt: int, last: bool, now: datetime
) -> str:
    """Write the attempt and what follows from it; the delivery's new status."""
    with session_scope(engine) as session:
        conn = session.connection()
        conn.execute(
            _attempt.insert().values(
                shop_id=target.shop_id,
                delivery_id=target.delivery_id,
                status_code=outcome.status,
                latency_ms=outcome.latency_ms,
                error=(outcome.error or None) and outcome.error[:500],
                response_snippet=outcome.snippet[:500],
                created_at=now,
            )
        )
        if outcome.delivered:
            status = "delivered"
            conn.execute(
                update(_endpoint).where(_endpoint.c.id == target.endpoint_id).values(consecutive_failures=0, failing_since=None)
            )
        else:
            status = "failed" if last else "pending"
            if _count_failure(conn, settings, target, outcome, now):
                status = "halted" if not last else status
        values: dict[str, Any] = {
            "status": status,
            "attempts": _delivery.c.attempts + 1,
            "last_status": outcome.status,
            "last_error": outcome.error and outcome.error[:500],
        }
        if status != "pending":
            values["finished_at"] = now
        conn.execute(update(_delivery).where(_delivery.c.id == target.delivery_id).values(**values))
    return status


def _count_failure(conn: Connection, settings: Settings, target: Target, outcome: Outcome, now: datetime) -> bool:
    """One more failure of the endpoint; True when it is disabled now."""
    row = conn.execute(
        update(_endpoint)
        .where(_endpoint.c.id == target.endpoint_id)
        .values(consecutive_failures=_endpoint.c.consecutive_failures + 1)
        .returning(_endpoint.c.consecutive_failures, _endpoint.c.failing_since, _endpoint.c.enabled, _endpoint.c.url)
    ).one()
    since = row.failing_since if row.failing_since is not None else now
    if row.failing_since is None:
        conn.execute(update(_endpoint).where(_endpoint.c.id == target.endpoint_id).values(failing_since=now))
    since = since if since.tzinfo is not None else since.replace(tzinfo=now.tzinfo)
    reason = None
    if outcome.gone:
        reason = "it answered 410 Gone"
    elif row.consecutive_failures >= settings.event_disable_failures:
        reason = f"its last {row.consecutive_failures} attempts failed"
    elif now - since >= timedelta(days=settings.event_disable_days):
        reason = f"it has failed since {since:%Y-%m-%d %H:%M} UTC without a success"
    if reason is None or not row.enabled:
        return False
    conn.execute(
        update(_endpoint)
        .where(_endpoint.c.id == target.endpoint_id)
        .values(enabled=False, disabled_reason=f"disabled: {reason}"[:300], updated_at=now)
    )
    _halt(conn, endpoint_id=target.endpoint_id, now=now)
    caches.bump()  # this process stops emitting to it at once (others within caches.TTL_SECONDS)
    alerts.raise_alert(
        conn,
        {
            "shop_id": target.shop_id,
            "kind": DISABLED_ALERT,
            "message": f"event endpoint {row.url[:200]} was disabled: {reason} (last error: {outcome.error})"[:500],
            "details": {"endpoint_id": target.endpoint_id, "reason": reason, "last_status": outcome.status},
            "open_key": f"{DISABLED_ALERT}:{target.endpoint_id}",
        },
        now,
    )
    return True


def next_wait(attempt: int, retry_after: float | None) -> float:
    """Seconds before the next attempt: the schedule's, or the receiver's Retry-After if longer."""
    scheduled = float(RETRY_SCHEDULE[min(attempt, len(RETRY_SCHEDULE)) - 1])
    return max(scheduled, retry_after or 0.0)


async def handle_deliver(ctx: JobContext, job: ClaimedJob) -> None:
    assert job.shop_id is not None
    delivery_id, shop_id, now = int(job.payload["delivery_id"]), job.shop_id, utcnow()
    target = await run(ctx.engine, lambda: _load(ctx.engine, ctx.settings, delivery_id, shop_id, now))
    if target is None:
        return
    outcome = await standardwebhooks.send(ctx.http, target.url, secret=target.secret, msg_id=target.msg_id, body=target.body)
    last = job.attempts >= job.max_attempts
    done = utcnow()
    status = await run(
        ctx.engine, lambda: record(ctx.engine, ctx.settings, target, outcome, attempt=job.attempts, last=last, now=done)
    )
    if status == "pending":
        raise DeliveryFailed(
            outcome.error or "failed", retry_after=next_wait(job.attempts, outcome.retry_after), status=outcome.status
        )


HANDLERS: dict[str, Handler] = {eventlog.DELIVER: handle_deliver}
