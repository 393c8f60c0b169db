"""The Events admin page: endpoints listed and added (the secret shown once, URL checks and
errors next to their field), an endpoint's deliveries with their attempts, test event, enable
again, rotate, delete, resend; alert channels; owner-only changes; another shop sees nothing."""

from __future__ import annotations

import re

import httpx
import respx
from sqlalchemy import Engine, update
from sqlmodel import select
from starlette.applications import Starlette

from connectors.egress import AddressPolicy
from plugin.events import delivery, endpoints
from plugin.settings import Settings
from plugin.store import caches
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import AuditEvent, EventDelivery, EventEndpoint, utcnow
from tests.web.admin.conftest import add_shop, form_token, set_up_owner
from tests.web.admin.test_embedded import signed_payload

URL = "https://hooks.example.com/couponry"


async def resolver(host: str, port: int) -> list[str]:
    return {"hooks.example.com": ["93.184.215.14"], "intranet.example.com": ["10.0.0.5"]}.get(host) or []


def _owner(web, admin_app: Starlette, admin_settings: Settings, shop_id: int) -> str:  # type: ignore[no-untyped-def]
    admin_app.state.store_policy = AddressPolicy(resolve=resolver)
    caches.bump()
    set_up_owner(web, admin_settings, shop_id)
    return form_token(web.get("/admin/events").text)


def _add(web, token: str, url: str = URL, types: tuple[str, ...] = ("pool.low", "code.voided")) -> httpx.Response:  # type: ignore[no-untyped-def]
    return web.post("/admin/events/new", data={"csrf_token": token, "url": url, "description": "ops", "event_types": list(types)})


def test_an_endpoint_is_added_with_its_secret_shown_once(web, admin_app: Starlette, admin_settings: Settings, engine: Engine,
                                                        shop_id: int) -> None:  # fmt: skip
    token = _owner(web, admin_app, admin_settings, shop_id)
    page = web.get("/admin/events")
    assert page.status_code == 200 and 'href="/admin/events" aria-current="page"' in page.text and "No endpoints yet" in page.text
    made = _add(web, token)
    assert made.status_code == 201
    secret = re.search(r'id="new-secret-value" class="secret" readonly value="(whsec_[^"]+)"', made.text)
    assert secret
    listed = web.get("/admin/events").text
    assert URL in listed and secret[1] not in listed and "code.voided, pool.low" in listed
    with session_scope(engine) as session:
        (audit,) = session.exec(select(AuditEvent).where(AuditEvent.action == "event_endpoint.created")).all()
        assert audit.actor.startswith("user:") and secret[1] not in str(audit.details)


def test_refusals_show_next_to_their_field(web, admin_app: Starlette, admin_settings: Settings, shop_id: int) -> None:
    token = _owner(web, admin_app, admin_settings, shop_id)
    insecure = _add(web, token, url="http://hooks.example.com/x")
    assert insecure.status_code == 422 and re.search(r'id="e-url" role="alert">url must be an https', insecure.text)
    private = _add(web, token, url="https://intranet.example.com/x")
    assert private.status_code == 422 and re.search(r'id="e-url" role="alert">intranet.example.com is not a public', private.text)
    none = _add(web, token, types=())
    assert none.status_code == 422 and 'id="e-event_types" role="alert">choose at least one' in none.text
    bad = web.post("/admin/events/channels", data={"csrf_token": token, "slack_url": "https://evil.example.com/x"})
    assert bad.status_code == 422 and 'id="e-slack_url" role="alert">slack_url must be a Slack' in bad.text
    port = web.post("/admin/events/channels", data={"csrf_token": token, "smtp_port": "abc"})
    assert port.status_code == 422 and 'id="e-smtp_port" role="alert">' in port.text
    assert web.post("/admin/events/new", data={"url": URL, "event_types": ["pool.low"]}).status_code == 403  # no CSRF token


async def _deliver_once(engine: Engine, settings: Settings, answer: httpx.Response) -> None:
    from plugin.jobs.worker import Worker

    with respx.mock() as mock:
        mock.post(URL).mock(return_value=answer)
        async with httpx.AsyncClient() as http:
            await Worker(JobContext(engine, settings, http), handlers=delivery.HANDLERS, sweeps=()).run_once()


def test_deliveries_show_their_attempts_and_a_failed_one_can_be_sent_again(
    web, admin_app: Starlette, admin_settings: Settings, engine: Engine, shop_id: int
) -> None:
    import anyio

    token = _owner(web, admin_app, admin_settings, shop_id)
    _add(web, token)
    with session_scope(engine) as session:
        (endpoint,) = session.exec(select(EventEndpoint)).all()
    assert web.post(f"/admin/events/{endpoint.id}/test", data={"csrf_token": token}).status_code == 303
    anyio.run(_deliver_once, engine, admin_settings, httpx.Response(500, text="receiver exploded"))
    page = web.get(f"/admin/events/{endpoint.id}")
    assert page.status_code == 200 and "endpoint.test" in page.text
    assert "HTTP 500" in page.text and "receiver exploded" in page.text and "the endpoint answered HTTP 500" in page.text
    with session_scope(engine) as session:
        session.execute(update(EventDelivery).values(status="failed"))
    (delivery_id,) = re.findall(r'id="delivery-(\d+)"', page.text)
    again = web.post(f"/admin/events/deliveries/{delivery_id}/resend", data={"csrf_token": token})
    assert again.status_code == 303
    assert len(re.findall(r'id="delivery-\d+"', web.get(f"/admin/events/{endpoint.id}").text)) == 2
    assert web.get(f"/admin/events/{endpoint.id}?status=bogus").status_code == 422


def test_disable_enable_rotate_and_delete(web, admin_app: Starlette, admin_settings: Settings, engine: Engine,
                                         shop_id: int) -> None:  # fmt: skip
    token = _owner(web, admin_app, admin_settings, shop_id)
    _add(web, token)
    with session_scope(engine) as session:
        (endpoint,) = session.exec(select(EventEndpoint)).all()
    base = f"/admin/events/{endpoint.id}"
    assert web.post(base + "/disable", data={"csrf_token": token}).status_code == 303
    assert "disabled by hand" in web.get(base).text and "Enable again" in web.get(base).text
    assert web.post(base + "/enable", data={"csrf_token": token}).status_code == 303
    assert 'id="endpoint-state"><span class="ok">enabled' in web.get(base).text
    rotated = web.post(base + "/rotate", data={"csrf_token": token})
    new = re.search(r'id="new-secret-value" class="secret" readonly value="(whsec_[^"]+)"', rotated.text)
    assert new and endpoints.secret_of(admin_settings, _endpoint(engine, endpoint.id)) == new[1]
    assert web.post(base + "/delete", data={"csrf_token": token}).status_code == 303
    assert web.get(base).status_code == 404


def _endpoint(engine: Engine, endpoint_id: int | None) -> EventEndpoint:
    with session_scope(engine) as session:
        return session.get_one(EventEndpoint, endpoint_id)


def test_alert_channels_are_saved_and_secrets_never_shown(web, admin_app: Starlette, admin_settings: Settings,
                                                         shop_id: int) -> None:  # fmt: skip
    token = _owner(web, admin_app, admin_settings, shop_id)
    slack = "https://hooks.slack.com/services/T1/B2/SECRETPART"
    data = {"csrf_token": token, "email_to": "ops@shop.example", "email_from": "alerts@shop.example",
            "smtp_host": "hooks.example.com", "smtp_port": "587", "smtp_security": "starttls", "smtp_user": "u",
            "smtp_password": "pw-SECRET", "slack_url": slack}  # fmt: skip
    saved = web.post("/admin/events/channels", data=data)
    assert saved.status_code == 303
    page = web.get("/admin/events").text
    assert 'value="ops@shop.example"' in page and "SECRETPART" not in page and "pw-SECRET" not in page
    assert page.count("Set; leave empty to keep it.") == 2
    tested = web.post("/admin/events/channels/test", data={"csrf_token": token})
    assert 'id="channels-tested">A test alert is on its way.' in tested.text


def test_staff_see_the_page_but_change_nothing_and_other_shops_see_nothing(
    web, admin_app: Starlette, admin_settings: Settings, engine: Engine, shop_id: int
) -> None:
    with session_scope(engine) as session:
        created = endpoints.create(session, admin_settings, shop_id=shop_id, url=URL, event_types=["pool.low"], now=utcnow())
    add_shop(engine, "bigcommerce", "abc123")
    load = web.get("/install/bigcommerce/load", params={"signed_payload_jwt": signed_payload("abc123", user_id=8, owner_id=7)})
    t = re.search(r"t=([^&]+)", load.headers["location"])
    assert t
    page = web.get("/admin/events", params={"t": t[1]})
    assert page.status_code == 200 and "Add an endpoint" not in page.text and URL not in page.text  # another shop's
    assert web.get(f"/admin/events/{created.endpoint.id}", params={"t": t[1]}).status_code == 404
    token = re.search(r'data-csrf="([^"]+)"', page.text)
    assert token
    refused = web.post(
        "/admin/events/new", params={"t": t[1]}, data={"csrf_token": token[1], "url": URL, "event_types": ["pool.low"]}
    )
    assert refused.status_code == 403
