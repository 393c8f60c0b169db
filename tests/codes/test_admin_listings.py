"""The admin's keyset listings walk every matching row exactly once, in order, page by page;
they never show another shop's rows; and bulk void by filter voids exactly what it confirmed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, event, update
from sqlmodel import col, select

from plugin.campaigns import figures, issuing, listing
from plugin.campaigns.campaigns import create_campaign
from plugin.checkout.redemptions import record_redemption
from plugin.codes import bulkvoid
from plugin.codes.listing import CodeFilter, count_codes, list_codes
from plugin.errors import InvalidInput
from plugin.orders.listing import RedemptionFilter, list_redemptions
from plugin.reconciliation.health import JobFilter, list_jobs
from plugin.shops.shops import ensure_local_shop
from plugin.store import outbox
from plugin.store.db import session_scope
from plugin.store.models import AuditEvent, Batch, Campaign, Code, utcnow

SECRET = "test-secret-key-0123456789-abcdefghij"
RULES = {"currency": "USD", "discount": {"type": "fixed", "amount": 100}}


def _campaign(engine: Engine, shop_id: int, name: str, count: int) -> int:
    with session_scope(engine) as session:
        campaign_id = create_campaign(session, shop_id=shop_id, name=name, rules=RULES).id or 0
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=count)
    return campaign_id


def _walk(fetch: object, limit: int = 3) -> list[int]:
    seen: list[int] = []
    cursor = None
    while True:
        page = fetch(cursor, limit)  # type: ignore[operator]
        seen += [getattr(r, "campaign", r).id for r in page.rows]
        assert len(page.rows) <= limit
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


@pytest.fixture
def two_shops(engine: Engine, shop_id: int) -> tuple[int, int, int, int]:
    with session_scope(engine) as session:
        other = ensure_local_shop(session, "other.example").id or 0
    mine = _campaign(engine, shop_id, "mine", 20)
    theirs = _campaign(engine, other, "theirs", 5)
    return shop_id, mine, other, theirs


def test_code_pages_walk_each_matching_code_once_newest_first(engine: Engine, two_shops: tuple[int, int, int, int]) -> None:
    shop_id, campaign_id, _, _ = two_shops
    now = utcnow()
    with session_scope(engine) as session:
        ids = [c.id for c in session.exec(select(Code).where(col(Code.campaign_id) == campaign_id).order_by(col(Code.id))).all()]
        session.execute(update(Code).where(col(Code.id).in_(ids[:7])).values(status="voided"))
        session.execute(update(Code).where(col(Code.id).in_(ids[5:9])).values(sync_status="failed"))
        for n, code_id in enumerate(ids[10:15]):
            session.execute(update(Code).where(col(Code.id) == code_id).values(expires_at=now + timedelta(days=5 - n)))
    with session_scope(engine) as session:

        def walk(f: CodeFilter) -> list[int]:
            return _walk(lambda c, n: list_codes(session, shop_id=shop_id, filter=f, cursor=c, limit=n))

        assert walk(CodeFilter()) == sorted(ids, reverse=True)  # the other shop's codes never appear
        assert walk(CodeFilter(campaign_id=campaign_id, status="voided")) == sorted(ids[:7], reverse=True)
        assert walk(CodeFilter(status="active", sync_status="failed")) == sorted(ids[7:9], reverse=True)
        # by end, soonest first
        assert walk(CodeFilter(expiring_before=now + timedelta(days=4, hours=1))) == list(reversed(ids[11:15]))
        assert count_codes(session, shop_id=shop_id, filter=CodeFilter(status="voided"), bound=5).more
        assert count_codes(session, shop_id=shop_id, filter=CodeFilter(status="voided"), bound=7).count == 7
        with pytest.raises(InvalidInput):
            list_codes(session, shop_id=shop_id, filter=CodeFilter(), cursor="not-a-cursor")


def test_campaign_redemption_and_job_pages(engine: Engine, two_shops: tuple[int, int, int, int]) -> None:
    shop_id, campaign_id, other, _ = two_shops
    for n in range(4):
        _campaign(engine, shop_id, f"more{n}", 1)
    with session_scope(engine) as session:
        codes = session.exec(select(Code).where(col(Code.campaign_id) == campaign_id)).all()
        for n, code in enumerate(codes[:8]):
            record_redemption(session, shop_id=shop_id, code=code.code, order_id=f"o{n}", now=utcnow(), amount=100, source="api")
        for n in range(5):
            outbox.enqueue(session, "sync.push", {"n": n}, shop_id)
        outbox.enqueue(session, "klaviyo.upload", {}, shop_id)
        outbox.enqueue(session, "sync.push", {}, other)
    with session_scope(engine) as session:
        now = utcnow()
        rows = _walk(lambda c, n: listing.list_campaigns(session, shop_id=shop_id, now=now, cursor=c, limit=n))
        assert len(rows) == 5 and rows == sorted(rows, reverse=True)
        first = listing.list_campaigns(session, shop_id=shop_id, now=now, limit=10).rows
        mine = next(r for r in first if r.campaign.id == campaign_id)
        assert (mine.redemptions, mine.discount_given, mine.figures.codes, mine.figures.live) == (8, 800, 20, 12)
        assert mine.last_activity >= mine.campaign.updated_at
        every = RedemptionFilter()
        assert len(_walk(lambda c, n: list_redemptions(session, shop_id=shop_id, filter=every, cursor=c, limit=n))) == 8
        flagged = RedemptionFilter(flagged=True)
        assert _walk(lambda c, n: list_redemptions(session, shop_id=shop_id, filter=flagged, cursor=c, limit=n)) == []
        sync_jobs = _walk(lambda c, n: list_jobs(session, shop_id=shop_id, filter=JobFilter(kind="sync"), cursor=c, limit=n))
        assert len(sync_jobs) == 5


def test_bulk_void_voids_exactly_what_it_confirmed(engine: Engine, two_shops: tuple[int, int, int, int]) -> None:
    shop_id, campaign_id, other, theirs = two_shops
    now = utcnow()
    with session_scope(engine) as session:
        with pytest.raises(bulkvoid.FilterRequired):
            bulkvoid.confirm_void(session, shop_id=shop_id, filter=CodeFilter(), secret=SECRET)
        confirmation = bulkvoid.confirm_void(session, shop_id=shop_id, filter=CodeFilter(campaign_id=campaign_id), secret=SECRET)
        assert (confirmation.count, confirmation.more) == (20, False) and confirmation.token
    with session_scope(engine) as session:  # one code changes meanwhile: the token no longer holds
        code = session.exec(select(Code).where(col(Code.campaign_id) == campaign_id)).first()
        assert code is not None
        code.status = "voided"
        session.add(code)
    with session_scope(engine) as session, pytest.raises(bulkvoid.CountChanged):
        bulkvoid.void_by_filter(session, shop_id=shop_id, token=confirmation.token, secret=SECRET, actor="ann", now=now)
    with session_scope(engine) as session:
        confirmation = bulkvoid.confirm_void(session, shop_id=shop_id, filter=CodeFilter(campaign_id=campaign_id), secret=SECRET)
        assert confirmation.count == 19 and confirmation.token
        with pytest.raises(InvalidInput):  # another shop's admin can't use it
            bulkvoid.void_by_filter(session, shop_id=other, token=confirmation.token, secret=SECRET, actor="eve", now=now)
        with pytest.raises(InvalidInput):  # nor a forged one
            bulkvoid.void_by_filter(session, shop_id=shop_id, token=confirmation.token + "x", secret=SECRET, actor="ann", now=now)
    with session_scope(engine) as session:
        voided = bulkvoid.void_by_filter(session, shop_id=shop_id, token=confirmation.token, secret=SECRET, actor="ann", now=now)
        assert voided == 19
    with session_scope(engine) as session:
        statuses = {c.status for c in session.exec(select(Code).where(col(Code.campaign_id) == campaign_id)).all()}
        assert statuses == {"voided"}
        assert {c.status for c in session.exec(select(Code).where(col(Code.campaign_id) == theirs)).all()} == {"active"}
        audit = session.exec(select(AuditEvent).where(col(AuditEvent.action) == "codes.bulk_voided")).one()
        assert (audit.actor, audit.details["count"]) == ("ann", 19)


def test_a_campaign_page_costs_the_same_queries_for_2_or_6_campaigns_and_keeps_batch_overrides(
    engine: Engine, shop_id: int
) -> None:
    """The listing's figures read each batch's rules in one query, not one per campaign; a batch
    with its own uses per code still counts at its own limit (same exposure as the one-campaign path)."""
    ids = [_campaign(engine, shop_id, f"c{n}", 4) for n in range(2)]
    with session_scope(engine) as session:  # the first campaign's batch: 3 uses per code instead of 1
        batch = session.exec(select(Batch).where(col(Batch.campaign_id) == ids[0])).one()
        batch.rules_override = {"uses_per_code": 3}
        session.add(batch)
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    def queries() -> int:
        statements.clear()
        event.listen(engine, "before_cursor_execute", count)
        try:
            with session_scope(engine) as session:
                listing.list_campaigns(session, shop_id=shop_id, now=utcnow())
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return len(statements)

    two = queries()
    ids += [_campaign(engine, shop_id, f"more{n}", 4) for n in range(4)]
    assert queries() == two
    with session_scope(engine) as session:
        now = utcnow()
        rows = {r.campaign.id: r for r in listing.list_campaigns(session, shop_id=shop_id, now=now).rows}
        for campaign_id in ids:
            alone = figures.campaign_exposure(session, session.get_one(Campaign, campaign_id), now=now)
            assert rows[campaign_id].figures.exposure == alone
        assert rows[ids[0]].figures.exposure.amount == 3 * rows[ids[1]].figures.exposure.amount  # type: ignore[union-attr,operator]
