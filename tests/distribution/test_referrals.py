"""Referral loops through the real webhook path (signed sandbox deliveries): a friend's first
order rewards the referrer once, never their own order (by customer id, email or shipping
address), never a friend's second order, and not twice when deliveries repeat; the reward is a
fresh unique code, pushed through the provider. Deliveries go through the app's batched ingest
and, where it matters, through the one-by-one processor too."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connectors.base import ShippingAddress
from plugin.distribution import referrals
from plugin.errors import InvalidInput
from plugin.orders import addresses, privacy, webhooks
from plugin.orders.orders import Processor
from plugin.settings import Settings
from plugin.shops import tokens
from plugin.store import caches
from plugin.store.db import session_scope
from plugin.store.models import AuditEvent, Code, Job, RecipientDelivery, Redemption, Referral, ReferrerAddress, utcnow
from tests.ingest import campaign_codes, make_campaign, running_app, sandbox_settings
from tests.orders.test_webhooks import headers, order_body

pytestmark = pytest.mark.anyio
SHAREABLE: dict[str, Any] = {"discount": {"type": "percentage", "percent": "15"}, "usage": {"uses_per_code": None}}


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    """PostgreSQL tests share one engine and reuse ids after each truncation: start each test
    without the previous test's cached rows (a real database never reuses an id)."""
    caches.bump()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Path = Literal["batched", "single"]
# the sandbox's order payload names address fields as Shopify does
HOME = {"address1": "12 Main Street", "address2": "Apt 4", "zip": "SW1A 1AA", "country_code": "GB"}
HOME_AGAIN = {"address1": "12, MAIN STREET", "address2": "apt. 4", "zip": "sw1a1aa", "country_code": "gb"}
ELSEWHERE = {"address1": "9 High Road", "address2": "", "zip": "E1 6AN", "country_code": "GB"}


def body(order_id: int, code: str, *, customer_id: str | None, email: str, ship_to: dict[str, str] | None = None) -> bytes:
    data = json.loads(order_body(order_id, [code], email=email))
    data["customer_id"] = customer_id
    if ship_to is not None:
        data["shipping_address"] = ship_to
    return json.dumps(data).encode()


def fingerprint(settings: Settings, ship_to: dict[str, str]) -> str:
    address = ShippingAddress(ship_to["address1"], ship_to["address2"], ship_to["zip"], ship_to["country_code"])
    key = addresses.fingerprint(tokens.address_key(settings), address)
    assert key is not None
    return key


async def deliver(engine: Engine, settings: Settings, shop_id: int, path: Path, deliveries: list[tuple[bytes, str, str]]) -> None:
    """Send (payload, delivery id, topic)s through the app's batched ingest, or store each and
    run the one-by-one processor on it (cancellations, thin webhooks and fallbacks go that way)."""
    if path == "batched":
        async with running_app(settings, engine) as (_, client):
            for payload, delivery_id, topic in deliveries:
                await send(client, settings, payload, delivery_id, topic)
        return
    async with httpx.AsyncClient() as http:
        processor = Processor(engine, settings, http)
        for payload, delivery_id, topic in deliveries:
            with session_scope(engine) as session:
                event_id, _ = webhooks.store_delivery(
                    session,
                    platform="sandbox",
                    delivery_id=delivery_id,
                    topic=topic,
                    shop_id=shop_id,
                    payload=payload.decode(),
                    headers=headers(settings, payload, delivery_id=delivery_id, topic=topic),
                )
            assert await processor.process(event_id) in ("processed", None)  # None: a repeat, done already


async def send(
    client: httpx.AsyncClient, settings: Settings, payload: bytes, delivery_id: str, topic: str = "orders/create"
) -> None:
    response = await client.post(
        "/webhooks/sandbox", content=payload, headers=headers(settings, payload, delivery_id=delivery_id, topic=topic)
    )
    assert response.status_code == 200


def program(engine: Engine, shop_id: int, provider: str | None = None) -> tuple[int, int]:
    referral_campaign = make_campaign(engine, shop_id, count=10, rules=SHAREABLE, name="Refer a friend")
    reward_campaign = make_campaign(engine, shop_id, name="Referral rewards")
    with session_scope(engine) as session:
        referrals.create_program(
            session, shop_id=shop_id, campaign_id=referral_campaign, reward_campaign_id=reward_campaign, provider=provider
        )
    return referral_campaign, reward_campaign


def own_code(engine: Engine, shop_id: int, campaign_id: int, referrer: str, address_key: str | None = None) -> str:
    with session_scope(engine) as session:
        return referrals.referral_code(
            session, shop_id=shop_id, campaign_id=campaign_id, referrer=referrer, now=utcnow(), address_key=address_key
        ).code


def rows(engine: Engine, model: Any) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(model)).all())


async def test_friends_first_orders_reward_once_even_when_deliveries_repeat(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings)
    campaign_id, reward_campaign = program(engine, shop_id)
    code = own_code(engine, shop_id, campaign_id, "id:ref-1")
    assert own_code(engine, shop_id, campaign_id, "id:ref-1") == code  # one shareable code per referrer
    first = body(2001, code, customer_id="friend-1", email="friend1@example.com")
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, first, "create-2001")
        await send(client, settings, first, "create-2001")  # the same delivery again
        await send(client, settings, first, "paid-2001", topic="orders/paid")  # the same order, another topic
        await send(client, settings, body(2002, code, customer_id="friend-1", email="friend1@example.com"), "create-2002")
        # the same friend by email only, on a guest order: still not a first order
        await send(client, settings, body(2003, code, customer_id=None, email="Friend1@Example.com"), "create-2003")
        await send(client, settings, body(2004, code, customer_id="friend-2", email="friend2@example.com"), "create-2004")
    assert sorted(r.order_id for r in rows(engine, Redemption)) == ["2001", "2002", "2003", "2004"]  # friends get the discount
    found = sorted(rows(engine, Referral), key=lambda r: r.order_id)
    assert [(r.order_id, r.referrer, r.friend) for r in found] == [
        ("2001", "id:ref-1", "id:friend-1"),
        ("2004", "id:ref-1", "id:friend-2"),
    ]
    with Session(engine) as session:
        rewards = session.exec(select(Code).where(col(Code.campaign_id) == reward_campaign)).all()
    assert len(rewards) == 2 and len({c.code for c in rewards}) == 2  # fresh, unique codes
    assert {c.id for c in rewards} == {r.reward_code_id for r in found}
    assert all(c.recipient and c.recipient.startswith("id:ref-1#referral:") and c.assigned_at for c in rewards)
    with session_scope(engine) as session:
        assert len(referrals.rewards_of(session, shop_id=shop_id, campaign_id=campaign_id, referrer="id:ref-1")) == 2


@pytest.mark.parametrize("path", ["batched", "single"])
@pytest.mark.parametrize(
    ("referrer", "customer_id", "email"), [("id:c9", "c9", "other@example.com"), ("ann@example.com", "c9", "ANN@example.com")]
)
async def test_self_referral_is_refused(
    engine: Engine, shop_id: int, settings: Settings, referrer: str, customer_id: str, email: str, path: Path
) -> None:
    settings = sandbox_settings(settings)
    campaign_id, _ = program(engine, shop_id)
    code = own_code(engine, shop_id, campaign_id, referrer)
    await deliver(
        engine,
        settings,
        shop_id,
        path,
        [(body(3001, code, customer_id=customer_id, email=email), "create-3001", "orders/create")],
    )
    assert rows(engine, Referral) == []
    (redemption,) = rows(engine, Redemption)
    assert redemption.flagged_reason == "self_referral"
    assert "referral.self_refused" in {a.action for a in rows(engine, AuditEvent)}


async def test_the_reward_is_pushed_to_the_referrer(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id, reward_campaign = program(engine, shop_id, provider="twilio")
    code = own_code(engine, shop_id, campaign_id, "+15555550100")
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, body(4001, code, customer_id="f1", email="f1@example.com"), "create-4001")
    (referral,) = rows(engine, Referral)
    (delivery,) = rows(engine, RecipientDelivery)
    assert (delivery.code_id, delivery.provider, delivery.status, delivery.campaign_id) == (
        referral.reward_code_id,
        "twilio",
        "queued",
        reward_campaign,
    )
    assert "distribution.push" in {j.kind for j in rows(engine, Job)}


@pytest.mark.parametrize("path", ["batched", "single"])
@pytest.mark.parametrize("referrer", ["id:ref-1", "+15555550100"])  # a phone: only the addresses they gave
async def test_a_friends_order_to_the_address_the_referrer_gave_is_a_self_referral(
    engine: Engine, shop_id: int, settings: Settings, referrer: str, path: Path
) -> None:
    settings = sandbox_settings(settings)
    campaign_id, _ = program(engine, shop_id)
    code = own_code(engine, shop_id, campaign_id, referrer, address_key=fingerprint(settings, HOME))
    assert own_code(engine, shop_id, campaign_id, referrer, address_key=fingerprint(settings, HOME)) == code
    assert len(rows(engine, ReferrerAddress)) == 1  # remembered once, as a fingerprint only
    own = body(5001, code, customer_id="someone-new", email="new@example.com", ship_to=HOME_AGAIN)
    friend = body(5002, code, customer_id="friend-2", email="friend2@example.com", ship_to=ELSEWHERE)
    await deliver(engine, settings, shop_id, path, [
        (own, "create-5001", "orders/create"),
        (own, "create-5001", "orders/create"),  # repeated
        (friend, "create-5002", "orders/create"),
        (friend, "paid-5002", "orders/paid"),  # the same order again, another topic
    ])  # fmt: skip
    assert [(r.order_id, r.friend) for r in rows(engine, Referral)] == [("5002", "id:friend-2")]  # exactly once
    by_order = {r.order_id: r for r in rows(engine, Redemption)}
    assert by_order["5001"].flagged_reason == "self_referral" and by_order["5002"].flagged_reason is None
    assert by_order["5001"].address_key == fingerprint(settings, HOME)  # a fingerprint, never the address
    refused = [a for a in rows(engine, AuditEvent) if a.action == "referral.self_refused"]
    assert [(a.details["order_id"], a.details["matched"]) for a in refused] == [("5001", "address")]


@pytest.mark.parametrize("path", ["batched", "single"])
async def test_the_referrers_own_orders_tell_their_address(engine: Engine, shop_id: int, settings: Settings, path: Path) -> None:
    settings = sandbox_settings(settings)
    campaign_id, _ = program(engine, shop_id)
    code = own_code(engine, shop_id, campaign_id, "ref@example.com")  # no address given
    newsletter = make_campaign(engine, shop_id, count=1, name="Newsletter")
    (plain,) = campaign_codes(engine, newsletter)
    await deliver(engine, settings, shop_id, path, [
        # the referrer's own order with another code of the shop, shipped home
        (body(6001, plain.code, customer_id="c-ref", email="Ref@Example.com", ship_to=HOME), "create-6001", "orders/create"),
        # a "friend" account shipping to the same home, and a real friend elsewhere
        (body(6002, code, customer_id="alias", email="alias@example.com", ship_to=HOME_AGAIN), "create-6002", "orders/create"),
        (body(6003, code, customer_id="friend", email="friend@example.com", ship_to=ELSEWHERE), "create-6003", "orders/create"),
        (body(6004, code, customer_id="nowhere", email="nowhere@example.com"), "create-6004", "orders/create"),
    ])  # fmt: skip
    assert sorted(r.order_id for r in rows(engine, Referral)) == ["6003", "6004"]  # no address: no address match
    flagged = {r.order_id: r.flagged_reason for r in rows(engine, Redemption)}
    assert flagged == {"6001": None, "6002": "self_referral", "6003": None, "6004": None}


async def test_a_customer_redaction_forgets_their_address_fingerprints(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id, _ = program(engine, shop_id)
    own_code(engine, shop_id, campaign_id, "id:ref-1", address_key=fingerprint(settings, HOME))
    (plain,) = campaign_codes(engine, make_campaign(engine, shop_id, count=1, name="Newsletter"))
    own_order = body(7001, plain.code, customer_id="ref-1", email="ref@example.com", ship_to=HOME)
    await deliver(engine, settings, shop_id, "single", [(own_order, "create-7001", "orders/create")])
    assert [r.address_key for r in rows(engine, Redemption)] == [fingerprint(settings, HOME)]
    with session_scope(engine) as session:
        counts = privacy.redact_customer(session, shop_id, email=None, customer_id="ref-1", actor="test")
    assert counts["referrer_addresses"] == 1 and rows(engine, ReferrerAddress) == []
    assert [r.address_key for r in rows(engine, Redemption)] == [None]


async def referred(engine: Engine, shop_id: int, settings: Settings) -> tuple[int, int]:
    """A program where id:ref-1 (who gave their home address) and id:Ref-1 (someone else: ids
    compare exactly) each have a friend's rewarded order; returns (campaign, reward campaign)."""
    campaign_id, reward_campaign = program(engine, shop_id)
    code = own_code(engine, shop_id, campaign_id, "id:ref-1", address_key=fingerprint(settings, HOME))
    other = own_code(engine, shop_id, campaign_id, "id:Ref-1")
    first = body(8001, code, customer_id="friend-1", email="Friend1@Example.com", ship_to=ELSEWHERE)
    second = body(8002, other, customer_id="friend-2", email="friend2@example.com")
    await deliver(
        engine, settings, shop_id, "single", [(first, "create-8001", "orders/create"), (second, "create-8002", "orders/create")]
    )
    return campaign_id, reward_campaign


async def test_a_customer_redaction_leaves_no_key_in_referrals(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id, reward_campaign = await referred(engine, shop_id, settings)
    with session_scope(engine) as session:  # (an email the shop never saw: only the id matches)
        counts = privacy.redact_customer(session, shop_id, email="ref@example.com", customer_id="ref-1", actor="test")
    assert (counts["referrals"], counts["codes"], counts["audit_events"]) == (1, 2, 1)  # own code and reward; its note
    by_order = {r.order_id: r for r in rows(engine, Referral)}
    mine, theirs = by_order["8001"], by_order["8002"]
    # the rows stay, rewards and counts with them; the key names the row, no one
    assert (mine.referrer, mine.friend, mine.reward_code_id is not None) == (f"redacted:{mine.id}", "id:friend-1", True)
    assert (theirs.referrer, theirs.friend) == ("id:Ref-1", "id:friend-2")
    recipients = {c.id: c.recipient for c in rows(engine, Code) if c.campaign_id in (campaign_id, reward_campaign)}
    assert recipients[mine.reward_code_id] is None and recipients[theirs.reward_code_id] == f"id:Ref-1#referral:{theirs.id}"
    assert sorted(r for r in recipients.values() if r) == ["id:Ref-1", f"id:Ref-1#referral:{theirs.id}"]
    notes = [a.details["referrer"] for a in rows(engine, AuditEvent) if a.action == "referral.rewarded"]
    assert sorted(notes) == ["id:Ref-1", "redacted"]
    with session_scope(engine) as session:
        assert referrals.rewards_of(session, shop_id=shop_id, campaign_id=campaign_id, referrer="id:ref-1") == []

    # the friend, by email only (the referral keys them by customer id): found through their order
    with session_scope(engine) as session:
        counts = privacy.redact_customer(session, shop_id, email="friend1@example.com", customer_id=None, actor="test")
    assert (counts["referrals"], counts["redemptions"]) == (1, 1)
    by_order = {r.order_id: r for r in rows(engine, Referral)}
    assert (by_order["8001"].referrer, by_order["8001"].friend) == (f"redacted:{mine.id}", f"redacted:{mine.id}")
    assert by_order["8002"].friend == "id:friend-2"
    # redacting again finds nothing more; placeholders never collide with uq_referral_friend
    with session_scope(engine) as session:
        again = privacy.redact_customer(session, shop_id, email="friend1@example.com", customer_id="ref-1", actor="test")
    assert (again["referrals"], again["codes"], again["audit_events"]) == (0, 0, 0)


async def test_a_data_request_lists_referrals_and_address_fingerprints(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id, reward_campaign = await referred(engine, shop_id, settings)
    (mine,) = [r for r in rows(engine, Referral) if r.order_id == "8001"]
    reward = next(c.code for c in rows(engine, Code) if c.id == mine.reward_code_id)
    with session_scope(engine) as session:
        referrer = privacy.customer_data(session, shop_id, email=None, customer_id="ref-1")
        friend = privacy.customer_data(session, shop_id, email="friend1@example.com", customer_id=None)
    assert referrer["referrals"] == [
        {"campaign_id": campaign_id, "created_at": mine.created_at.isoformat(), "role": "referrer", "reward_code": reward}
    ]
    assert [(c["campaign_id"], c["recipient"]) for c in referrer["codes"]] == [
        (campaign_id, "id:ref-1"),
        (reward_campaign, f"id:ref-1#referral:{mine.id}"),
    ]
    assert [a["address"] for a in referrer["referrer_addresses"]] == ["address fingerprint held"]
    assert friend["referrals"] == [
        {"campaign_id": campaign_id, "created_at": mine.created_at.isoformat(), "role": "friend", "order_id": "8001"}
    ]
    assert [(r["order_id"], r["shipping_address"]) for r in friend["redemptions"]] == [("8001", "address fingerprint held")]
    assert friend["referrer_addresses"] == [] and friend["codes"] == []
    # each side only: neither names the other; fingerprints are said to be held, never given
    told = json.dumps(referrer) + json.dumps(friend)
    assert "friend-1" not in json.dumps(referrer) and "ref-1" not in json.dumps(friend)
    assert fingerprint(settings, HOME) not in told and fingerprint(settings, ELSEWHERE) not in told
    assert "id:Ref-1" not in told and "friend-2" not in told  # the look-alike id is someone else


def test_programs_are_checked(engine: Engine, shop_id: int) -> None:
    campaign_id = make_campaign(engine, shop_id, rules=SHAREABLE)
    with pytest.raises(InvalidInput), session_scope(engine) as session:
        referrals.create_program(session, shop_id=shop_id, campaign_id=campaign_id, reward_campaign_id=campaign_id)
    with pytest.raises(InvalidInput), session_scope(engine) as session:
        referrals.referral_code(session, shop_id=shop_id, campaign_id=campaign_id, referrer="a@example.com", now=utcnow())
