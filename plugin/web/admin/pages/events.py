"""Events: the shop's event endpoints (list, create with the secret shown once, send a test
event, disable or enable again, rotate the secret, delete), each endpoint's deliveries with
every attempt (resend a failed one), and where alerts go besides the admin (email, Slack).
Changes are the owner's only, each with its audit event."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from connectors.egress import AddressPolicy
from plugin.errors import PluginError
from plugin.events import channels, endpoints
from plugin.settings import Settings
from plugin.store.models import utcnow
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import Form, act
from plugin.web.admin.pages.syncs import read
from plugin.web.admin.render import render
from plugin.web.admin.routing import PREFIX, page
from plugin.web.problems import problem

PATH = f"{PREFIX}/events"
PAGE_SIZE = 50
LABELS = {
    "redemption.created": "A code was redeemed",
    "redemption.rolled_back": "A redemption was rolled back (cancel, refund)",
    "code.assigned": "A code was handed to a recipient",
    "code.voided": "Codes were voided",
    "campaign.paused": "A campaign was paused",
    "pool.low": "A campaign's free codes ran low",
    "sync.failed": "A change could not be carried to the platform or a provider",
}


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _policy(request: Request) -> AddressPolicy:
    policy: AddressPolicy = request.app.state.store_policy
    return policy


async def _list_page(request: Request, ctx: AdminContext, *, status_code: int = 200, **values: Any) -> Response:
    def facts(session: Session) -> dict[str, Any]:
        return {
            "endpoints": endpoints.list_endpoints(session, shop_id=ctx.shop_id),
            "channels": channels.get_channels(session, shop_id=ctx.shop_id),
        }

    found = await read(request, facts)
    for name in ("endpoint_form", "channels_form"):
        values[name] = values.get(name) or Form()
    return render(request, ctx, "admin/events.html", nav="events", labels=LABELS, status_code=status_code, **found, **values)


async def show(request: Request, ctx: AdminContext) -> Response:
    return await _list_page(request, ctx)


async def create(request: Request, ctx: AdminContext, form: Form) -> Response:
    types = [str(v) for v in (await request.form()).getlist("event_types")]
    form.values["event_types"] = ",".join(types)
    settings = _settings(request)
    try:
        url = await endpoints.check_url(form.get("url"), _policy(request))
        endpoints.parse_types(types)
    except PluginError as exc:
        exc.details.setdefault("field", "url" if exc.reason != "invalid_event_types" else "event_types")
        return await _list_page(request, ctx, endpoint_form=form.fail(exc), status_code=422)
    try:
        created = await act(
            request, ctx,
            lambda s: endpoints.create(s, settings, shop_id=ctx.shop_id, url=url, event_types=types,
                                       description=form.get("description"), now=utcnow()),
            action="event_endpoint.created", subject=lambda made: f"event_endpoint:{made.endpoint.id}",
            details={"url": url, "event_types": types},
        )  # fmt: skip
    except PluginError as exc:
        return await _list_page(request, ctx, endpoint_form=form.fail(exc), status_code=422)
    # shown once, in this answer only: never in a redirect's address
    return await _list_page(request, ctx, new_secret=created.secret, new_endpoint=created.endpoint, status_code=201)


async def detail(request: Request, ctx: AdminContext) -> Response:
    return await _detail_page(request, ctx)


async def _detail_page(request: Request, ctx: AdminContext, *, status_code: int = 200, **values: Any) -> Response:
    endpoint_id = int(request.path_params["endpoint_id"])
    form = Form(values={k: v for k, v in request.query_params.items() if isinstance(v, str)})

    def facts(session: Session) -> dict[str, Any]:
        endpoint = endpoints.get(session, shop_id=ctx.shop_id, endpoint_id=endpoint_id)
        found: dict[str, Any] = {"endpoint": endpoint}
        try:
            page_ = endpoints.list_deliveries(session, shop_id=ctx.shop_id, endpoint_id=endpoint_id,
                                              status=form.get("status") or None, cursor=form.get("cursor") or None,
                                              limit=PAGE_SIZE)  # fmt: skip
        except PluginError as exc:
            form.fail(exc)
            return found
        ids = [int(r.delivery.id or 0) for r in page_.rows]
        found.update(deliveries=page_, attempts=endpoints.attempts_by_delivery(session, shop_id=ctx.shop_id, delivery_ids=ids))
        return found

    try:
        found = await read(request, facts)
    except PluginError as exc:
        return problem(404, exc.reason, exc.message)
    return render(request, ctx, "admin/event_endpoint.html", nav="events", labels=LABELS, form=form,
                  statuses=[(s, s.capitalize()) for s in endpoints.DELIVERY_STATUSES],
                  query={k: form.get(k) for k in ("status",) if form.get(k)},
                  status_code=status_code if form.ok else 422, **found, **values)  # fmt: skip


def _back(ctx: AdminContext, endpoint_id: int | None = None) -> Response:
    return RedirectResponse(ctx.url(PATH if endpoint_id is None else f"{PATH}/{endpoint_id}"), status_code=303)


async def _change(request: Request, ctx: AdminContext, action: str, **change: Any) -> Response:
    endpoint_id = int(request.path_params["endpoint_id"])
    try:
        await act(request, ctx,
                  lambda s: endpoints.update(s, shop_id=ctx.shop_id, endpoint_id=endpoint_id, now=utcnow(), **change),
                  action=action, subject=f"event_endpoint:{endpoint_id}", details=change)  # fmt: skip
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message)
    return _back(ctx, endpoint_id)


async def enable(request: Request, ctx: AdminContext, form: Form) -> Response:
    return await _change(request, ctx, "event_endpoint.enabled", enabled=True)


async def disable(request: Request, ctx: AdminContext, form: Form) -> Response:
    return await _change(request, ctx, "event_endpoint.disabled", enabled=False)


async def send_test(request: Request, ctx: AdminContext, form: Form) -> Response:
    endpoint_id = int(request.path_params["endpoint_id"])
    try:
        await act(request, ctx, lambda s: endpoints.send_test(s, shop_id=ctx.shop_id, endpoint_id=endpoint_id, now=utcnow()),
                  action="event_endpoint.test_sent", subject=f"event_endpoint:{endpoint_id}")  # fmt: skip
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message)
    return _back(ctx, endpoint_id)


async def rotate(request: Request, ctx: AdminContext, form: Form) -> Response:
    endpoint_id, settings = int(request.path_params["endpoint_id"]), _settings(request)
    try:
        secret = await act(
            request, ctx,
            lambda s: endpoints.rotate_secret(s, settings, shop_id=ctx.shop_id, endpoint_id=endpoint_id, now=utcnow()),
            action="event_endpoint.secret_rotated", subject=f"event_endpoint:{endpoint_id}",
        )  # fmt: skip
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message)
    return await _detail_page(request, ctx, new_secret=secret)


async def delete(request: Request, ctx: AdminContext, form: Form) -> Response:
    endpoint_id = int(request.path_params["endpoint_id"])
    try:
        await act(request, ctx, lambda s: endpoints.delete(s, shop_id=ctx.shop_id, endpoint_id=endpoint_id, now=utcnow()),
                  action="event_endpoint.deleted", subject=f"event_endpoint:{endpoint_id}")  # fmt: skip
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message)
    return _back(ctx)


async def resend(request: Request, ctx: AdminContext, form: Form) -> Response:
    delivery_id = int(request.path_params["delivery_id"])

    def work(session: Session) -> tuple[int, int]:
        row = endpoints.get_delivery(session, shop_id=ctx.shop_id, delivery_id=delivery_id)
        return row.delivery.endpoint_id, endpoints.resend(session, shop_id=ctx.shop_id, delivery_id=delivery_id, now=utcnow())

    try:
        endpoint_id, _ = await act(request, ctx, work, action="event_delivery.resent", subject=f"event_delivery:{delivery_id}")
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message)
    return _back(ctx, endpoint_id)


async def save_channels(request: Request, ctx: AdminContext, form: Form) -> Response:
    settings = _settings(request)
    port_text = form.get("smtp_port").strip()
    if port_text and not port_text.isdigit():
        form.errors["smtp_port"] = "smtp_port must be a number, e.g. 587"
        return await _list_page(request, ctx, channels_form=form, status_code=422)
    try:
        await channels.check_smtp_host(form.get("smtp_host").strip() or None, int(port_text) if port_text else None,
                                       _policy(request))  # fmt: skip
        await act(
            request, ctx,
            lambda s: channels.save_channels(
                s, settings, shop_id=ctx.shop_id, email_to=form.get("email_to"), email_from=form.get("email_from"),
                smtp_host=form.get("smtp_host"), smtp_port=int(port_text) if port_text else None,
                smtp_security=form.get("smtp_security", "starttls"), smtp_user=form.get("smtp_user"),
                # an empty password or Slack field keeps what is stored; the "remove" boxes clear it
                smtp_password="" if form.get("remove_password") else (form.get("smtp_password") or None),
                slack_url="" if form.get("remove_slack") else (form.get("slack_url") or None), now=utcnow(),
            ),
            action="alert_channels.changed", subject=f"shop:{ctx.shop_id}", details={"email_to": form.get("email_to")},
        )  # fmt: skip
    except PluginError as exc:
        return await _list_page(request, ctx, channels_form=form.fail(exc), status_code=422)
    return RedirectResponse(ctx.url(PATH) + "#channels", status_code=303)


async def test_channels(request: Request, ctx: AdminContext, form: Form) -> Response:
    job = await act(request, ctx, lambda s: channels.send_test_alert(s, shop_id=ctx.shop_id, now=utcnow()),
                    action="alert_channels.test_sent", subject=f"shop:{ctx.shop_id}")  # fmt: skip
    return await _list_page(request, ctx, channels_tested=job is not None)


routes = [
    page("/events", show, name="admin_events"),
    page("/events/new", post=create, owner_only=True),
    page("/events/channels", post=save_channels, owner_only=True),
    page("/events/channels/test", post=test_channels, owner_only=True),
    page("/events/deliveries/{delivery_id:int}/resend", post=resend, owner_only=True),
    page("/events/{endpoint_id:int}", detail),
    page("/events/{endpoint_id:int}/enable", post=enable, owner_only=True),
    page("/events/{endpoint_id:int}/disable", post=disable, owner_only=True),
    page("/events/{endpoint_id:int}/test", post=send_test, owner_only=True),
    page("/events/{endpoint_id:int}/rotate", post=rotate, owner_only=True),
    page("/events/{endpoint_id:int}/delete", post=delete, owner_only=True),
]
