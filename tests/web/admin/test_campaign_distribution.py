"""The campaign form's distribution settings beside the binding: what a cancelled order does to
its code (`on_cancel`) and the campaign pool's low-stock alert and top-up (poolhealth), saved with
the campaign in one transaction and one audit row; errors beside their field; tenants apart."""

from __future__ import annotations

import re

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.distribution import poolhealth
from plugin.settings import Settings
from plugin.store.models import AuditEvent, Campaign, PoolPolicy
from tests.web.admin.conftest import form_token, set_up_owner
from tests.web.admin.test_campaigns_page import _new
from tests.web.conftest import make_campaign, rules


def _campaigns(engine: Engine, shop_id: int) -> list[Campaign]:
    with Session(engine) as session:
        return list(session.exec(select(Campaign).where(col(Campaign.shop_id) == shop_id)).all())


def test_create_and_edit_the_distribution_settings(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    page = web.get("/admin/campaigns/new").text
    assert re.search(r'<option value="restore" selected>', page) and 'id="f-pool_alert_below"' in page
    token = form_token(page)
    made = web.post(
        "/admin/campaigns/new",
        data=_new(csrf_token=token, on_cancel="reissue", pool_alert_below="20", pool_topup_below="10", pool_topup_count="500"),
    )
    assert made.status_code == 303, made.text
    campaign_id = int(made.headers["location"].rsplit("/", 1)[1])
    with Session(engine) as session:
        assert session.get_one(Campaign, campaign_id).rules["on_cancel"] == "reissue"
        policy = session.get_one(PoolPolicy, campaign_id)
        assert (policy.shop_id, policy.alert_below, policy.topup_below, policy.topup_count) == (shop_id, 20, 10, 500)
        created = session.exec(select(AuditEvent).where(col(AuditEvent.subject) == f"campaign:{campaign_id}")).all()
    assert [(e.action, e.details) for e in created] == [
        ("campaign.created", {"pool": {"alert_below": 20, "topup_below": 10, "topup_count": 500}})
    ]
    shown = web.get(f"/admin/campaigns/{campaign_id}").text  # the edit form shows back what was saved
    assert '<option value="reissue" selected>' in shown
    assert (
        'name="pool_alert_below" type="number" value="20"' in shown
        and 'name="pool_topup_count" type="number" value="500"' in shown
    )
    assert '"on_cancel"' not in shown.split('id="f-rules_json"')[1].split("</textarea>")[0]  # a plain field, not JSON
    edited = web.post(
        f"/admin/campaigns/{campaign_id}",
        data=_new(csrf_token=token, on_cancel="keep", pool_alert_below="5", pool_topup_below="", pool_topup_count=""),
    )
    assert edited.status_code == 303, edited.text
    with Session(engine) as session:
        assert session.get_one(Campaign, campaign_id).rules["on_cancel"] == "keep"
        again = session.get_one(PoolPolicy, campaign_id)
        assert (again.alert_below, again.topup_below, again.topup_count) == (5, None, 0)
        updates = session.exec(
            select(AuditEvent.action).where(
                col(AuditEvent.subject) == f"campaign:{campaign_id}", col(AuditEvent.action) == "campaign.updated"
            )
        ).all()
    assert updates == ["campaign.updated"]


def test_defaults_write_no_pool_row(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    token = form_token(web.get("/admin/campaigns/new").text)
    made = web.post("/admin/campaigns/new", data=_new(csrf_token=token, on_cancel="restore", pool_alert_below="100"))
    assert made.status_code == 303
    campaign_id = int(made.headers["location"].rsplit("/", 1)[1])
    with Session(engine) as session:
        assert session.get(PoolPolicy, campaign_id) is None
        assert poolhealth.campaign_policy(session, shop_id=shop_id, campaign_id=campaign_id) == poolhealth.Policy()


def test_bad_settings_are_shown_beside_their_field_and_save_nothing(
    web, engine: Engine, admin_settings: Settings, shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    token = form_token(web.get("/admin/campaigns/new").text)
    burn = web.post("/admin/campaigns/new", data=_new(csrf_token=token, on_cancel="burn"))
    assert burn.status_code == 422 and re.search(r'id="e-on_cancel"[^>]*>restore, reissue or keep', burn.text)
    words = web.post("/admin/campaigns/new", data=_new(csrf_token=token, pool_topup_below="ten"))
    assert words.status_code == 422 and re.search(r'id="f-pool_topup_below"[^>]*aria-invalid="true"', words.text)
    negative = web.post("/admin/campaigns/new", data=_new(csrf_token=token, pool_alert_below="-1"))
    assert negative.status_code == 422 and 'id="e-pool_alert_below"' in negative.text
    # the service's check (a top-up needs a count) beside the count; the campaign is not created either
    no_count = web.post("/admin/campaigns/new", data=_new(csrf_token=token, pool_topup_below="10"))
    assert no_count.status_code == 422 and re.search(r'id="e-pool_topup_count"[^>]*>a top-up needs a count', no_count.text)
    assert 'value="10"' in no_count.text  # what they typed is kept
    assert _campaigns(engine, shop_id) == []
    assert web.post("/admin/campaigns/new", data=_new(on_cancel="keep")).status_code == 403  # CSRF


def test_another_shops_campaign_settings_are_out_of_reach(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    theirs, _ = make_campaign(engine, other_shop_id, rules(), name="Theirs")
    with Session(engine) as session:
        session.add(PoolPolicy(campaign_id=theirs, shop_id=other_shop_id, alert_below=7))
        session.commit()
    set_up_owner(web, admin_settings, shop_id)
    token = form_token(web.get("/admin/campaigns/new").text)
    assert web.get(f"/admin/campaigns/{theirs}").status_code == 404
    answer = web.post(f"/admin/campaigns/{theirs}", data=_new(csrf_token=token, pool_alert_below="1", on_cancel="keep"))
    assert answer.status_code == 404
    with Session(engine) as session:
        assert session.get_one(PoolPolicy, theirs).alert_below == 7
        assert session.get_one(Campaign, theirs).rules.get("on_cancel", "restore") == "restore"


def test_the_expiry_reminder_is_a_campaign_setting_with_its_errors_beside_it(
    web, engine: Engine, admin_settings: Settings, shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    page = web.get("/admin/campaigns/new").text
    assert 'id="f-remind_days_before_expiry"' in page
    token = form_token(page)
    made = web.post("/admin/campaigns/new", data=_new(csrf_token=token, remind_days_before_expiry="3"))
    assert made.status_code == 303, made.text
    campaign_id = int(made.headers["location"].rsplit("/", 1)[1])
    with Session(engine) as session:
        assert session.get_one(Campaign, campaign_id).rules["distribution"]["remind_days_before_expiry"] == 3
    shown = web.get(f"/admin/campaigns/{campaign_id}").text
    assert 'name="remind_days_before_expiry" type="number" value="3"' in shown
    assert "remind_days_before_expiry" not in shown.split('id="f-rules_json"')[1].split("</textarea>")[0]
    for bad, why in (("400", "less than or equal to 365"), ("0", "at least 1"), ("soon", "whole number")):
        refused = web.post(f"/admin/campaigns/{campaign_id}", data=_new(csrf_token=token, remind_days_before_expiry=bad))
        assert refused.status_code == 422, bad
        field = refused.text.split('id="f-remind_days_before_expiry"')[1].split("</div>")[0]
        assert why in refused.text and "error" in field, (bad, field[:300])
    with Session(engine) as session:  # nothing saved by the refusals
        assert session.get_one(Campaign, campaign_id).rules["distribution"]["remind_days_before_expiry"] == 3
    cleared = web.post(f"/admin/campaigns/{campaign_id}", data=_new(csrf_token=token, remind_days_before_expiry=""))
    assert cleared.status_code == 303
    with Session(engine) as session:
        assert session.get_one(Campaign, campaign_id).rules["distribution"].get("remind_days_before_expiry") is None
