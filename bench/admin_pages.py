"""Server time of what the merchant admin reads, on a big shop (run by hand):

    .venv/bin/python bench/admin_pages.py [--codes 1000000] [--redemptions 100000] [--postgres URL]

Builds a shop with one campaign of `--codes` codes (plus 30 small campaigns), `--redemptions`
redemptions spread over 30 days, as many webhook deliveries, 1% of the codes voided, 0.5% whose
sync failed, 20,000 claimed (half with an end of their own, some passed), 5,000 jobs and some
alerts; then times, as the median of several runs in a read session, each listing's first page
and a deep page (from a cursor half-way down), each figure function and the bulk void count,
next to a baseline measured in the same run: one primary-key lookup, and the read-time count the
figures replaced. Target: each under 200 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, func, or_, text
from sqlmodel import SQLModel, col, select

import plugin.store.models  # noqa: F401
from plugin.campaigns import figures, issuing, listing
from plugin.campaigns.campaigns import create_campaign
from plugin.codes import bulkvoid
from plugin.codes.listing import CodeFilter, list_codes
from plugin.distribution.admin import list_claims
from plugin.orders.listing import DeliveryFilter, RedemptionFilter, list_deliveries, list_redemptions
from plugin.overview import home as overview
from plugin.reconciliation.health import JobFilter, list_alerts, list_jobs
from plugin.shops.shops import ensure_local_shop
from plugin.store import keyset
from plugin.store.db import make_engine, read_session, session_scope
from plugin.store.models import Campaign, Code, utcnow

RULES = {"currency": "USD", "discount": {"type": "fixed", "amount": 500}, "budget": {"max_redemptions": 500_000}}
SECRET = "bench-secret-0123456789-abcdefghijklmnop"
TARGET_MS = 200.0


def _fresh(url: str) -> Engine:
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    SQLModel.metadata.create_all(engine)
    return engine


def _build(engine: Engine, n_codes: int, n_redemptions: int) -> tuple[int, int]:
    pg = engine.dialect.name == "postgresql"
    with session_scope(engine) as session:
        shop_id = ensure_local_shop(session, "bench.couponry.test").id or 0
        big = create_campaign(session, shop_id=shop_id, name="big", rules=RULES, code_format={"length": 12}).id or 0
        small = [create_campaign(session, shop_id=shop_id, name=f"s{n}", rules=RULES).id or 0 for n in range(30)]
    started = time.perf_counter()
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=big, count=n_codes)
    for campaign_id in small:
        issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=100)
    print(f"built    : {n_codes:,} codes in {time.perf_counter() - started:.1f} s", flush=True)
    days = "now() - (c.id % 30) * interval '1 day'" if pg else "datetime('now', '-' || (c.id % 30) || ' days')"
    concat = "'o' || c.id"
    started = time.perf_counter()
    with engine.begin() as conn:
        lo = conn.execute(text("SELECT MIN(id) FROM code WHERE campaign_id = :c"), {"c": big}).scalar_one()
        conn.execute(
            text(
                "INSERT INTO redemption (shop_id, code, order_id, code_id, campaign_id, batch_id, currency, subtotal, amount, "
                "order_total, order_items, refunded, source, status, flagged_reason, created_at) "
                f"SELECT c.shop_id, c.code, {concat}, c.id, c.campaign_id, c.batch_id, 'USD', 5000, 500, 5000, 1, 0, "
                "CASE WHEN c.id % 3 = 0 THEN 'api' ELSE 'webhook' END, "
                "CASE WHEN c.id % 50 = 0 THEN 'rolled_back' ELSE 'active' END, "
                f"CASE WHEN c.id % 97 = 0 THEN 'usage_limit_reached' END, {days} "
                "FROM code AS c WHERE c.campaign_id = :c AND c.id < :hi"
            ),
            {"c": big, "hi": lo + n_redemptions},
        )
        conn.execute(
            text("UPDATE code SET uses = 1 WHERE campaign_id = :c AND id < :hi AND id % 50 <> 0"),
            {"c": big, "hi": lo + n_redemptions},
        )
        conn.execute(
            text("UPDATE campaign SET redemption_count = :n, discount_total = :d WHERE id = :c"),
            {"n": n_redemptions, "d": 500 * n_redemptions, "c": big},
        )
        # webhook deliveries, as many as redemptions
        conn.execute(
            text(
                "INSERT INTO webhookevent (shop_id, platform, delivery_id, topic, payload, headers, status, flagged, "
                f"order_id, outcome, unknown_codes, received_at) SELECT shop_id, 'sandbox', {concat}, 'orders/create', "
                "'{}', '{}', "
                "CASE WHEN c.id % 40 = 0 THEN 'failed' ELSE 'processed' END, c.id % 97 = 0, "
                f"{concat}, '{{}}', 0, {days} FROM code AS c WHERE c.campaign_id = :c AND c.id < :hi"
            ),
            {"c": big, "hi": lo + n_redemptions},
        )
        # voided, failed sync, claims with and without an end of their own
        conn.execute(text("UPDATE code SET status = 'voided' WHERE campaign_id = :c AND id % 100 = 7"), {"c": big})
        conn.execute(text("UPDATE code SET sync_status = 'failed' WHERE campaign_id = :c AND id % 200 = 11"), {"c": big})
        claimed = "campaign_id = :c AND id >= :lo2 AND id < :lo2 + 20000"
        now, lo2 = utcnow(), lo + n_redemptions
        conn.execute(
            text(f"UPDATE code SET recipient = 'r' || id || '@example.com', assigned_at = :now WHERE {claimed}"),
            {"c": big, "lo2": lo2, "now": now},
        )
        for rest, end in ((0, now - timedelta(days=1)), (2, now + timedelta(hours=50)), (4, now + timedelta(days=30))):
            conn.execute(
                text(f"UPDATE code SET expires_at = :end WHERE {claimed} AND id % 6 = :rest"),
                {"c": big, "lo2": lo2, "end": end, "rest": rest},
            )
        conn.execute(
            text(
                "INSERT INTO job (shop_id, kind, payload, status, attempts, max_attempts, run_after, last_error, created_at) "
                "SELECT shop_id, CASE WHEN id % 3 = 0 THEN 'klaviyo.upload' ELSE 'sync.push' END, '{}', "
                "CASE WHEN id % 10 = 0 THEN 'dead' ELSE 'done' END, 1, 10, created_at, "
                "CASE WHEN id % 10 = 0 THEN 'HTTP 500' END, created_at "
                "FROM code WHERE campaign_id = :c AND id < :lo3"
            ),
            {"c": big, "lo3": lo + 5000},
        )
        conn.execute(
            text(
                "INSERT INTO alert (shop_id, campaign_id, kind, message, details, count, created_at, last_seen_at) "
                "SELECT shop_id, campaign_id, 'pool_low', 'low', '{}', 1, created_at, created_at "
                "FROM code WHERE campaign_id = :c AND id < :lo4"
            ),
            {"c": big, "lo4": lo + 200},
        )
        conn.execute(text("ANALYZE"))
    print(f"built    : redemptions, deliveries, claims, jobs in {time.perf_counter() - started:.1f} s", flush=True)
    return shop_id, big


def _time(fn: Callable[[], Any], runs: int = 7) -> float:
    fn()  # warm the caches, as a page served twice would be
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _deep(fetch: Callable[[str | None], Any], key: list[Any]) -> Callable[[], Any]:
    cursor = keyset.encode(key)
    return lambda: fetch(cursor)


def run(engine: Engine, n_codes: int, n_redemptions: int) -> None:
    shop_id, big = _build(engine, n_codes, n_redemptions)
    now = utcnow()
    with read_session(engine) as s:
        campaign = s.get_one(Campaign, big)
        lo, hi = s.exec(select(func.min(Code.id), func.max(Code.id)).where(col(Code.campaign_id) == big)).one()
        mid = (int(lo) + int(hi)) // 2
        redemption_mid = int(s.exec(text("SELECT MAX(id) / 2 FROM redemption")).one()[0])  # type: ignore[call-overload]
        soon = now + timedelta(hours=100)

        def old_count() -> Any:  # what the campaign API counted at read time before the counters
            s.exec(select(func.count()).select_from(Code).where(col(Code.campaign_id) == big)).one()
            return s.exec(
                select(Code.batch_id, func.count(), func.sum(Code.uses))
                .where(
                    col(Code.campaign_id) == big,
                    col(Code.status) == "active",
                    or_(col(Code.expires_at).is_(None), col(Code.expires_at) > now),
                )
                .group_by(col(Code.batch_id))
            ).all()

        def codes(f: CodeFilter) -> Callable[[str | None], Any]:
            return lambda c: list_codes(s, shop_id=shop_id, filter=f, cursor=c, limit=50)

        rf, df = RedemptionFilter, DeliveryFilter
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("baseline: primary-key lookup of a code", lambda: s.get(Code, mid) and s.expunge_all()),
            ("campaigns, first page", lambda: listing.list_campaigns(s, shop_id=shop_id, now=now)),
            (
                "campaigns, active, deep page",
                lambda: listing.list_campaigns(s, shop_id=shop_id, now=now, status="active", cursor=keyset.encode([big + 15])),
            ),
            ("codes of the campaign, first page", lambda: codes(CodeFilter(campaign_id=big))(None)),
            ("codes of the campaign, deep page", _deep(codes(CodeFilter(campaign_id=big)), [mid])),
            ("codes voided, first page", lambda: codes(CodeFilter(campaign_id=big, status="voided"))(None)),
            ("codes voided, deep page", _deep(codes(CodeFilter(campaign_id=big, status="voided")), [mid])),
            ("codes sync failed, deep page", _deep(codes(CodeFilter(campaign_id=big, sync_status="failed")), [mid])),
            ("codes used, deep page", _deep(codes(CodeFilter(campaign_id=big, status="used")), [int(lo) + n_redemptions // 2])),
            (
                "codes of a recipient",
                lambda: codes(CodeFilter(campaign_id=big, recipient=f"r{int(lo) + n_redemptions + 5}@example.com"))(None),
            ),
            ("codes assigned, first page", lambda: codes(CodeFilter(campaign_id=big, status="assigned"))(None)),
            ("claims of the campaign, first page", lambda: list_claims(s, shop_id=shop_id, campaign_id=big, limit=25)),
            ("codes expiring within 100 h, first page", lambda: codes(CodeFilter(campaign_id=big, expiring_before=soon))(None)),
            ("redemptions, first page", lambda: list_redemptions(s, shop_id=shop_id, filter=rf())),
            (
                "redemptions, deep page",
                _deep(lambda c: list_redemptions(s, shop_id=shop_id, filter=rf(), cursor=c), [redemption_mid]),
            ),
            (
                "redemptions flagged, deep page",
                _deep(lambda c: list_redemptions(s, shop_id=shop_id, filter=rf(flagged=True), cursor=c), [redemption_mid]),
            ),
            (
                "redemptions of last 7 days via webhook",
                lambda: list_redemptions(s, shop_id=shop_id, filter=rf(source="webhook", since=now - timedelta(days=7))),
            ),
            ("deliveries failed, first page", lambda: list_deliveries(s, shop_id=shop_id, filter=df(status="failed"))),
            (
                "deliveries flagged, deep page",
                _deep(lambda c: list_deliveries(s, shop_id=shop_id, filter=df(flagged=True), cursor=c), [redemption_mid]),
            ),
            ("jobs dead, first page", lambda: list_jobs(s, shop_id=shop_id, filter=JobFilter(status="dead"))),
            ("jobs failing sync, first page", lambda: list_jobs(s, shop_id=shop_id, filter=JobFilter(kind="sync", failing=True))),
            ("alerts, first page", lambda: list_alerts(s, shop_id=shop_id)),
            ("figures: campaign (codes, live, exposure...)", lambda: figures.campaign_figures(s, campaign, now=now)),
            ("figures: shop week", lambda: figures.shop_week(s, shop_id=shop_id, today=now.date())),
            ("figures: Home (its week read from redemptions)", lambda: overview.figures(s, shop_id, now=now)),
            (
                "bulk void count: campaign (> 100,000)",
                lambda: bulkvoid.confirm_void(s, shop_id=shop_id, filter=CodeFilter(campaign_id=big), secret=SECRET),
            ),
            (
                "bulk void count: claimed, unused",
                lambda: bulkvoid.confirm_void(
                    s, shop_id=shop_id, filter=CodeFilter(campaign_id=big, status="assigned"), secret=SECRET
                ),
            ),
            ("reference: the old read-time count", old_count),
        ]
        print(f"{'what':<48}{'ms (median)':>12}")
        worst = 0.0
        for name, fn in cases:
            ms = _time(fn)
            if not name.startswith(("baseline", "reference")):
                worst = max(worst, ms)
            print(f"{name:<48}{ms:>12.2f}", flush=True)
        fig = figures.campaign_figures(s, campaign, now=now)
        print(
            f"figures  : codes {fig.codes:,}, live {fig.live:,}, assigned {fig.assigned:,}, "
            f"redeemed {fig.redeemed:,}, rolled back {fig.rolled_back:,}"
        )
        print(f"worst    : {worst:.1f} ms (target < {TARGET_MS:.0f} ms): {'met' if worst < TARGET_MS else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--redemptions", type=int, default=100_000)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL (its public schema is dropped)")
    args = parser.parse_args()
    if args.postgres:
        run(_fresh(args.postgres), args.codes, args.redemptions)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(_fresh(f"sqlite:///{tmp}/admin.db"), args.codes, args.redemptions)


if __name__ == "__main__":
    main()
