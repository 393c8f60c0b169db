"""The event endpoints API: create (secret shown once), URL checks, rotation, enable again,
deliveries with attempts, test events, tenancy, refusals with reasons; and each cause writing
its event through the API (redeem, roll back, claim, void, pause, low pool)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, update
from sqlmodel import col, select
from starlette.applications import Starlette

from connectors.egress import AddressPolicy
from plugin.store import caches
from plugin.store.db import session_scope
from plugin.store.models import AuditEvent, EventDelivery, EventEndpoint, EventMessage, Job, utcnow
from tests.web.conftest import Api, make_campaign, rules

PUBLIC = {"hooks.example.com": ["93.184.215.14"], "mixed.example.com": ["93.184.215.14", "10.0.0.8"]}
PRIVATE = {"intranet.example.com": ["10.1.2.3"], "meta.example.com": ["169.254.169.254"], "v6.example.com": ["::1"]}


async def fake_resolver(host: str, port: int) -> list[str]:
    found = {**PUBLIC, **PRIVATE}.get(host)
    if found is None:
        raise OSError("no such host")
    return found


@pytest.fixture(autouse=True)
def resolver(app: Starlette) -> None:
    app.state.store_policy = AddressPolicy(resolve=fake_resolver)
    caches.bump()


def create(api: Api, **body: Any) -> Any:
    return api.post("/event-endpoints", {"url": "https://hooks.example.com/c", "event_types": ["pool.low"], **body})


def messages(engine: Engine) -> list[EventMessage]:
    with session_scope(engine) as session:
        return list(session.exec(select(EventMessage).order_by(col(EventMessage.id))).all())


def test_create_shows_the_secret_once_and_lists_without_it(api: Api, engine: Engine) -> None:
    made = create(api, event_types=["redemption.created", "pool.low", "pool.low"], description=" ops ")
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["secret"].startswith("whsec_") and body["enabled"] is True
    assert body["event_types"] == ["redemption.created", "pool.low"] and body["description"] == "ops"
    listed = api.get("/event-endpoints").json()["data"]
    assert [e["id"] for e in listed] == [body["id"]] and "secret" not in listed[0]
    assert "secret" not in api.get(f"/event-endpoints/{body['id']}").json()
    rotated = api.post(f"/event-endpoints/{body['id']}/rotate-secret").json()["secret"]
    assert rotated.startswith("whsec_") and rotated != body["secret"]
    with session_scope(engine) as session:
        trail = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
    subject = f"event_endpoint:{body['id']}"
    assert [(a.action, a.subject) for a in trail] == [
        ("event_endpoint.created", subject),
        ("event_endpoint.secret_rotated", subject),
    ]
    assert all(a.actor.startswith("api-key:") for a in trail) and body["secret"] not in str([a.details for a in trail])


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/c", "insecure_url"),
        ("ftp://hooks.example.com/c", "insecure_url"),
        ("https://user:pw@hooks.example.com/c", "invalid_url"),
        ("https://hooks.example.com:99999/c", "invalid_url"),
        ("https:///nohost", "invalid_url"),
        ("https://intranet.example.com/c", "private_address"),
        ("https://meta.example.com/latest", "private_address"),
        ("https://v6.example.com/", "private_address"),
        ("https://mixed.example.com/", "private_address"),  # one private answer among public ones
        ("https://127.0.0.1/", "private_address"),
        ("https://[::ffff:10.0.0.1]/", "private_address"),
        ("https://nowhere.example.com/", "unresolvable_host"),
        ("https://hooks.example.com/" + "a" * 2000, "invalid_url"),
    ],
)
def test_endpoint_urls_pass_the_store_address_checks(api: Api, url: str, reason: str) -> None:
    refused = create(api, url=url)
    assert refused.status_code == 422 and refused.json()["reason"] in (reason, "invalid_input"), refused.text
    if len(url) <= 2000:
        assert refused.json()["reason"] == reason
    assert api.get("/event-endpoints").json()["data"] == []


def test_private_addresses_pass_with_the_developer_opt_in_but_never_the_metadata_service(app: Starlette, api: Api) -> None:
    app.state.store_policy = AddressPolicy(allow_private=True, resolve=fake_resolver)
    assert create(api, url="https://intranet.example.com/c").status_code == 201
    assert create(api, url="https://meta.example.com/c").json()["reason"] == "private_address"
    assert create(api, url="http://intranet.example.com/c").json()["reason"] == "insecure_url"  # https still


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://hooks.example.com/c", "event_types": []},
        {"url": "https://hooks.example.com/c", "event_types": ["order.created"]},
        {"url": "https://hooks.example.com/c"},
        {"event_types": ["pool.low"]},
        {"url": "https://hooks.example.com/c", "event_types": ["pool.low"], "secret": "mine"},
        {"url": "https://hooks.example.com/c", "event_types": ["pool.low"], "description": "x" * 201},
    ],
)
def test_bad_bodies_are_refused_with_a_reason(api: Api, body: dict[str, Any]) -> None:
    refused = api.post("/event-endpoints", body)
    assert refused.status_code == 422 and refused.json()["reason"], refused.text


def test_change_disable_and_enable_again(api: Api, engine: Engine) -> None:
    endpoint_id = create(api).json()["id"]
    changed = api.patch(
        f"/event-endpoints/{endpoint_id}", {"event_types": ["code.voided"], "url": "https://hooks.example.com/v2"}
    )
    assert changed.status_code == 200 and changed.json()["event_types"] == ["code.voided"]
    assert api.patch(f"/event-endpoints/{endpoint_id}", {"url": "https://intranet.example.com/"}).json()["reason"] == (
        "private_address"
    )
    with session_scope(engine) as session:  # as the delivery job leaves it after too many failures
        session.execute(update(EventEndpoint).values(enabled=False, disabled_reason="disabled: its last 30 attempts failed",
                                                     consecutive_failures=30, failing_since=utcnow()))  # fmt: skip
    caches.bump()
    shown = api.get(f"/event-endpoints/{endpoint_id}").json()
    assert shown["enabled"] is False and shown["disabled_reason"].startswith("disabled: its last 30")
    again = api.patch(f"/event-endpoints/{endpoint_id}", {"enabled": True}).json()
    assert (again["enabled"], again["disabled_reason"], again["consecutive_failures"], again["failing_since"]) == (
        True, None, 0, None,
    )  # fmt: skip


def test_test_event_deliveries_and_resend(api: Api, engine: Engine) -> None:
    endpoint_id = create(api).json()["id"]
    queued = api.post(f"/event-endpoints/{endpoint_id}/test")
    assert queued.status_code == 202
    delivery_id = queued.json()["delivery_id"]
    page = api.get(f"/event-endpoints/{endpoint_id}/deliveries").json()
    assert [d["id"] for d in page["data"]] == [delivery_id] and page["next_cursor"] is None
    shown = api.get(f"/event-deliveries/{delivery_id}").json()
    assert shown["type"] == "endpoint.test" and shown["status"] == "pending" and shown["attempt_log"] == []
    assert shown["msg_id"].startswith("msg_")
    refused = api.post(f"/event-deliveries/{delivery_id}/resend")
    assert refused.status_code == 422 and refused.json()["reason"] == "delivery_not_failed"
    with session_scope(engine) as session:
        session.execute(update(EventDelivery).values(status="failed"))
    again = api.post(f"/event-deliveries/{delivery_id}/resend").json()["delivery_id"]
    assert api.get(f"/event-deliveries/{again}").json()["msg_id"] == shown["msg_id"]  # receivers dedupe it
    assert api.get(f"/event-endpoints/{endpoint_id}/deliveries?status=bogus").json()["reason"] == "invalid_filter"
    assert api.get(f"/event-endpoints/{endpoint_id}/deliveries?limit=0").json()["reason"] == "invalid_limit"
    assert api.get(f"/event-endpoints/{endpoint_id}/deliveries?cursor=zz").json()["reason"] == "invalid_cursor"
    assert api.delete(f"/event-endpoints/{endpoint_id}").status_code == 204
    assert api.get(f"/event-deliveries/{delivery_id}").json()["reason"] == "delivery_not_found"


def test_another_shop_can_neither_see_nor_change_an_endpoint(api: Api, other_api: Api) -> None:
    endpoint_id = create(api).json()["id"]
    delivery_id = api.post(f"/event-endpoints/{endpoint_id}/test").json()["delivery_id"]
    assert other_api.get("/event-endpoints").json()["data"] == []
    for answer in (
        other_api.get(f"/event-endpoints/{endpoint_id}"),
        other_api.patch(f"/event-endpoints/{endpoint_id}", {"enabled": False}),
        other_api.post(f"/event-endpoints/{endpoint_id}/rotate-secret"),
        other_api.post(f"/event-endpoints/{endpoint_id}/test"),
        other_api.get(f"/event-endpoints/{endpoint_id}/deliveries"),
        other_api.delete(f"/event-endpoints/{endpoint_id}"),
    ):
        assert answer.status_code == 404 and answer.json()["reason"] == "endpoint_not_found"
    for answer in (other_api.get(f"/event-deliveries/{delivery_id}"), other_api.post(f"/event-deliveries/{delivery_id}/resend")):
        assert answer.status_code == 404 and answer.json()["reason"] == "delivery_not_found"
    assert api.get(f"/event-endpoints/{endpoint_id}").json()["enabled"] is True


def test_a_checkout_key_cannot_manage_endpoints(engine: Engine, api: Api, shop_id: int) -> None:
    from tests.web.conftest import make_key

    checkout = Api(api.client, make_key(engine, shop_id, scopes=("checkout",)))
    assert checkout.get("/event-endpoints").status_code == 403


def test_every_cause_writes_its_event_with_its_change(api: Api, engine: Engine, shop_id: int) -> None:
    all_types = ["redemption.created", "redemption.rolled_back", "code.assigned", "code.voided", "campaign.paused", "pool.low"]
    assert create(api, event_types=all_types).status_code == 201
    campaign_id, (first, second, *_) = make_campaign(engine, shop_id, rules(), codes=5)
    assert api.client.put(f"/api/v1/campaigns/{campaign_id}/pool-policy", headers=api.headers,
                          json={"alert_below": 10}).status_code == 200  # fmt: skip
    redemption = api.redeem(first, "order-1").json()
    assert api.redeem(first, "order-1").status_code == 200  # a repeat writes nothing new
    api.post(f"/redemptions/{redemption['id']}/rollback", {"reason": "refunded"})
    claimed = api.post(f"/campaigns/{campaign_id}/claims", {"email": "ann@example.com"}).json()["code"]
    api.post(f"/campaigns/{campaign_id}/claims", {"email": "ann@example.com"})  # the same claim again: no event
    api.post(f"/codes/{second}/void", {"reason": "leaked"})
    api.post(f"/campaigns/{campaign_id}/pause")
    api.post(f"/campaigns/{campaign_id}/pause")  # already paused: no event
    found = [(m.type, m.payload["data"]) for m in messages(engine)]
    assert [t for t, _ in found] == [
        "redemption.created", "redemption.rolled_back", "pool.low", "code.assigned", "code.voided", "campaign.paused",
    ]  # fmt: skip
    data = dict(found)
    assert data["redemption.created"]["code"] == first and data["redemption.created"]["order_id"] == "order-1"
    assert data["redemption.created"]["amount"] == 500 and data["redemption.created"]["currency"] == "GBP"
    assert data["redemption.rolled_back"]["redemption_id"] == redemption["id"]
    assert data["code.assigned"] == {"campaign_id": campaign_id, "code": claimed, "recipient": "ann@example.com",
                                     "partner_id": None}  # fmt: skip
    assert data["code.voided"] == {"campaign_id": campaign_id, "codes": [second], "reason": "leaked"}
    assert data["pool.low"]["threshold"] == 10
    with session_scope(engine) as session:
        assert len(session.exec(select(Job).where(col(Job.kind) == "events.deliver")).all()) == 6


def test_a_refused_redemption_writes_no_event(api: Api, engine: Engine, shop_id: int) -> None:
    assert create(api, event_types=["redemption.created"]).status_code == 201
    _, (code,) = make_campaign(engine, shop_id, rules(basket={"minimum_subtotal": 100_000}), codes=1)
    assert api.redeem(code, "order-1").status_code == 409  # the rule refuses: nothing committed, no event
    assert messages(engine) == []
