"""The Results page: totals, a grouping's table, SVG charts with titles and a table fallback,
CSV of the table and of the log, errors next to their field, another shop's campaign not
found; the time zone setting saved or refused beside its field."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

from sqlalchemy import Engine
from sqlmodel import Session, select

from plugin.campaigns.campaigns import create_campaign
from plugin.distribution.partners import create_partner
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.models import AuditEvent, Code, Redemption, Shop
from tests.web.admin.conftest import form_token, set_up_owner


def _campaign(engine: Engine, shop_id: int) -> tuple[int, int]:
    rules = {"currency": "GBP", "discount": {"type": "fixed", "amount": 500}}
    with session_scope(engine) as session:
        campaign = create_campaign(session, shop_id=shop_id, name="Winter", rules=rules)
        partner = create_partner(session, shop_id=shop_id, name="Acme")
        cid, pid = campaign.id or 0, partner.id or 0
        start = datetime(2026, 11, 2, 12, tzinfo=UTC)
        for i in range(6):
            code = Code(
                shop_id=shop_id,
                campaign_id=cid,
                code=f"WIN{i}",
                recipient=f"r{i}@example.com",
                assigned_at=start - timedelta(hours=5),
                partner_id=pid if i % 2 else None,
            )
            session.add(code)
            session.flush()
            session.add(
                Redemption(
                    shop_id=shop_id,
                    code=code.code,
                    order_id=f"o{i}",
                    code_id=code.id,
                    campaign_id=cid,
                    partner_id=code.partner_id,
                    channel="web" if i < 4 else "pos",
                    currency="GBP" if i < 5 else "EUR",
                    subtotal=4000,
                    amount=500,
                    created_at=start + timedelta(days=i % 3),
                )
            )
    return cid, pid


def test_the_results_page_shows_totals_a_table_and_accessible_charts(
    web, engine: Engine, admin_settings: Settings, shop_id: int
) -> None:
    campaign_id, partner_id = _campaign(engine, shop_id)
    set_up_owner(web, admin_settings, shop_id)
    page = web.get(f"/admin/campaigns/{campaign_id}/results", params={"group_by": "channel"})
    assert page.status_code == 200
    assert 'id="res-redeemed">6<' in page.text and 'id="res-assigned">6<' in page.text
    assert "£175.00 / £25.00" in page.text and "€35.00 / €5.00" in page.text  # per currency, never added
    table = re.search(r'<table class="list" id="results-table">.*?</table>', page.text, re.S)
    assert table and '<th scope="row">web</th>' in table[0] and '<th scope="row">pos</th>' in table[0]
    svgs = re.findall(r"<svg class=\"chart\".*?</svg>", page.text, re.S)
    ids = [re.search(r'id="([^"]+)"', s)[1] for s in svgs]  # type: ignore[index]
    assert ids[:2] == ["chart-redemptions", "chart-discount"]
    assert {"chart-channel-GBP", "chart-channel-EUR", "chart-partner-GBP"} <= set(ids)
    for svg in svgs:
        root = ElementTree.fromstring(svg)  # well-formed SVG, named for assistive technology
        assert root.get("role") == "img" and root.get("aria-labelledby")
        ns = "{http://www.w3.org/2000/svg}"
        assert root.find(f"{ns}title") is not None and root.find(f"{ns}desc") is not None
    bars = re.findall(r"<title>(2026-11-0\d), Redemptions: (\d+)</title>", svgs[0])
    assert bars == [("2026-11-02", "2"), ("2026-11-03", "2"), ("2026-11-04", "2")]
    assert page.text.count("The figures of this chart as a table") == len(svgs)
    assert "<script" not in "".join(svgs) and "style=" not in "".join(svgs)  # nothing a strict CSP refuses
    filtered = web.get(f"/admin/campaigns/{campaign_id}/results", params={"partner_id": str(partner_id)})
    assert 'id="res-redeemed">3<' in filtered.text


def test_csv_exports_of_the_table_and_the_log(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    campaign_id, _ = _campaign(engine, shop_id)
    set_up_owner(web, admin_settings, shop_id)
    table = web.get(f"/admin/campaigns/{campaign_id}/results.csv", params={"group_by": "day"})
    assert table.status_code == 200 and table.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert [(r["day"], r["currency"], r["redeemed"]) for r in rows if r["day"] != "total"] == [
        ("2026-11-02", "GBP", "2"),
        ("2026-11-03", "GBP", "2"),
        ("2026-11-04", "EUR", "2"),
        ("2026-11-04", "GBP", "2"),
    ]
    log = web.get(f"/admin/campaigns/{campaign_id}/redemptions.csv", params={"from": "2026-11-03"})
    assert sorted(r["order_id"] for r in csv.DictReader(io.StringIO(log.text))) == ["o1", "o2", "o4", "o5"]
    with Session(engine) as session:
        actions = set(session.exec(select(AuditEvent.action).where(AuditEvent.shop_id == shop_id)).all())
    assert {"results.exported", "redemptions.exported"} <= actions
    assert web.get(f"/admin/campaigns/{campaign_id}/results.csv", params={"group_by": "colour"}).status_code == 422


def test_bad_filters_are_shown_next_to_their_field(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    campaign_id, _ = _campaign(engine, shop_id)
    with session_scope(engine) as session:
        theirs = create_partner(session, shop_id=other_shop_id, name="Theirs").id
    set_up_owner(web, admin_settings, shop_id)
    bad = web.get(f"/admin/campaigns/{campaign_id}/results", params={"from": "2026-11-05", "to": "2026-11-01"})
    assert bad.status_code == 422 and 'id="e-from" role="alert">from must be on or before to' in bad.text
    foreign = web.get(f"/admin/campaigns/{campaign_id}/results", params={"partner_id": str(theirs)})
    assert foreign.status_code == 422 and 'id="e-partner_id"' in foreign.text and 'id="res-redeemed">6<' in foreign.text


def test_another_shops_campaign_is_not_found(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    theirs, _ = _campaign(engine, other_shop_id)
    set_up_owner(web, admin_settings, shop_id)
    for path in ("results", "results.csv", "redemptions.csv"):
        assert web.get(f"/admin/campaigns/{theirs}/{path}").status_code == 404


def test_the_time_zone_is_saved_or_refused_beside_its_field(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    campaign_id, _ = _campaign(engine, shop_id)
    set_up_owner(web, admin_settings, shop_id)
    token = form_token(web.get("/admin/settings").text)
    refused = web.post("/admin/settings/timezone", data={"csrf_token": token, "timezone": "Atlantis/Capital"})
    assert refused.status_code == 422 and 'id="e-timezone" role="alert"' in refused.text
    saved = web.post("/admin/settings/timezone", data={"csrf_token": token, "timezone": "Asia/Tokyo"})
    assert saved.status_code == 303 and saved.headers["location"] == "/admin/settings#timezone"
    with Session(engine) as session:
        assert session.get(Shop, shop_id).timezone == "Asia/Tokyo"  # type: ignore[union-attr]
    # 12:00 UTC is 21:00 in Tokyo: the days stay, and the page names the zone
    page = web.get(f"/admin/campaigns/{campaign_id}/results", params={"group_by": "day"})
    assert "<strong>Asia/Tokyo</strong>" in page.text
    assert web.post("/admin/settings/timezone", data={"csrf_token": "forged", "timezone": "UTC"}).status_code == 403
