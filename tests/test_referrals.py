"""Referral loops through the real webhook path (signed sandbox deliveries): a friend's first
order rewards the referrer once, never their own order, never a friend's second order, and not
twice when deliveries repeat; the reward is a fresh unique code, pushed through the provider."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin import caches, referrals
from plugin.db import session_scope
from plugin.errors import InvalidInput
from plugin.models import AuditEvent, Code, Job, RecipientDelivery, Redemption, Referral, utcnow
from plugin.settings import Settings
from tests.ingest import make_campaign, running_app, sandbox_settings
from tests.test_webhooks import headers, order_body

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


def body(order_id: int, code: str, *, customer_id: str | None, email: str) -> bytes:
    data = json.loads(order_body(order_id, [code], email=email))
    data["customer_id"] = customer_id
    return json.dumps(data).encode()


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


def own_code(engine: Engine, shop_id: int, campaign_id: int, referrer: str) -> str:
    with session_scope(engine) as session:
        return referrals.referral_code(session, shop_id=shop_id, campaign_id=campaign_id, referrer=referrer, now=utcnow()).code


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


@pytest.mark.parametrize(
    ("referrer", "customer_id", "email"), [("id:c9", "c9", "other@example.com"), ("ann@example.com", "c9", "ANN@example.com")]
)
async def test_self_referral_is_refused(
    engine: Engine, shop_id: int, settings: Settings, referrer: str, customer_id: str, email: str
) -> None:
    settings = sandbox_settings(settings)
    campaign_id, _ = program(engine, shop_id)
    code = own_code(engine, shop_id, campaign_id, referrer)
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, body(3001, code, customer_id=customer_id, email=email), "create-3001")
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


def test_programs_are_checked(engine: Engine, shop_id: int) -> None:
    campaign_id = make_campaign(engine, shop_id, rules=SHAREABLE)
    with pytest.raises(InvalidInput), session_scope(engine) as session:
        referrals.create_program(session, shop_id=shop_id, campaign_id=campaign_id, reward_campaign_id=campaign_id)
    with pytest.raises(InvalidInput), session_scope(engine) as session:
        referrals.referral_code(session, shop_id=shop_id, campaign_id=campaign_id, referrer="a@example.com", now=utcnow())
