"""A shop's event endpoints: create (the secret shown once), change, rotate the secret, enable
again, delete; their deliveries and attempts, newest first; a test event. The callers (API,
admin) record each change in the audit trail with who made it.

An endpoint URL is checked twice, like a WooCommerce store's: `check_url` (https, a host, no
credentials in it, and every address it resolves to public, unless COUPONRY_ALLOW_PRIVATE_STORES
lets loopback and private ones through for a receiver on the developer's machine) before it
is saved, and again on every connection (connectors.egress), as DNS answers change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlmodel import Session, col, select

from connectors import standardwebhooks
from connectors.egress import AddressPolicy, ForbiddenAddress
from plugin.errors import InvalidInput, NotFound
from plugin.settings import Settings
from plugin.shops import tokens
from plugin.store import eventlog, keyset
from plugin.store.keyset import Page
from plugin.store.models import EventAttempt, EventDelivery, EventEndpoint, EventMessage

EVENT_TYPES = eventlog.EVENT_TYPES
TEST_EVENT = "endpoint.test"  # sent by "send test event" only, to that endpoint only
MAX_URL = 2000
MAX_ENDPOINTS = 20  # per shop


class InvalidUrl(InvalidInput):
    reason = "invalid_url"


def parse_url(url: str) -> str:
    """The URL as it will be called, or InvalidUrl saying what is wrong with it."""
    value = (url or "").strip()
    if not value:
        raise InvalidUrl("url is required")
    if len(value) > MAX_URL:
        raise InvalidUrl(f"url must be at most {MAX_URL} characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        raise InvalidUrl("url is not a valid address") from None
    if parts.scheme != "https":
        raise InvalidUrl("url must be an https:// address: events carry order and customer data", reason="insecure_url")
    if not parts.hostname:
        raise InvalidUrl("url must name a host")
    if parts.username or parts.password:
        raise InvalidUrl("url must not carry a user name or password")
    if parts.fragment:
        raise InvalidUrl("url must not have a #fragment")
    return value


async def check_url(url: str, policy: AddressPolicy) -> str:
    """`parse_url`, then resolve the host: refused unless every address is one we may call."""
    value = parse_url(url)
    parts = urlsplit(value)
    try:
        await policy.check(parts.hostname or "", parts.port or 443)
    except ForbiddenAddress as exc:
        if exc.reason == "unresolvable_host":
            raise InvalidUrl(f"{parts.hostname} does not resolve", reason="unresolvable_host") from None
        raise InvalidUrl(f"{parts.hostname} is not a public address we may send to", reason="private_address") from None
    return value


def parse_types(types: Sequence[str] | None) -> list[str]:
    if not types:
        raise InvalidInput(f"choose at least one event type of: {', '.join(EVENT_TYPES)}", reason="invalid_event_types")
    unknown = sorted({t for t in types if t not in EVENT_TYPES})
    if unknown:
        raise InvalidInput(
            f"unknown event type(s) {', '.join(unknown)}; choose from {', '.join(EVENT_TYPES)}", reason="invalid_event_types"
        )
    return [t for t in EVENT_TYPES if t in set(types)]  # one order, no repeats


def parse_description(description: str | None) -> str:
    value = (description or "").strip()
    if len(value) > 200:
        raise InvalidInput("description must be at most 200 characters", reason="invalid_description")
    return value


@dataclass(frozen=True)
class Created:
    endpoint: EventEndpoint
    secret: str  # shown once: only its encrypted form is kept


def create(
    session: Session,
    settings: Settings,
    *,
    shop_id: int,
    url: str,
    event_types: Sequence[str],
    description: str = "",
    now: datetime,
) -> Created:
    """Save an endpoint whose URL `check_url` already passed (it is parsed again here)."""
    types, url, description = parse_types(event_types), parse_url(url), parse_description(description)
    count = len(session.exec(select(EventEndpoint.id).where(col(EventEndpoint.shop_id) == shop_id)).all())
    if count >= MAX_ENDPOINTS:
        raise InvalidInput(f"a shop has at most {MAX_ENDPOINTS} endpoints; delete one first", reason="too_many_endpoints")
    secret = standardwebhooks.new_secret()
    endpoint = EventEndpoint(
        shop_id=shop_id,
        url=url,
        description=description,
        event_types=types,
        secret_encrypted=tokens.encrypt(settings, secret),
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    session.flush()
    return Created(endpoint, secret)


def get(session: Session, *, shop_id: int, endpoint_id: int) -> EventEndpoint:
    found = session.exec(
        select(EventEndpoint).where(col(EventEndpoint.id) == endpoint_id, col(EventEndpoint.shop_id) == shop_id)
    ).first()
    if found is None:
        raise NotFound(f"endpoint {endpoint_id} does not exist in this shop", reason="endpoint_not_found")
    return found


def list_endpoints(session: Session, *, shop_id: int) -> list[EventEndpoint]:
    stmt = select(EventEndpoint).where(col(EventEndpoint.shop_id) == shop_id).order_by(col(EventEndpoint.id))
    return list(session.exec(stmt).all())


def update(
    session: Session,
    *,
    shop_id: int,
    endpoint_id: int,
    now: datetime,
    url: str | None = None,
    event_types: Sequence[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
) -> EventEndpoint:
    """Change what is given (a new URL must have passed `check_url`). Enabling an endpoint
    clears its failure count; its halted deliveries stay halted (send them again one by one)."""
    endpoint = get(session, shop_id=shop_id, endpoint_id=endpoint_id)
    if url is not None:
        endpoint.url = parse_url(url)
    if event_types is not None:
        endpoint.event_types = parse_types(event_types)
    if description is not None:
        endpoint.description = parse_description(description)
    if enabled is not None and enabled != endpoint.enabled:
        endpoint.enabled = enabled
        endpoint.disabled_reason = None if enabled else "disabled by hand"
        endpoint.consecutive_failures, endpoint.failing_since = 0, None
    endpoint.updated_at = now
    session.add(endpoint)
    session.flush()
    return endpoint


def rotate_secret(session: Session, settings: Settings, *, shop_id: int, endpoint_id: int, now: datetime) -> str:
    """A new secret, from the next delivery on; the old one stops signing at once."""
    endpoint = get(session, shop_id=shop_id, endpoint_id=endpoint_id)
    secret = standardwebhooks.new_secret()
    endpoint.secret_encrypted, endpoint.updated_at = tokens.encrypt(settings, secret), now
    session.add(endpoint)
    session.flush()
    return secret


def delete(session: Session, *, shop_id: int, endpoint_id: int, now: datetime) -> None:
    """Remove the endpoint, its deliveries and their attempts (its queued jobs find nothing)."""
    endpoint = get(session, shop_id=shop_id, endpoint_id=endpoint_id)
    deliveries = select(EventDelivery.id).where(col(EventDelivery.endpoint_id) == endpoint.id)
    session.execute(EventAttempt.__table__.delete().where(col(EventAttempt.delivery_id).in_(deliveries)))  # type: ignore[attr-defined]
    session.execute(EventDelivery.__table__.delete().where(col(EventDelivery.endpoint_id) == endpoint.id))  # type: ignore[attr-defined]
    session.delete(endpoint)
    session.flush()


def secret_of(settings: Settings, endpoint: EventEndpoint) -> str:
    return tokens.decrypt(settings, endpoint.secret_encrypted).access_token


def send_test(session: Session, *, shop_id: int, endpoint_id: int, now: datetime) -> int:
    """Queue an `endpoint.test` event to this endpoint alone (enabled or not); its delivery id."""
    endpoint = get(session, shop_id=shop_id, endpoint_id=endpoint_id)
    assert endpoint.id is not None
    message = EventMessage(
        shop_id=shop_id,
        msg_id=eventlog.new_message_id(),
        type=TEST_EVENT,
        payload={
            "type": TEST_EVENT,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": {"endpoint_id": endpoint.id, "message": "a test event from Couponry"},
        },
        created_at=now,
    )
    session.add(message)
    session.flush()
    assert message.id is not None
    return eventlog.queue_delivery(session.connection(), shop_id=shop_id, endpoint_id=endpoint.id, message_id=message.id, now=now)


# --- deliveries and attempts -----------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryRow:
    delivery: EventDelivery
    message: EventMessage


def list_deliveries(
    session: Session, *, shop_id: int, endpoint_id: int, status: str | None = None, cursor: str | None = None, limit: int = 50
) -> Page[DeliveryRow]:
    get(session, shop_id=shop_id, endpoint_id=endpoint_id)
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(DELIVERY_STATUSES)}", reason="invalid_filter")
    stmt = (
        select(EventDelivery, EventMessage)
        .join(EventMessage, col(EventMessage.id) == col(EventDelivery.message_id))
        .where(col(EventDelivery.shop_id) == shop_id, col(EventDelivery.endpoint_id) == endpoint_id)
    )
    if status is not None:
        stmt = stmt.where(col(EventDelivery.status) == status)
    limit = keyset.clamp(limit)
    key = keyset.decode(cursor, [int])
    if key is not None:
        stmt = stmt.where(col(EventDelivery.id) < key[0])
    rows = [DeliveryRow(d, m) for d, m in session.exec(stmt.order_by(col(EventDelivery.id).desc()).limit(limit + 1)).all()]
    return keyset.page(rows, limit, lambda r: [r.delivery.id])


DELIVERY_STATUSES = ("pending", "delivered", "failed", "halted")


def get_delivery(session: Session, *, shop_id: int, delivery_id: int) -> DeliveryRow:
    found = session.exec(
        select(EventDelivery, EventMessage)
        .join(EventMessage, col(EventMessage.id) == col(EventDelivery.message_id))
        .where(col(EventDelivery.id) == delivery_id, col(EventDelivery.shop_id) == shop_id)
    ).first()
    if found is None:
        raise NotFound(f"delivery {delivery_id} does not exist in this shop", reason="delivery_not_found")
    return DeliveryRow(*found)


def attempts_of(session: Session, *, shop_id: int, delivery_id: int) -> list[EventAttempt]:
    stmt = (
        select(EventAttempt)
        .where(col(EventAttempt.delivery_id) == delivery_id, col(EventAttempt.shop_id) == shop_id)
        .order_by(col(EventAttempt.id))
    )
    return list(session.exec(stmt).all())


def resend(session: Session, *, shop_id: int, delivery_id: int, now: datetime) -> int:
    """Send a failed or halted delivery's event again to its endpoint (a new delivery, the same
    `webhook-id`: a receiver that did get it ignores it)."""
    row = get_delivery(session, shop_id=shop_id, delivery_id=delivery_id)
    if row.delivery.status not in ("failed", "halted"):
        raise InvalidInput(
            f"delivery {delivery_id} is {row.delivery.status}; only a failed or halted one is sent again",
            reason="delivery_not_failed",
        )
    endpoint = get(session, shop_id=shop_id, endpoint_id=row.delivery.endpoint_id)
    assert endpoint.id is not None and row.message.id is not None
    new_id = eventlog.queue_delivery(
        session.connection(), shop_id=shop_id, endpoint_id=endpoint.id, message_id=row.message.id, now=now
    )
    return new_id


def attempts_by_delivery(session: Session, *, shop_id: int, delivery_ids: Sequence[int]) -> dict[int, list[EventAttempt]]:
    """The attempts of the deliveries of one page, by delivery (one query for the page)."""
    found: dict[int, list[EventAttempt]] = {i: [] for i in delivery_ids}
    if not delivery_ids:
        return found
    stmt = (
        select(EventAttempt)
        .where(col(EventAttempt.shop_id) == shop_id, col(EventAttempt.delivery_id).in_(list(delivery_ids)))
        .order_by(col(EventAttempt.id))
    )
    for attempt in session.exec(stmt).all():
        found[attempt.delivery_id].append(attempt)
    return found
