"""`couponry campaigns results` / `redemption-log` and `couponry shops timezone`, on a database
the CLI migrated itself (SQLite: the migration installed the results triggers)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

from click.testing import CliRunner
from sqlmodel import col, select

from plugin.checkout.redemptions import record_redemption
from plugin.cli import main
from plugin.store.db import make_engine, session_scope
from plugin.store.models import Code
from tests.cli.test_cli import cli, cli_database_url  # noqa: F401  (fixtures)


def _ok(cli: CliRunner, *args: str) -> str:  # noqa: F811
    result = cli.invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_results_json_csv_log_and_time_zone(cli: CliRunner, cli_database_url: str) -> None:  # noqa: F811
    campaign_id = _ok(cli, "campaigns", "create", "--name", "Spring").strip()
    _ok(cli, "codes", "generate", "--campaign", campaign_id, "--count", "3")
    assert json.loads(_ok(cli, "shops", "timezone"))["timezone"] == "UTC"
    assert json.loads(_ok(cli, "shops", "timezone", "Pacific/Auckland"))["timezone"] == "Pacific/Auckland"
    refused = cli.invoke(main, ["shops", "timezone", "Mars/Olympus"])
    assert refused.exit_code == 1 and "IANA time zone" in refused.output
    engine = make_engine(cli_database_url)
    try:
        with session_scope(engine) as session:
            codes = session.exec(select(Code).where(col(Code.campaign_id) == int(campaign_id))).all()
            shop_id = codes[0].shop_id
            # 11:30 UTC on 7 Dec is 00:30 on 8 Dec in Auckland (UTC+13 in summer)
            at = datetime(2026, 12, 7, 11, 30, tzinfo=UTC)
            for i, code in enumerate(codes[:2]):
                record_redemption(
                    session,
                    shop_id=shop_id,
                    code=code.code,
                    order_id=f"o{i}",
                    now=at,
                    amount=250,
                    subtotal=5000,
                    currency=["USD", "EUR"][i],
                    channel="web",
                )
    finally:
        engine.dispose()
    report = json.loads(_ok(cli, "campaigns", "results", campaign_id, "--group-by", "day"))
    assert report["timezone"] == "Pacific/Auckland"
    assert [(g["key"]["day"], g["redeemed"]) for g in report["groups"]] == [("2026-12-08", 2)]
    assert sorted(m["currency"] for m in report["totals"]["money"]) == ["EUR", "USD"]  # never summed across
    assert report["totals"]["issued"] == 3
    table = list(csv.DictReader(io.StringIO(_ok(cli, "campaigns", "results", campaign_id, "--group-by", "channel", "--csv"))))
    assert {(r["channel"], r["currency"], r["revenue_minor"]) for r in table} == {
        ("web", "EUR", "4750"),
        ("web", "USD", "4750"),
        ("total", "EUR", "4750"),
        ("total", "USD", "4750"),
    }
    log = list(csv.DictReader(io.StringIO(_ok(cli, "campaigns", "redemption-log", campaign_id, "--from", "2026-12-08"))))
    assert sorted(r["order_id"] for r in log) == ["o0", "o1"]
    none = list(csv.DictReader(io.StringIO(_ok(cli, "campaigns", "redemption-log", campaign_id, "--to", "2026-12-07"))))
    assert none == []
    bad = cli.invoke(main, ["campaigns", "results", campaign_id, "--group-by", "colour"])
    assert bad.exit_code == 1 and "group_by" in bad.output
