"""Outbound events over the API (listed in plugin.web.api.ENDPOINTS, scope `admin`): event
endpoints, their deliveries with attempts, test events; the shop's alert channels."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from connectors.egress import AddressPolicy
from plugin.errors import InvalidInput
from plugin.events import channels, endpoints
from plugin.events.endpoints import DeliveryRow
from plugin.settings import Settings
from plugin.shops import audit
from plugin.store.models import EventAttempt, EventEndpoint, utcnow
from plugin.web.call import Call

EventType = Literal[
    "redemption.created",
    "redemption.rolled_back",
    "code.assigned",
    "code.voided",
    "campaign.paused",
    "pool.low",
    "sync.failed",
]
assert set(EventType.__args__) == set(endpoints.EVENT_TYPES)  # type: ignore[attr-defined]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=endpoints.MAX_URL)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointCreate(_In):
    url: Url = Field(description="https only; the host must resolve to public addresses.")
    event_types: list[EventType] = Field(min_length=1, max_length=len(endpoints.EVENT_TYPES))
    description: Description = ""


class EndpointUpdate(_In):
    url: Url | None = None
    event_types: list[EventType] | None = Field(default=None, min_length=1, max_length=len(endpoints.EVENT_TYPES))
    description: Description | None = None
    enabled: bool | None = Field(default=None, description="true enables a disabled endpoint again (its failures forgotten).")


class EndpointOut(BaseModel):
    id: int
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    failing_since: datetime | None
    created_at: datetime


class EndpointCreated(EndpointOut):
    secret: str = Field(description="`whsec_` + base64: verify deliveries with it. Shown only now (rotate to get a new one).")


class EndpointList(BaseModel):
    data: list[EndpointOut]


class SecretOut(BaseModel):
    secret: str


class QueuedDelivery(BaseModel):
    delivery_id: int


class EventAttemptOut(BaseModel):
    at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    response_snippet: str


class EventDeliveryOut(BaseModel):
    id: int
    endpoint_id: int
    msg_id: str = Field(description="The `webhook-id` header: the same on every retry.")
    type: str
    status: str = Field(description="pending | delivered | failed | halted (the endpoint was disabled)")
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    payload: dict[str, Any]
    attempt_log: list[EventAttemptOut] | None = None


class EventDeliveryList(BaseModel):
    data: list[EventDeliveryOut]
    next_cursor: str | None


class AlertChannelsIn(_In):
    email_to: str | None = Field(default=None, max_length=254)
    email_from: str | None = Field(default=None, max_length=254)
    smtp_host: str | None = Field(default=None, max_length=255)
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_user: str | None = Field(default=None, max_length=255)
    smtp_password: str | None = Field(default=None, max_length=500, description='null keeps the stored one; "" removes it')
    slack_url: str | None = Field(default=None, max_length=500, description='null keeps the stored one; "" removes it')


class AlertChannelsOut(BaseModel):
    email_to: str | None
    email_from: str | None
    smtp_host: str | None
    smtp_port: int | None
    smtp_security: str
    smtp_user: str | None
    smtp_password_set: bool
    slack_set: bool


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _policy(request: Request) -> AddressPolicy:
    policy: AddressPolicy = request.app.state.store_policy
    return policy


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def _audit(call: Call, session: Session, action: str, subject: str, **details: Any) -> None:
    """Who changed what, in the change's transaction."""
    audit.record(session, shop_id=call.shop_id, actor=f"api-key:{call.key.prefix}", action=action, subject=subject,
                 details=details)  # fmt: skip


def endpoint_out(e: EventEndpoint) -> EndpointOut:
    assert e.id is not None
    return EndpointOut(
        id=e.id,
        url=e.url,
        description=e.description,
        event_types=list(e.event_types),
        enabled=e.enabled,
        disabled_reason=e.disabled_reason,
        consecutive_failures=e.consecutive_failures,
        failing_since=e.failing_since,
        created_at=e.created_at,
    )


def attempt_out(a: EventAttempt) -> EventAttemptOut:
    return EventAttemptOut(
        at=a.created_at, status_code=a.status_code, latency_ms=a.latency_ms, error=a.error, response_snippet=a.response_snippet
    )


def delivery_out(row: DeliveryRow, attempts: list[EventAttempt] | None = None) -> EventDeliveryOut:
    d, m = row.delivery, row.message
    assert d.id is not None
    return EventDeliveryOut(
        id=d.id,
        endpoint_id=d.endpoint_id,
        msg_id=m.msg_id,
        type=m.type,
        status=d.status,
        attempts=d.attempts,
        last_status=d.last_status,
        last_error=d.last_error,
        created_at=d.created_at,
        finished_at=d.finished_at,
        payload=dict(m.payload),
        attempt_log=None if attempts is None else [attempt_out(a) for a in attempts],
    )


async def list_endpoints(call: Call) -> Response:
    def work(session: Session) -> EndpointList:
        return EndpointList(data=[endpoint_out(e) for e in endpoints.list_endpoints(session, shop_id=call.shop_id)])

    return _json(await call.read(work))


async def create_endpoint(call: Call) -> Response:
    body = await call.body(EndpointCreate)
    url = await endpoints.check_url(body.url, _policy(call.request))
    settings = _settings(call.request)

    def work(session: Session) -> EndpointCreated:
        created = endpoints.create(
            session,
            settings,
            shop_id=call.shop_id,
            url=url,
            event_types=body.event_types,
            description=body.description,
            now=utcnow(),
        )
        _audit(call, session, "event_endpoint.created", f"event_endpoint:{created.endpoint.id}", url=url,
               event_types=created.endpoint.event_types)  # fmt: skip
        return EndpointCreated(**endpoint_out(created.endpoint).model_dump(), secret=created.secret)

    return _json(await call.db(work), 201)


async def get_endpoint(call: Call) -> Response:
    endpoint_id = call.path_int("endpoint_id")
    return _json(await call.read(lambda s: endpoint_out(endpoints.get(s, shop_id=call.shop_id, endpoint_id=endpoint_id))))


async def update_endpoint(call: Call) -> Response:
    endpoint_id, body = call.path_int("endpoint_id"), await call.body(EndpointUpdate)
    url = None if body.url is None else await endpoints.check_url(body.url, _policy(call.request))

    def work(session: Session) -> EndpointOut:
        endpoint = endpoints.update(
            session,
            shop_id=call.shop_id,
            endpoint_id=endpoint_id,
            now=utcnow(),
            url=url,
            event_types=body.event_types,
            description=body.description,
            enabled=body.enabled,
        )
        _audit(call, session, "event_endpoint.changed", f"event_endpoint:{endpoint_id}",
               **body.model_dump(exclude_none=True))  # fmt: skip
        return endpoint_out(endpoint)

    return _json(await call.db(work))


async def delete_endpoint(call: Call) -> Response:
    endpoint_id = call.path_int("endpoint_id")

    def work(session: Session) -> None:
        endpoints.delete(session, shop_id=call.shop_id, endpoint_id=endpoint_id, now=utcnow())
        _audit(call, session, "event_endpoint.deleted", f"event_endpoint:{endpoint_id}")

    await call.db(work)
    return Response(status_code=204)


async def rotate_secret(call: Call) -> Response:
    endpoint_id, settings = call.path_int("endpoint_id"), _settings(call.request)

    def work(session: Session) -> SecretOut:
        secret = endpoints.rotate_secret(session, settings, shop_id=call.shop_id, endpoint_id=endpoint_id, now=utcnow())
        _audit(call, session, "event_endpoint.secret_rotated", f"event_endpoint:{endpoint_id}")
        return SecretOut(secret=secret)

    return _json(await call.db(work))


async def send_test(call: Call) -> Response:
    endpoint_id = call.path_int("endpoint_id")

    def work(session: Session) -> QueuedDelivery:
        return QueuedDelivery(
            delivery_id=endpoints.send_test(session, shop_id=call.shop_id, endpoint_id=endpoint_id, now=utcnow())
        )

    return _json(await call.db(work), 202)


DELIVERY_QUERY: dict[str, dict[str, Any]] = {
    "status": {"type": "string", "enum": list(endpoints.DELIVERY_STATUSES)},
    "cursor": {"type": "string", "maxLength": 200},
    "limit": {"type": "integer", "minimum": 1, "maximum": 200},
}


async def list_deliveries(call: Call) -> Response:
    endpoint_id, q = call.path_int("endpoint_id"), call.request.query_params
    status, cursor = q.get("status") or None, q.get("cursor") or None
    limit = _limit(q.get("limit"))

    def work(session: Session) -> EventDeliveryList:
        page = endpoints.list_deliveries(
            session, shop_id=call.shop_id, endpoint_id=endpoint_id, status=status, cursor=cursor, limit=limit
        )
        return EventDeliveryList(data=[delivery_out(r) for r in page.rows], next_cursor=page.next_cursor)

    return _json(await call.read(work))


def _limit(raw: str | None) -> int:
    if raw is None:
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= 200:
        raise InvalidInput("limit must be a whole number from 1 to 200", reason="invalid_limit")
    return int(raw)


async def get_delivery(call: Call) -> Response:
    delivery_id = call.path_int("delivery_id")

    def work(session: Session) -> EventDeliveryOut:
        row = endpoints.get_delivery(session, shop_id=call.shop_id, delivery_id=delivery_id)
        return delivery_out(row, endpoints.attempts_of(session, shop_id=call.shop_id, delivery_id=delivery_id))

    return _json(await call.read(work))


async def resend_delivery(call: Call) -> Response:
    delivery_id = call.path_int("delivery_id")

    def work(session: Session) -> QueuedDelivery:
        new_id = endpoints.resend(session, shop_id=call.shop_id, delivery_id=delivery_id, now=utcnow())
        _audit(call, session, "event_delivery.resent", f"event_delivery:{delivery_id}", new_delivery_id=new_id)
        return QueuedDelivery(delivery_id=new_id)

    return _json(await call.db(work), 202)


def channels_out(c: channels.Channels) -> AlertChannelsOut:
    return AlertChannelsOut(
        email_to=c.email_to,
        email_from=c.email_from,
        smtp_host=c.smtp_host,
        smtp_port=c.smtp_port,
        smtp_security=c.smtp_security,
        smtp_user=c.smtp_user,
        smtp_password_set=c.smtp_password_set,
        slack_set=c.slack_set,
    )


async def get_alert_channels(call: Call) -> Response:
    return _json(await call.read(lambda s: channels_out(channels.get_channels(s, shop_id=call.shop_id))))


async def set_alert_channels(call: Call) -> Response:
    body, settings = await call.body(AlertChannelsIn), _settings(call.request)
    await channels.check_smtp_host(body.smtp_host, body.smtp_port, _policy(call.request))

    def work(session: Session) -> AlertChannelsOut:
        saved = channels.save_channels(
            session,
            settings,
            shop_id=call.shop_id,
            email_to=body.email_to,
            email_from=body.email_from,
            smtp_host=body.smtp_host,
            smtp_port=body.smtp_port,
            smtp_security=body.smtp_security,
            smtp_user=body.smtp_user,
            smtp_password=body.smtp_password,
            slack_url=body.slack_url,
            now=utcnow(),
        )
        _audit(call, session, "alert_channels.changed", f"shop:{call.shop_id}", email_to=saved.email_to, slack=saved.slack_set)
        return channels_out(saved)

    return _json(await call.db(work))
