"""customers/redact after a customers/data_request: nothing we keep still names the customer
(the data request's report and delivery included); other customers and other shops keep theirs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session, SQLModel

from connectors.base import Delivery, DeliveryKind
from plugin.orders import privacy as requests
from plugin.orders import webhooks
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.models import AuditEvent, Code, RecipientDelivery, Shop, WebhookEvent
from tests.distribution.test_referrals import body, send
from tests.ingest import campaign_codes, make_campaign, running_app, sandbox_settings

pytestmark = pytest.mark.anyio
ANN, ANN_ID = "ann@example.com", "cust-ann-7781"
BOB, BOB_ID = "bob@example.com", "cust-bob-4410"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def privacy(engine: Engine, shop_id: int, kind: DeliveryKind, delivery_id: str, email: str, customer_id: str) -> None:
    """A Shopify privacy delivery, stored and applied as the webhook path does."""
    topic = {"customers_redact": "customers/redact", "customers_data_request": "customers/data_request"}[kind]
    payload = {"shop_domain": "x.myshopify.com", "customer": {"id": customer_id, "email": email}, "orders_requested": []}
    with session_scope(engine) as session:
        event_id, _ = webhooks.store_delivery(
            session,
            platform="shopify",
            delivery_id=delivery_id,
            topic=topic,
            shop_id=shop_id,
            payload=json.dumps(payload),
            headers={},
        )
        event = session.get_one(WebhookEvent, event_id)
        delivery = Delivery(delivery_id, topic, "x.myshopify.com", kind, email=email, customer_id=customer_id)
        assert requests.apply_lifecycle(session, shop_id, event, delivery) == "processed"


def held(engine: Engine) -> dict[int | None, str]:
    """Every row of every table, as text, gathered per shop (None: rows of no shop)."""
    text: dict[int | None, str] = {}
    with Session(engine) as session:
        for table in SQLModel.metadata.sorted_tables:
            for row in session.execute(select(table)).mappings():
                owner = row["id"] if table.name == Shop.__tablename__ else row.get("shop_id")
                text[owner] = text.get(owner, "") + json.dumps(dict(row), default=str) + "\n"
    return text


async def test_a_redaction_leaves_nothing_naming_the_customer_not_even_their_data_request(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    settings = sandbox_settings(settings)
    a, b, c = (code.code for code in campaign_codes(engine, make_campaign(engine, shop_id, count=3)))
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, body(9001, a, customer_id=ANN_ID, email=ANN), "create-9001")
        await send(client, settings, body(9002, b, customer_id=BOB_ID, email=BOB), "create-9002")
    with session_scope(engine) as session:  # a code handed to Ann; another shop knows her too
        bound = session.exec(select(Code).where(Code.code == c)).scalar_one()
        bound.email, bound.customer_id, bound.recipient = ANN, ANN_ID, ANN
        other = Shop(platform="shopify", domain="other.myshopify.com", name="Other")
        # her code was pushed to an email provider, and a reward of hers waits for its push
        pushed = RecipientDelivery(shop_id=shop_id, campaign_id=bound.campaign_id, code_id=bound.id or 0, recipient=ANN,
                                   provider="klaviyo", status="sent")  # fmt: skip
        reward = RecipientDelivery(shop_id=shop_id, campaign_id=bound.campaign_id, code_id=-1,
                                   recipient=f"id:{ANN_ID}#referral:4", provider="twilio")  # fmt: skip
        session.add_all([bound, other, pushed, reward])
        session.flush()
        assert other.id is not None
        other_id = other.id
    other_campaign = make_campaign(engine, other_id, count=1)
    with session_scope(engine) as session:
        theirs = session.get_one(Code, campaign_codes(engine, other_campaign)[0].id)
        theirs.email, theirs.customer_id, theirs.recipient = ANN, ANN_ID, ANN
        session.add(theirs)
    for shop, delivery_id in ((shop_id, "dr-ann"), (other_id, "dr-ann-other")):
        privacy(engine, shop, "customers_data_request", delivery_id, ANN, ANN_ID)
    privacy(engine, shop_id, "customers_data_request", "dr-bob", BOB, BOB_ID)
    before = held(engine)
    assert ANN in before[shop_id] and ANN_ID in before[shop_id]  # the scan sees what we hold

    privacy(engine, shop_id, "customers_redact", "redact-ann", ANN, ANN_ID)

    after = held(engine)
    mine = after[shop_id] + after.get(None, "")
    assert ANN not in mine.lower() and ANN_ID not in mine
    assert BOB in after[shop_id] and BOB_ID in after[shop_id]  # another customer keeps theirs
    assert ANN in after[other_id] and ANN_ID in after[other_id]  # another shop too
    with Session(engine) as session:
        reports = {
            e.subject: e.details
            for e in session.execute(select(AuditEvent).where(AuditEvent.action == "customer.data_request")).scalars()
        }
        ids = dict(session.execute(select(WebhookEvent.delivery_id, WebhookEvent.id)).all())
        redacted = session.execute(
            select(AuditEvent.details).where(AuditEvent.shop_id == shop_id, AuditEvent.action == "customer.redacted")
        ).scalar_one()
    ann_report: dict[str, Any] = reports[f"webhook:{ids['dr-ann']}"]
    assert ann_report == {"redacted": True, "redemptions": 1, "codes": 1, "referrals": 0, "referrer_addresses": 0}
    assert reports[f"webhook:{ids['dr-bob']}"]["customer"] == {"email": BOB, "customer_id": BOB_ID}
    assert reports[f"webhook:{ids['dr-ann-other']}"]["customer"] == {"email": ANN, "customer_id": ANN_ID}
    assert redacted["data_requests"] == 1 and redacted["redemptions"] == 1 and redacted["codes"] == 1
    assert redacted["pushes"] == 2


async def test_a_data_request_by_email_is_found_by_a_redaction_by_customer_id(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    """The report lists her order under her customer id: a redaction naming only the id finds it."""
    settings = sandbox_settings(settings)
    (a,) = (code.code for code in campaign_codes(engine, make_campaign(engine, shop_id, count=1)))
    async with running_app(settings, engine) as (_, client):
        await send(client, settings, body(9101, a, customer_id=ANN_ID, email=ANN), "create-9101")
    with session_scope(engine) as session:
        report = requests.customer_data(session, shop_id, email=ANN, customer_id=None)
        session.add(AuditEvent(shop_id=shop_id, action="customer.data_request", subject="cli", details=report))
    with session_scope(engine) as session:
        counts = requests.redact_customer(session, shop_id, email=None, customer_id=ANN_ID, actor="test")
    assert counts["data_requests"] == 1
    with session_scope(engine) as session:
        details = session.execute(select(AuditEvent.details).where(AuditEvent.action == "customer.data_request")).scalar_one()
    assert details == {"redacted": True, "redemptions": 1, "codes": 0, "referrals": 0, "referrer_addresses": 0}
