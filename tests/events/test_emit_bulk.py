"""The bulk paths write their events too: order webhooks recorded a batch at a time (one
`redemption.created` per new redemption, none for repeats) and a bulk void (one `code.voided`
per campaign and chunk of codes); and a shop without endpoints pays nothing but a lookup."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, event
from sqlmodel import Session

from plugin.codes import bulkvoid
from plugin.codes.listing import CodeFilter
from plugin.orders.bulk_redemptions import Use, record_webhook_redemptions
from plugin.settings import Settings
from plugin.store import eventlog
from plugin.store.db import session_scope
from plugin.store.models import utcnow
from tests.events.conftest import emit, make_endpoint, messages
from tests.web.conftest import make_campaign, rules

SECRET = "bulk-void-secret"


def test_webhook_redemptions_in_a_batch_each_write_one_event(engine: Engine, settings: Settings, shop_id: int) -> None:
    make_endpoint(engine, settings, shop_id, ["redemption.created"])
    _, codes = make_campaign(engine, shop_id, rules(), codes=3)
    uses = [
        Use(shop_id=shop_id, code=c, order_id=f"o-{i}", amount=250, subtotal=2500, currency="GBP") for i, c in enumerate(codes)
    ]
    with session_scope(engine) as session:
        recorded = record_webhook_redemptions(session, uses, now=utcnow())
    with session_scope(engine) as session:
        again = record_webhook_redemptions(session, uses[:2], now=utcnow())  # the same deliveries again
    assert all(r is not None and r.duplicate for r in again)
    found = sorted((m.payload["data"]["code"], m.payload["data"]["redemption_id"]) for m in messages(engine))
    assert found == sorted((c, r.redemption_id) for c, r in zip(codes, recorded, strict=True) if r is not None)
    (one, *_) = messages(engine)
    assert one.payload["data"]["amount"] == 250 and one.payload["data"]["source"] == "webhook"


def test_a_bulk_void_writes_one_event_per_campaign_and_chunk(
    engine: Engine, settings: Settings, shop_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulkvoid, "EVENT_CODES", 4)
    make_endpoint(engine, settings, shop_id, ["code.voided"])
    campaign_id, codes = make_campaign(engine, shop_id, rules(), codes=10)
    with session_scope(engine) as session:
        token = bulkvoid.confirm_void(session, shop_id=shop_id, filter=CodeFilter(campaign_id=campaign_id), secret=SECRET).token
    with session_scope(engine) as session:
        assert bulkvoid.void_by_filter(session, shop_id=shop_id, token=token, secret=SECRET, actor="ann", now=utcnow(),
                                       reason="leak") == 10  # fmt: skip
    events = [m.payload["data"] for m in messages(engine)]
    assert [len(e["codes"]) for e in events] == [4, 4, 2]
    assert sorted(c for e in events for c in e["codes"]) == codes
    assert {(e["campaign_id"], e["reason"]) for e in events} == {(campaign_id, "leak")}


def test_a_shop_without_endpoints_reads_the_database_once_per_cache_period(
    engine: Engine, settings: Settings, shop_id: int
) -> None:
    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if "event_endpoint" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for n in range(50):
            assert emit(engine, shop_id, "redemption.created", redemption_id=n) is None
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1 and messages(engine) == []


def test_an_endpoint_made_in_this_process_is_seen_at_once(engine: Engine, settings: Settings, shop_id: int) -> None:
    assert emit(engine, shop_id, "pool.low", free=1) is None  # caches "nothing subscribed"
    make_endpoint(engine, settings, shop_id, ["pool.low"])
    assert emit(engine, shop_id, "pool.low", free=0) is not None


def test_unknown_event_types_are_a_programming_error(engine: Engine, shop_id: int) -> None:
    with Session(engine) as session, pytest.raises(AssertionError):
        eventlog.emit(session.connection(), shop_id=shop_id, type="order.created", data={}, now=utcnow())


def test_a_customer_redaction_scrubs_the_recipient_from_code_assigned_events(
    engine: Engine, settings: Settings, shop_id: int
) -> None:
    from plugin.orders import privacy

    make_endpoint(engine, settings, shop_id, ["code.assigned"])
    emit(engine, shop_id, "code.assigned", code="A", recipient="ann@example.com")
    emit(engine, shop_id, "code.assigned", code="B", recipient="bob@example.com")
    with session_scope(engine) as session:
        privacy.redact_customer(session, shop_id, email="Ann@Example.com", customer_id=None, actor="test")
    assert [m.payload["data"]["recipient"] for m in messages(engine)] == ["redacted", "bob@example.com"]
