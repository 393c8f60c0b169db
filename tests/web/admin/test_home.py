"""Home: setup status and key figures read from the services, bounded; /admin answers (the
manifest's application URL); the vendored htmx is served with its licence and cached."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from plugin.overview import home as overview
from plugin.settings import Settings
from plugin.shops import apikeys
from plugin.store.models import Alert, Job, WebhookEvent, utcnow
from plugin.web.admin.render import static_url
from tests.web.admin.conftest import set_up_owner
from tests.web.conftest import basket, make_campaign, rules

ROOT = Path(__file__).resolve().parents[3]


def figure(page: str, name: str) -> str:
    found = re.search(rf'id="fig-{name}"[^>]*>(.*?)</dd>', page, re.S)
    assert found, page
    return found[1].strip()


def test_the_manifest_application_url_answers(web, admin_settings: Settings, shop_id: int) -> None:
    manifest = json.loads((ROOT / "manifest.json").read_text())
    answer = web.get(manifest["urls"]["application"])
    assert answer.status_code == 303 and answer.headers["location"].startswith("/admin/sign-in")  # not 404
    assert web.get("/admin", follow_redirects=True).status_code == 200  # on to the sign-in page
    set_up_owner(web, admin_settings, shop_id)
    assert "Key figures" in web.get(manifest["urls"]["application"]).text


def test_home_figures_move_with_the_shop(web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    empty = web.get("/admin/").text
    assert "Create your first campaign" in empty and figure(empty, "redemptions") == "0"
    assert "Sandbox store built in" in empty

    _campaign_id, codes = make_campaign(engine, shop_id, rules(), codes=5, status="active")
    make_campaign(engine, other_shop_id, rules(), codes=7, status="active")  # never counted here
    with Session(engine) as session:
        _, key = apikeys.create_key(session, shop_id=shop_id, name="t", scopes=("admin", "checkout"))
        session.commit()
    redeemed = web.post(
        "/api/v1/redemptions",
        headers={"Authorization": f"Bearer {key}"},
        json={"code": codes[0], "order_id": "o-1", "basket": basket(("p1", 2, 2500))},
    )
    assert redeemed.status_code in (200, 201), redeemed.text
    with Session(engine) as session:
        session.add(Job(shop_id=shop_id, kind="platform.push", status="dead", last_error="HTTP 500"))
        session.add(Job(shop_id=other_shop_id, kind="platform.push", status="dead", last_error="HTTP 500"))
        session.add(WebhookEvent(shop_id=shop_id, platform="sandbox", delivery_id="d-1", status="failed"))
        session.add(Alert(shop_id=shop_id, kind="pool_low", message="low"))
        session.commit()

    page = web.get("/admin/").text
    assert "First campaign created" in page
    assert figure(page, "active") == "1" and figure(page, "issued") == "5"
    assert figure(page, "free") == "4"  # one code is used
    assert figure(page, "redemptions") == "1"
    assert figure(page, "discount") == "GBP 5.00"  # 10% of £50.00
    assert 'class="attention">3' in page and "1 failed sync jobs" in page


def test_bounded_counts_stop_at_their_cap(engine: Engine, admin_settings: Settings, shop_id: int, monkeypatch) -> None:
    make_campaign(engine, shop_id, rules(), codes=30, status="active")
    monkeypatch.setattr(overview, "FREE_CODES_CAP", 10)
    with Session(engine) as session:
        facts = overview.figures(session, shop_id, now=utcnow())
    assert (facts.free_codes.shown, facts.free_codes.more) == (10, True)
    assert facts.codes_issued == 30
    assert not facts.attention_more


def test_needing_attention_says_when_it_is_a_floor(
    web, engine: Engine, admin_settings: Settings, shop_id: int, monkeypatch
) -> None:
    """Failures counted only up to their cap make the sum "at least": shown as 2+, not 2."""
    set_up_owner(web, admin_settings, shop_id)
    monkeypatch.setattr(overview, "FAILURES_CAP", 1)
    with Session(engine) as session:
        for _ in range(3):
            session.add(Job(shop_id=shop_id, kind="platform.push", status="dead", last_error="HTTP 500"))
        session.add(Alert(shop_id=shop_id, kind="pool_low", message="low"))
        session.commit()
    assert 'class="attention">2+<' in web.get("/admin/").text


def test_htmx_is_vendored_with_its_licence_and_cached(web) -> None:
    static = ROOT / "plugin" / "web" / "static" / "htmx"
    assert "Zero-Clause BSD" in (static / "LICENSE").read_text()
    url = static_url("htmx/htmx.min.js")
    answer = web.get(url)
    assert answer.status_code == 200 and "htmx" in answer.text[:2000]
    assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert web.get("/admin/static/htmx/htmx.min.js").headers["cache-control"] == "public, max-age=3600"
    assert web.get("/admin/static/../../app.py").status_code == 404
