"""The counters kept with the writes equal what the rows say, after any mix of writes.

A random sequence of the operations that move them — generating, importing, claiming,
redeeming at checkout and in webhook batches, rolling back (each cancel policy), voiding,
extending and reassigning codes, a sync push marking codes — runs through the real services;
then every figure must equal a count of the rows (the old read-time queries are the oracle),
and a recount must find nothing to repair."""

from __future__ import annotations

import threading
from contextlib import suppress
from datetime import date, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, or_, update
from sqlmodel import Session, col, select

from plugin.campaigns import figures, issuing
from plugin.campaigns.campaigns import create_campaign
from plugin.checkout.redemptions import RedemptionRefused, UnknownCode, record_redemption, rollback_redemption
from plugin.codes import percode
from plugin.distribution import claims
from plugin.errors import PluginError
from plugin.orders.bulk_redemptions import Use, record_webhook_redemptions
from plugin.rules import CampaignRules, CampaignState, CampaignStatus, OpenUses, RulesOverride, apply_override, exposure
from plugin.shops.shops import ensure_local_shop
from plugin.store.db import session_scope
from plugin.store.models import Batch, Campaign, Code, Redemption, utcnow

RULES: list[dict[str, Any]] = [
    {"currency": "USD", "discount": {"type": "fixed", "amount": 500}, "usage": {"uses_per_code": 2}},
    {"currency": "USD", "discount": {"type": "fixed", "amount": 300}, "usage": {"uses_per_code": None}, "on_cancel": "reissue"},
]
OPS = st.sampled_from(["generate", "import", "claim", "redeem", "webhook", "rollback", "void", "extend", "reassign", "sync"])
STEPS = st.lists(st.tuples(OPS, st.integers(0, 10_000), st.integers(0, 1)), min_size=1, max_size=25)


def _shop(engine: Engine, domain: str) -> tuple[int, list[int]]:
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, domain)
        assert shop.id is not None
        ids = [create_campaign(session, shop_id=shop.id, name=f"c{n}", rules=r).id or 0 for n, r in enumerate(RULES)]
        return shop.id, ids


def _pick(session: Session, model: Any, shop_id: int, n: int) -> Any:
    rows = session.exec(select(model).where(col(model.shop_id) == shop_id).order_by(col(model.id))).all()
    return rows[n % len(rows)] if rows else None


def _apply(engine: Engine, shop_id: int, campaigns: list[int], op: str, n: int, side: int, step: int) -> None:
    now = utcnow()
    campaign_id = campaigns[side]
    if op == "generate":
        issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=1 + n % 5)
        return
    if op == "import":
        lines = ["code,email", *[f"IMP{shop_id}S{step}N{i},p{n + i}@example.com" for i in range(1 + n % 3)]]
        with suppress(PluginError, issuing.ImportRejected):  # refused as a whole: nothing written
            issuing.import_codes(engine, shop_id=shop_id, campaign_id=campaign_id, lines=lines)
        return
    with session_scope(engine) as session:
        try:
            _apply_in(session, shop_id, campaign_id, op, n, step, now)
        except (PluginError, UnknownCode, RedemptionRefused):
            session.rollback()


def _apply_in(session: Session, shop_id: int, campaign_id: int, op: str, n: int, step: int, now: datetime) -> None:
    code = _pick(session, Code, shop_id, n)
    if op == "claim":
        claims.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=f"r{n % 7}@example.com", now=now)
    elif op == "redeem" and code is not None:
        record_redemption(
            session, shop_id=shop_id, code=code.code, order_id=f"o{n % 13}", now=now, amount=100, source="api", enforce=True
        )
    elif op == "webhook" and code is not None:
        other = _pick(session, Code, shop_id, n * 7 + 1)
        uses = [Use(shop_id=shop_id, code=c.code, order_id=f"w{(n + i) % 11}", amount=200) for i, c in enumerate((code, other))]
        record_webhook_redemptions(session, uses, now=now - timedelta(days=n % 3))
    elif op == "rollback":
        redemption = _pick(session, Redemption, shop_id, n)
        if redemption is not None:
            policy = ("restore", "keep", "reissue", None)[n % 4]
            rollback_redemption(session, shop_id=shop_id, redemption_id=redemption.id, now=now, policy=policy)  # type: ignore[arg-type]
    elif op == "void" and code is not None:
        percode.void(session, shop_id=shop_id, typed=code.code, actor="test", now=now)
    elif op == "extend" and code is not None:
        percode.extend(session, shop_id=shop_id, typed=code.code, expires_at=now + timedelta(days=1 + n % 5), actor="t", now=now)
        if n % 2:  # and let some ends pass (as time would)
            session.execute(update(Code).where(col(Code.id) == code.id).values(expires_at=now - timedelta(hours=1)))
    elif op == "reassign" and code is not None:
        percode.reassign(session, shop_id=shop_id, typed=code.code, recipient=f"x{n}@example.com", actor="t", now=now)
    elif op == "sync":
        status = ("synced", "failed", "deactivated")[n % 3]
        session.execute(update(Code).where(col(Code.shop_id) == shop_id, col(Code.id) % 3 == n % 3).values(sync_status=status))


def _old_exposure(session: Session, campaign: Campaign, now: datetime) -> Any:
    """The read-time computation the counters replaced (plugin.campaigns.campaigns before them)."""
    rules = CampaignRules.model_validate(campaign.rules)
    live = (
        select(Code.batch_id, func.count(), func.coalesce(func.sum(Code.uses), 0))
        .where(
            col(Code.campaign_id) == campaign.id,
            col(Code.status) == "active",
            or_(col(Code.expires_at).is_(None), col(Code.expires_at) > now),
        )
        .group_by(col(Code.batch_id))
    )
    groups = []
    for batch_id, count, used in session.exec(live).all():
        batch = session.get(Batch, batch_id) if batch_id is not None else None
        override = RulesOverride.model_validate(batch.rules_override) if batch and batch.rules_override else None
        effective = apply_override(rules, override)
        limit = effective.usage.uses_per_code
        groups.append(OpenUses(rules=effective, uses=None if limit is None else max(limit * int(count) - int(used), 0)))
    state = CampaignState(rules, CampaignStatus(campaign.status), campaign.redemption_count, campaign.discount_total)
    return exposure(state, groups, now=now)


def _count(session: Session, *where: Any) -> int:
    return int(session.exec(select(func.count()).select_from(Code).where(*where)).one())


def _check(engine: Engine, shop_id: int, campaigns: list[int]) -> None:
    now = utcnow()
    with session_scope(engine) as session:
        for campaign_id in campaigns:
            campaign = session.get_one(Campaign, campaign_id)
            got = figures.campaign_figures(session, campaign, now=now)
            mine = col(Code.campaign_id) == campaign_id
            unexpired = or_(col(Code.expires_at).is_(None), col(Code.expires_at) > now)
            live = (col(Code.status) == "active", col(Code.uses) == 0, unexpired)
            standing = select(func.count(), func.coalesce(func.sum(Redemption.amount), 0)).where(
                col(Redemption.campaign_id) == campaign_id, col(Redemption.status) == "active"
            )
            rolled_back = select(func.count()).where(
                col(Redemption.campaign_id) == campaign_id, col(Redemption.status) == "rolled_back"
            )
            sync = select(Code.sync_status, func.count()).where(mine).group_by(col(Code.sync_status))
            assert got.codes == _count(session, mine)
            assert got.live == _count(session, mine, *live)
            assert got.assigned == _count(session, mine, col(Code.recipient).is_not(None))
            assert got.used == _count(session, mine, col(Code.uses) > 0)
            assert (got.redeemed, got.discount_given) == tuple(session.exec(standing).one())
            assert got.rolled_back == session.exec(rolled_back).one()
            assert got.sync == {s: int(c) for s, c in session.exec(sync).all()}
            assert got.exposure == _old_exposure(session, campaign, now)
        days = select(func.count(), func.coalesce(func.sum(Redemption.amount), 0)).where(
            col(Redemption.shop_id) == shop_id, col(Redemption.status) == "active"
        )
        week = figures.shop_week(session, shop_id=shop_id, today=now.date(), days=7)
        assert (week.redemptions, week.discount) == tuple(session.exec(days).one())  # every redemption here is this week
        assert figures.recount(session, shop_id=shop_id).changed == []


_run = iter(range(10**6))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_counters_equal_the_rows_after_any_mix_of_writes(engine: Engine, steps: list[tuple[str, int, int]]) -> None:
    shop_id, campaigns = _shop(engine, f"figures-{next(_run)}.example")
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaigns[0], count=4)
    for step, (op, n, side) in enumerate(steps):
        _apply(engine, shop_id, campaigns, op, n, side, step)
    _check(engine, shop_id, campaigns)


def test_recount_repairs_a_counter_that_drifted(engine: Engine, shop_id: int) -> None:
    with session_scope(engine) as session:
        campaign_id = create_campaign(session, shop_id=shop_id, name="c", rules=RULES[0]).id or 0
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=10)
    with session_scope(engine) as session:
        session.connection().exec_driver_sql("UPDATE campaign_stats SET codes = codes + 5, unused = 0")
    with session_scope(engine) as session:
        report = figures.recount(session, shop_id=shop_id)
        assert {(col_, was, now) for _, col_, was, now in report.changed} == {("codes", 15, 10), ("unused", None, 10)}
        assert figures.campaign_figures(session, session.get_one(Campaign, campaign_id), now=utcnow()).live == 10
    with session_scope(engine) as session:
        assert figures.recount(session, shop_id=shop_id).changed == []


def test_concurrent_redemptions_count_each_once(engine: Engine, shop_id: int) -> None:
    """Threads redeeming the campaign's codes at once (on PostgreSQL, truly concurrent
    transactions): no increment is lost."""
    with session_scope(engine) as session:
        campaign_id = create_campaign(session, shop_id=shop_id, name="c", rules=RULES[1]).id or 0
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=8)
    with session_scope(engine) as session:
        codes = [c.code for c in session.exec(select(Code).where(col(Code.campaign_id) == campaign_id)).all()]

    def redeem(worker: int) -> None:
        for i in range(10):
            with session_scope(engine) as session:
                code = codes[(worker + i) % len(codes)]
                order = f"t{worker}-{i}"
                record_redemption(session, shop_id=shop_id, code=code, order_id=order, now=utcnow(), amount=300, source="api")

    threads = [threading.Thread(target=redeem, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session_scope(engine) as session:
        got = figures.campaign_figures(session, session.get_one(Campaign, campaign_id), now=utcnow())
        assert (got.redeemed, got.discount_given, got.used) == (60, 18_000, 8)
        assert figures.shop_week(session, shop_id=shop_id, today=date.today()).redemptions == 60
        assert figures.recount(session, shop_id=shop_id).changed == []
