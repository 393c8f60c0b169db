"""Server time of a campaign's results (run by hand):

    .venv/bin/python bench/results.py [--codes 1000000] [--redemptions 100000] [--postgres URL]

Builds a shop (time zone America/New_York) with one campaign of `--codes` codes, a fifth more
codes than `--redemptions` assigned to recipients (5 partners, 3 batches' worth of ids), and
`--redemptions` redemptions over 90 days in 3 channels and 2 currencies, 2% rolled back, 1%
flagged — written with the results triggers on (the build time says what they cost). Then times,
as the median of several runs: the service for each grouping (with the median's read), the
JSON API and the admin Results page (in-process ASGI: the app's whole handler, no network), next
to a baseline measured in the same run: one primary-key lookup, and the read-time GROUP BY over
the redemption rows that the rollups replace. Target: each under 200 ms.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, text
from sqlmodel import SQLModel

import plugin.store.models  # noqa: F401
from plugin.campaigns import issuing, results
from plugin.campaigns.campaigns import create_campaign
from plugin.settings import Secret, Settings
from plugin.shops import apikeys, timezones, users
from plugin.shops.shops import ensure_local_shop
from plugin.store.db import make_engine, read_session, session_scope
from plugin.store.models import Campaign, Partner

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

RULES = {"currency": "USD", "discount": {"type": "fixed", "amount": 500}}
TARGET_MS = 200.0
PASSWORD = "correct horse battery staple"


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
        timezones.set_timezone(session, shop_id, "America/New_York")
        big = create_campaign(session, shop_id=shop_id, name="big", rules=RULES, code_format={"length": 12}).id or 0
        partners = []
        for n in range(5):
            partner = Partner(shop_id=shop_id, name=f"p{n}")
            session.add(partner)
            session.flush()
            partners.append(partner.id or 0)
    started = time.perf_counter()
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=big, count=n_codes)
    print(f"built    : {n_codes:,} codes in {time.perf_counter() - started:.1f} s", flush=True)
    n_assigned = min(n_codes, n_redemptions * 6 // 5)
    ago = "now() - ({x}) * interval '1 second'" if pg else "datetime('now', '-' || ({x}) || ' seconds')"
    with engine.begin() as conn:
        lo = conn.execute(text("SELECT MIN(id) FROM code WHERE campaign_id = :c"), {"c": big}).scalar_one()
        started = time.perf_counter()
        conn.execute(
            text(
                "UPDATE code SET recipient = 'r' || id || '@example.com', "
                f"partner_id = CASE WHEN id % 6 = 0 THEN NULL ELSE :p0 + id % 5 END, "
                f"assigned_at = {ago.format(x='(id % 90) * 86400 + 7200 + id % 3600')} "
                "WHERE campaign_id = :c AND id < :hi"
            ),
            {"c": big, "hi": lo + n_assigned, "p0": partners[0]},
        )
        print(f"built    : {n_assigned:,} assignments (triggers on) in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        conn.execute(
            text(
                "INSERT INTO redemption (shop_id, code, order_id, code_id, campaign_id, batch_id, partner_id, channel, currency, "
                "subtotal, amount, order_total, order_items, refunded, source, status, flagged_reason, created_at) "
                "SELECT c.shop_id, c.code, 'o' || c.id, c.id, c.campaign_id, c.batch_id, c.partner_id, "
                "CASE c.id % 3 WHEN 0 THEN 'web' WHEN 1 THEN 'pos' ELSE 'mobile' END, "
                "CASE WHEN c.id % 7 = 0 THEN 'EUR' ELSE 'USD' END, 4000 + c.id % 5000, 500, 5000, 1, 0, 'webhook', "
                "CASE WHEN c.id % 50 = 0 THEN 'rolled_back' ELSE 'active' END, "
                "CASE WHEN c.id % 97 = 0 THEN 'usage_limit_reached' END, "
                f"{ago.format(x='(c.id % 90) * 86400 + c.id % 7000')} "
                "FROM code AS c WHERE c.campaign_id = :c AND c.id < :hi"
            ),
            {"c": big, "hi": lo + n_redemptions},
        )
        spent = time.perf_counter() - started
        print(
            f"built    : {n_redemptions:,} redemptions (triggers on) in {spent:.1f} s ({n_redemptions / spent:,.0f}/s)",
            flush=True,
        )
        conn.execute(text("ANALYZE"))
    return shop_id, big


def _time(fn: Callable[[], Any], runs: int = 7) -> float:
    fn()  # warm
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _client(engine: Engine, shop_id: int) -> tuple[TestClient, str]:
    from plugin.web.app import create_app

    settings = Settings(
        database_url=str(engine.url), secret_key=Secret("bench-secret-0123456789-abcdefghijklmnop"), run_worker_in_process=False
    )
    settings = replace(settings, sandbox_enabled=False)
    client = TestClient(create_app(settings, engine=engine), base_url="http://127.0.0.1:8000", follow_redirects=False)
    client.__enter__()
    link = users.setup_link(settings, shop_id).removeprefix(settings.public_url)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(link).text)
    assert token
    answer = client.post(
        link, data={"csrf_token": token[1], "email": "o@bench.example", "password": PASSWORD, "confirm": PASSWORD}
    )
    assert answer.status_code == 303, answer.text
    with session_scope(engine) as session:
        _, key = apikeys.create_key(session, shop_id=shop_id, name="bench", scopes=("admin",))
    return client, key


def run(engine: Engine, n_codes: int, n_redemptions: int) -> None:
    print(f"database : {engine.dialect.name}", flush=True)
    shop_id, big = _build(engine, n_codes, n_redemptions)
    client, key = _client(engine, shop_id)
    auth = {"Authorization": f"Bearer {key}"}

    def service(*dims: str, medians: bool = True) -> Callable[[], Any]:
        def call() -> Any:
            with read_session(engine) as s:
                return results.results(s, shop_id=shop_id, query=results.Query(big, dims, medians=medians))

        return call

    def pk_lookup() -> Any:
        with read_session(engine) as s:
            return s.get(Campaign, big)

    def read_time_group_by() -> Any:
        with read_session(engine) as s:
            return (
                s.connection()
                .execute(
                    text(
                        "SELECT channel, currency, COUNT(*), SUM(subtotal - refunded), SUM(amount) FROM redemption "
                        "WHERE campaign_id = :c AND status = 'active' GROUP BY channel, currency"
                    ),
                    {"c": big},
                )
                .all()
            )

    def get(path: str, **params: str) -> Callable[[], Any]:
        def call() -> Any:
            response = client.get(path, params=params, headers=auth if path.startswith("/api") else {})
            assert response.status_code == 200, response.text[:500]
            return response

        return call

    api = f"/api/v1/campaigns/{big}/results"
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("baseline: primary-key lookup", pk_lookup),
        ("reference: read-time GROUP BY channel over rows", read_time_group_by),
        ("service: totals (median by index)", service()),
        ("service: by day", service("day")),
        ("service: by channel", service("channel")),
        ("service: by partner", service("partner")),
        ("service: by batch", service("batch")),
        ("service: by provider", service("provider")),
        ("service: by day and channel", service("day", "channel")),
        ("service: by day, no medians (charts)", service("day", medians=False)),
        ("API: totals as partners read them", get(api)),
        ("API: group_by=day", get(api, group_by="day")),
        ("API: group_by=channel", get(api, group_by="channel")),
        ("API: group_by=day,partner, csv", get(api, group_by="day,partner", format="csv")),
        ("admin: Results page (no grouping)", get(f"/admin/campaigns/{big}/results")),
        ("admin: Results page by channel", get(f"/admin/campaigns/{big}/results", group_by="channel")),
    ]
    print(f"{'what':<52}{'ms (median)':>12}")
    worst = 0.0
    for name, fn in cases:
        ms = _time(fn)
        if not name.startswith(("baseline", "reference")):
            worst = max(worst, ms)
        print(f"{name:<52}{ms:>12.2f}", flush=True)
    report = service()()
    money = ", ".join(f"{m.currency} {m.revenue:,}/{m.discount:,}" for m in report.totals.money)
    print(
        f"figures  : assigned {report.totals.assigned:,}, redeemed {report.totals.redeemed:,}, rolled back "
        f"{report.totals.rolled_back:,}, flagged {report.totals.flagged:,}; revenue/discount {money}; "
        f"median wait {report.totals.median_wait_seconds:,.0f} s"
    )
    print(f"worst    : {worst:.1f} ms (target < {TARGET_MS:.0f} ms): {'met' if worst < TARGET_MS else 'MISSED'}")
    client.__exit__(None, None, None)


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
        run(_fresh(f"sqlite:///{tmp}/results.db"), args.codes, args.redemptions)


if __name__ == "__main__":
    main()
