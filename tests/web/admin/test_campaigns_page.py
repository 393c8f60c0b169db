"""The Campaigns pages: keyset list with figures against budgets, create and edit through plain
fields and the JSON rules editor (errors beside their field), the live format preview, pause /
resume / end with the platform's outcome; CSRF, tenants and surfaces."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.settings import Settings
from plugin.store.models import AuditEvent, Campaign, Code, Job
from plugin.web.admin.context import bigcommerce_token
from tests.web.admin.conftest import add_shop, form_token, set_up_owner
from tests.web.conftest import make_campaign, rules


def _signed_in(web: Any, settings: Settings, shop_id: int) -> str:
    set_up_owner(web, settings, shop_id)
    return form_token(web.get("/admin/campaigns/new").text)


def _new(**values: str) -> dict[str, str]:
    base = {"name": "Spring", "currency": "GBP", "alphabet": "safe", "length": "10", "group_size": "0",
            "discount_type": "percentage", "discount_value": "15", "uses_per_code": "1", "binding": "shareable",
            "start": "active"}  # fmt: skip
    return {**base, **values}


def test_create_a_campaign_from_the_plain_fields(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    token = _signed_in(web, admin_settings, shop_id)
    answer = web.post(
        "/admin/campaigns/new",
        data=_new(csrf_token=token, minimum_subtotal="20.00", max_redemptions="500", max_discount="1000",
                  ends_at="2030-01-31T23:59", binding="claim",
                  rules_json='{"allowed_channels": ["web"], "stacking": {"with_other_codes": true}}'),
    )  # fmt: skip
    assert answer.status_code == 303, answer.text
    campaign_id = int(answer.headers["location"].rsplit("/", 1)[1])
    with Session(engine) as session:
        campaign = session.get_one(Campaign, campaign_id)
        assert campaign.shop_id == shop_id and campaign.status == "active" and campaign.currency == "GBP"
        r = campaign.rules
        assert r["discount"] == {"type": "percentage", "percent": "15", "max_amount": None}
        assert r["basket"]["minimum_subtotal"] == 2000 and r["budget"] == {"max_redemptions": 500, "max_discount": 100000}
        assert r["time"]["ends_at"].startswith("2030-01-31T23:59") and r["distribution"]["binding"] == "claim"
        assert r["allowed_channels"] == ["web"] and r["stacking"]["with_other_codes"] is True
        audit = session.exec(
            select(AuditEvent.action, AuditEvent.actor).where(col(AuditEvent.subject) == f"campaign:{campaign_id}")
        ).all()
    assert ("campaign.created", "user:1:owner@shop.example") in [(a, re.sub(r"user:\d+:", "user:1:", b)) for a, b in audit]
    page = web.get(f"/admin/campaigns/{campaign_id}")
    assert page.status_code == 200 and 'id="platform"' in page.text and "bits" in page.text
    # the edit form shows back what was saved: plain fields, and the rest in the JSON editor
    assert 'name="minimum_subtotal" type="text" value="20.00"' in page.text
    assert "allowed_channels" in page.text and "minimum_subtotal&#34;" not in page.text


def test_bad_input_is_shown_next_to_its_field_and_nothing_is_created(
    web, engine: Engine, admin_settings: Settings, shop_id: int
) -> None:
    token = _signed_in(web, admin_settings, shop_id)
    cases = {
        "discount_value": {"discount_value": "150"},  # over 100%
        "minimum_subtotal": {"minimum_subtotal": "12.345"},  # GBP has 2 decimals
        "uses_per_code": {"uses_per_code": "zero"},
        "rules_json": {"rules_json": "{not json"},
        "length": {"length": "3"},
        "name": {"name": "   "},
    }
    for field, bad in cases.items():
        answer = web.post("/admin/campaigns/new", data=_new(csrf_token=token, **bad))
        assert answer.status_code == 422, (field, answer.text)
        assert re.search(rf'id="f-{field}"[^>]*aria-invalid="true" aria-describedby="e-{field}"', answer.text), field
        assert f'id="e-{field}"' in answer.text
    advanced = web.post(
        "/admin/campaigns/new", data=_new(csrf_token=token, rules_json='{"discount": {"type": "tiered", "tiers": []}}')
    )
    assert advanced.status_code == 422 and 'id="e-discount_value"' in advanced.text  # the discount's error beside the discount
    with Session(engine) as session:
        assert session.exec(select(Campaign).where(col(Campaign.shop_id) == shop_id)).all() == []


def test_an_advanced_discount_comes_from_the_json_editor(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    token = _signed_in(web, admin_settings, shop_id)
    tiers = '{"discount": {"type": "tiered", "tiers": [{"min_subtotal": 5000, "reward": {"type": "fixed", "amount": 500}}]}}'
    answer = web.post(
        "/admin/campaigns/new", data=_new(csrf_token=token, discount_type="advanced", discount_value="", rules_json=tiers)
    )
    assert answer.status_code == 303, answer.text
    missing = web.post("/admin/campaigns/new", data=_new(csrf_token=token, discount_type="advanced", discount_value=""))
    assert missing.status_code == 422 and 'id="e-rules_json"' in missing.text


def test_the_preview_shows_samples_entropy_and_odds(web, admin_settings: Settings, shop_id: int) -> None:
    _signed_in(web, admin_settings, shop_id)
    small = web.get("/admin/campaigns/preview", params={"alphabet": "numeric", "length": "4", "planned": "5000"},
                    headers={"HX-Request": "true"})  # fmt: skip
    assert small.status_code == 200
    assert re.search(r'id="entropy">13\.3 bits<', small.text)
    assert len(re.findall(r"<li><code>\d{4}</code></li>", small.text)) == 5
    assert 'id="capacity"' in small.text  # 5,000 of 10,000 possible codes: refused up front, with the numbers
    safe = web.get("/admin/campaigns/preview", params={"alphabet": "safe", "length": "12", "prefix": "VIP-", "planned": "1000"})
    assert 'id="capacity"' not in safe.text and len(re.findall(r"<code>VIP-", safe.text)) == 5
    bad = web.get("/admin/campaigns/preview", params={"alphabet": "safe", "length": "2"})
    assert bad.status_code == 200 and "field-error" in bad.text and "<code>" not in bad.text


def test_edit_keeps_the_rules_it_does_not_show(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(allowed_channels=["pos"], usage={"uses_per_code": 3}), status="active")
    _signed_in(web, admin_settings, shop_id)
    page = web.get(f"/admin/campaigns/{campaign_id}")
    values = dict(re.findall(r'name="([a-z_]+)" type="[a-z-]+" value="([^"]*)"', page.text))
    assert values["uses_per_code"] == "3" and values["discount_value"] == "10"
    json_text = re.search(r'<textarea id="f-rules_json"[^>]*>([^<]*)</textarea>', page.text)
    assert json_text and "pos" in json_text[1]
    data = {**values, "csrf_token": form_token(page.text), "discount_type": "percentage", "discount_value": "20"}
    data.update(binding="shareable", rules_json=json_text[1].replace("&#34;", '"'))
    answer = web.post(f"/admin/campaigns/{campaign_id}", data=data)
    assert answer.status_code == 303, answer.text
    with Session(engine) as session:
        r = session.get_one(Campaign, campaign_id).rules
    assert r["discount"]["percent"] == "20" and r["allowed_channels"] == ["pos"] and r["usage"]["uses_per_code"] == 3
    bad = web.post(f"/admin/campaigns/{campaign_id}", data={**data, "discount_value": "-1"})
    assert bad.status_code == 422 and 'id="e-discount_value"' in bad.text


def test_list_pages_by_keyset_and_filters_by_status(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    ids = [
        make_campaign(engine, shop_id, rules(budget={"max_redemptions": 50}), name=f"C{i}", status="active")[0] for i in range(27)
    ]
    draft, _ = make_campaign(engine, shop_id, None, name="Drafty")
    _signed_in(web, admin_settings, shop_id)
    first = web.get("/admin/campaigns")
    assert first.status_code == 200 and "Drafty" in first.text and "/ 50" in first.text
    nxt = re.search(r'<a rel="next" href="([^"]+)"', first.text)
    assert nxt, first.text
    second = web.get(nxt[1].replace("&amp;", "&"))
    seen = re.findall(r'href="/admin/campaigns/(\d+)"', first.text) + re.findall(r'href="/admin/campaigns/(\d+)"', second.text)
    assert sorted(map(int, seen)) == sorted([*ids, draft])  # every campaign once, across pages
    drafts = web.get("/admin/campaigns", params={"status": "draft"})
    assert re.findall(r'href="/admin/campaigns/(\d+)"', drafts.text) == [str(draft)]
    assert web.get("/admin/campaigns", params={"status": "bogus"}).status_code == 422
    assert web.get("/admin/campaigns", params={"after": "garbage"}).status_code == 422


def test_pause_resume_end_queue_the_platform_follow_and_show_refusals(
    web, engine: Engine, admin_settings: Settings, shop_id: int
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), status="active")
    with Session(engine) as session:  # as if its codes had been pushed: the platform holds a discount
        campaign = session.get_one(Campaign, campaign_id)
        campaign.platform_discount_id = "sandbox-discount-1"
        session.add(campaign)
        session.commit()
    _signed_in(web, admin_settings, shop_id)
    token = form_token(web.get(f"/admin/campaigns/{campaign_id}").text)
    for action, status in (("pause", "paused"), ("resume", "active"), ("end", "ended")):
        answer = web.post(f"/admin/campaigns/{campaign_id}/status", data={"csrf_token": token, "action": action})
        assert answer.status_code == 303, answer.text
        with Session(engine) as session:
            assert session.get_one(Campaign, campaign_id).status == status
    with Session(engine) as session:
        kinds = session.exec(select(Job.kind).where(col(Job.shop_id) == shop_id)).all()
        actions = session.exec(select(AuditEvent.action).where(col(AuditEvent.subject) == f"campaign:{campaign_id}")).all()
    assert "sync.follow" in kinds
    assert {"campaign.pause", "campaign.resume", "campaign.end"} <= set(actions)
    with Session(engine) as session:  # what the sync.follow job records when it has run
        session.add(AuditEvent(shop_id=shop_id, action="campaign.platform_followed", subject=f"campaign:{campaign_id}",
                               actor="worker", details={"status": "ended", "deactivated": True}))  # fmt: skip
        session.commit()
    page = web.get(f"/admin/campaigns/{campaign_id}")
    assert 'id="campaign-status">ended<' in page.text and "sandbox-discount-1" in page.text
    assert re.search(r'id="last-follow">[^<]*platform followed[^<]*deactivated: True; status: ended', page.text)
    refused = web.post(f"/admin/campaigns/{campaign_id}/status", data={"csrf_token": token, "action": "resume"})
    assert refused.status_code == 409 and 'id="e-action"' in refused.text and "ended campaign" in refused.text


def test_posts_without_csrf_are_refused(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), status="active")
    _signed_in(web, admin_settings, shop_id)
    assert web.post("/admin/campaigns/new", data=_new()).status_code == 403
    assert web.post(f"/admin/campaigns/{campaign_id}/status", data={"action": "end", "csrf_token": "forged"}).status_code == 403
    assert web.post(f"/admin/campaigns/{campaign_id}", data={"name": "x"}).status_code == 403
    with Session(engine) as session:
        assert session.get_one(Campaign, campaign_id).status == "active"


def test_another_shops_campaign_answers_404(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    theirs, _ = make_campaign(engine, other_shop_id, rules(), name="Theirs", status="active")
    token = _signed_in(web, admin_settings, shop_id)
    assert web.get(f"/admin/campaigns/{theirs}").status_code == 404
    assert web.get("/admin/campaigns/999999").status_code == 404
    assert web.post(f"/admin/campaigns/{theirs}/status", data={"csrf_token": token, "action": "end"}).status_code == 404
    assert web.post(f"/admin/campaigns/{theirs}", data=_new(csrf_token=token)).status_code == 404
    assert "Theirs" not in web.get("/admin/campaigns").text
    with Session(engine) as session:
        assert session.get_one(Campaign, theirs).status == "active"


def test_surfaces_without_a_credential_are_refused(web, engine: Engine) -> None:
    assert web.get("/admin/campaigns").status_code == 303  # standalone: to sign in
    assert web.get("/admin/campaigns/preview", headers={"HX-Request": "true"}).status_code == 401
    bc = add_shop(engine, "bigcommerce", "abc123")
    staff = bigcommerce_token(Settings(database_url="sqlite://", secret_key=web.app.state.settings.secret_key), shop_id=bc,
                              user_id="7", owner=False)  # fmt: skip
    page = web.get("/admin/campaigns", params={"t": staff})
    assert page.status_code == 200 and "?t=" in page.text  # every link carries the page token
    assert web.get("/admin/campaigns", params={"t": staff + "x"}).status_code == 401


def test_push_codes_queues_a_push_and_sends_failed_codes_again(
    web, engine: Engine, admin_settings: Settings, shop_id: int
) -> None:
    """Generated or imported codes reach the platform only when pushed: the campaign page's button
    queues the push (as `couponry codes sync --retry-failed`), failed codes pending again."""
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=5, status="active")
    with Session(engine) as session:
        for code in session.exec(select(Code).where(col(Code.code).in_(stored[:2]))).all():
            code.sync_status, code.sync_error = "failed", "HTTP 500"
            session.add(code)
        session.commit()
    _signed_in(web, admin_settings, shop_id)
    token = form_token(web.get(f"/admin/campaigns/{campaign_id}").text)
    answer = web.post(f"/admin/campaigns/{campaign_id}/sync", data={"csrf_token": token})
    assert answer.status_code == 303 and answer.headers["location"].endswith(f"/admin/campaigns/{campaign_id}?synced=2")
    with Session(engine) as session:
        jobs = session.exec(select(Job).where(col(Job.shop_id) == shop_id, col(Job.kind) == "sync.push")).all()
        statuses = session.exec(select(Code.sync_status).where(col(Code.campaign_id) == campaign_id)).all()
        audit = session.exec(select(AuditEvent).where(col(AuditEvent.action) == "campaign.sync_queued")).one()
    assert [j.payload["campaign_id"] for j in jobs] == [campaign_id] and set(statuses) == {"pending"}
    assert audit.subject == f"campaign:{campaign_id}" and audit.actor.startswith("user:")
    page = web.get(answer.headers["location"])
    assert 'id="sync-queued"' in page.text and "2 failed codes sent again" in page.text


def test_push_codes_refused_says_why_beside_the_button(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2, status="draft")
    with Session(engine) as session:  # a draft without a discount yet: nothing the platform could hold
        campaign = session.get_one(Campaign, campaign_id)
        campaign.rules = {}
        session.add(campaign)
        session.commit()
    _signed_in(web, admin_settings, shop_id)
    token = form_token(web.get(f"/admin/campaigns/{campaign_id}").text)
    refused = web.post(f"/admin/campaigns/{campaign_id}/sync", data={"csrf_token": token})
    assert refused.status_code == 409 and re.search(r'id="e-sync">[^<]*no rules yet', refused.text)
    with Session(engine) as session:
        assert session.exec(select(Job).where(col(Job.shop_id) == shop_id)).first() is None


def test_push_codes_needs_csrf_and_this_shops_campaign(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    theirs, _ = make_campaign(engine, other_shop_id, rules(), codes=2, status="active")
    mine, _ = make_campaign(engine, shop_id, rules(), codes=2, status="active")
    token = _signed_in(web, admin_settings, shop_id)
    assert web.post(f"/admin/campaigns/{mine}/sync", data={"csrf_token": "forged"}).status_code == 403
    assert web.post(f"/admin/campaigns/{theirs}/sync", data={"csrf_token": token}).status_code == 404
    with Session(engine) as session:
        assert session.exec(select(Job).where(col(Job.kind) == "sync.push")).first() is None


def test_a_new_campaign_shows_its_preview_from_the_first_load(web, admin_settings: Settings, shop_id: int) -> None:
    """The live preview is there before the merchant changes anything: the default format's samples and odds."""
    _signed_in(web, admin_settings, shop_id)
    page = web.get("/admin/campaigns/new")
    assert page.status_code == 200 and re.search(r'id="entropy">47\.5 bits<', page.text)  # 10 of 27 symbols
    assert len(re.findall(r'<ul class="samples"><li>|<li><code>[A-Z0-9]{10}</code></li>', page.text)) >= 5
