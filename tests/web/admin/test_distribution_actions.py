"""Distribution page actions through the same services as the API: a partner's block, a referral
program, a Klaviyo pool (create, fill, retry its failed uploads, top-up policy). Each is one audit
row naming who did it; bad input beside its field; CSRF; owner-only set-up; other shops' ids 404."""

from __future__ import annotations

import re

from sqlalchemy import Engine, update
from sqlmodel import Session, col, func, select

from plugin.settings import Settings
from plugin.store.models import AuditEvent, Code, CouponPool, Job, Partner, PoolUpload, ReferralProgram
from plugin.web.admin.context import bigcommerce_token
from tests.web.admin.conftest import TestClient, add_shop, form_token, set_up_owner
from tests.web.conftest import make_campaign, rules

OWNER_ACTOR = "user:1:owner@shop.example"


def audit(engine: Engine, shop_id: int, action: str) -> list[tuple[str, str, dict]]:
    with Session(engine) as session:
        rows = session.exec(select(AuditEvent).where(col(AuditEvent.shop_id) == shop_id, col(AuditEvent.action) == action)).all()
        return [(e.actor, e.subject, e.details) for e in rows]


def add_partner(engine: Engine, shop_id: int, name: str) -> int:
    with Session(engine) as session:
        partner = Partner(shop_id=shop_id, name=name)
        session.add(partner)
        session.commit()
        assert partner.id is not None
        return partner.id


def test_an_owner_gives_a_partner_a_block(
    web: TestClient, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=5, status="active")
    partner_id = add_partner(engine, shop_id, "Acme")
    theirs = add_partner(engine, other_shop_id, "Theirs")
    page = web.get("/admin/distribution", params={"campaign": campaign_id})
    assert 'id="allocate-form"' in page.text
    token = form_token(page.text)
    base = {"csrf_token": token, "campaign": str(campaign_id), "block_partner": str(partner_id)}
    made = web.post("/admin/distribution/allocations", data={**base, "block_count": "3"})
    assert made.status_code == 201 and re.search(r'id="allocated">3 of 3 codes moved', made.text)
    short = web.post("/admin/distribution/allocations", data={**base, "block_count": "10"})
    assert short.status_code == 201 and "2 of 10 codes moved" in short.text and "no more free codes" in short.text
    with Session(engine) as session:
        in_block = session.exec(select(func.count()).where(col(Code.partner_id) == partner_id)).one()
    assert in_block == 5
    # bad input beside its field; nothing moved, nothing audited
    for count, message in (("three", "must be a whole number"), ("0", "at least 1"), ("", "how many codes")):
        bad = web.post("/admin/distribution/allocations", data={**base, "block_count": count})
        assert bad.status_code == 422 and re.search(rf'id="e-block_count"[^>]*>[^<]*{message}', bad.text), count
    nobody = web.post("/admin/distribution/allocations", data={**base, "block_partner": "", "block_count": "1"})
    assert nobody.status_code == 422 and 'id="e-block_partner"' in nobody.text
    assert web.post("/admin/distribution/allocations", data={**base, "csrf_token": "", "block_count": "1"}).status_code == 403
    # another shop's partner: as if it did not exist
    other = web.post("/admin/distribution/allocations", data={**base, "block_partner": str(theirs), "block_count": "1"})
    assert other.status_code == 404
    rows = audit(engine, shop_id, "partner.codes_allocated")
    assert [(actor, subject, d["requested"]) for actor, subject, d in rows] == [
        (OWNER_ACTOR, f"partner:{partner_id}", 3),
        (OWNER_ACTOR, f"partner:{partner_id}", 10),
    ]


def test_an_owner_sets_up_a_referral_program(
    web: TestClient, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1, status="active", name="Share")
    reward_id, _ = make_campaign(engine, shop_id, rules(), name="Rewards")
    theirs, _ = make_campaign(engine, other_shop_id, rules(), name="Theirs")
    token = form_token(web.get("/admin/distribution").text)
    data = {"csrf_token": token, "program_campaign": str(campaign_id), "reward_campaign": str(reward_id)}
    same = web.post("/admin/distribution/programs", data={**data, "reward_campaign": str(campaign_id)})
    assert same.status_code == 422 and re.search(r'id="e-reward_campaign"[^>]*>rewards come from another campaign', same.text)
    fax = web.post("/admin/distribution/programs", data={**data, "program_provider": "fax"})
    assert fax.status_code == 422 and re.search(r'id="e-program_provider"[^>]*>unknown provider', fax.text)
    missing = web.post("/admin/distribution/programs", data={**data, "program_campaign": ""})
    assert missing.status_code == 422 and 'id="e-program_campaign"' in missing.text
    assert web.post("/admin/distribution/programs", data={**data, "reward_campaign": str(theirs)}).status_code == 404
    ok = web.post("/admin/distribution/programs", data={**data, "program_provider": "klaviyo"})
    assert ok.status_code == 303
    with Session(engine) as session:
        program = session.get_one(ReferralProgram, campaign_id)
    assert (program.shop_id, program.reward_campaign_id, program.provider) == (shop_id, reward_id, "klaviyo")
    page = web.get("/admin/distribution").text
    assert f"Campaign {campaign_id} (shareable codes) rewards referrers from campaign {reward_id}, pushed through klaviyo" in page
    assert audit(engine, shop_id, "referral.program_set") == [
        (OWNER_ACTOR, f"campaign:{campaign_id}", {"reward_campaign_id": reward_id, "provider": "klaviyo"})
    ]


def test_a_klaviyo_pool_is_created_filled_retried_and_topped_up(
    web: TestClient, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=6, status="active", name="Spring")
    token = form_token(web.get("/admin/distribution").text)
    data = {"csrf_token": token, "pool_campaign": str(campaign_id), "coupon_id": "SPRING_POOL", "pool_count": "2"}
    bad_id = web.post("/admin/distribution/pools", data={**data, "coupon_id": "spring pool!"})
    assert bad_id.status_code == 422 and re.search(r'id="e-coupon_id"[^>]*>a Klaviyo coupon id is', bad_id.text)
    no_count = web.post("/admin/distribution/pools", data={**data, "pool_topup_below": "10"})
    assert no_count.status_code == 422 and re.search(r'id="e-pool_topup_count"[^>]*>a top-up needs a count', no_count.text)
    assert 'value="SPRING_POOL"' in no_count.text  # what they typed is kept
    made = web.post("/admin/distribution/pools", data={**data, "pool_topup_below": "10", "pool_topup_count": "50"})
    assert made.status_code == 303
    with Session(engine) as session:
        pool = session.exec(select(CouponPool).where(col(CouponPool.shop_id) == shop_id)).one()
        assert (pool.coupon_id, pool.topup_below, pool.topup_count, pool.alert_below) == ("SPRING_POOL", 10, 50, 100)
        uploads = session.exec(select(PoolUpload.status).where(col(PoolUpload.pool_id) == pool.id)).all()
        assert uploads == ["queued", "queued"]
        assert session.exec(select(Job.kind).where(col(Job.shop_id) == shop_id, col(Job.kind) == "klaviyo.upload")).all()
    pool_id = pool.id
    # fill it: bad counts beside the pool, then 3 more codes
    zero = web.post(f"/admin/distribution/pools/{pool_id}/codes", data={"csrf_token": token, "count": "0"})
    assert zero.status_code == 422 and re.search(rf'id="e-pool-{pool_id}"[^>]*>count must be 1 to', zero.text)
    assert f'aria-describedby="e-pool-{pool_id}"' in zero.text
    assert web.post(f"/admin/distribution/pools/{pool_id}/codes", data={"csrf_token": token, "count": "3"}).status_code == 303
    with Session(engine) as session:
        assert session.exec(select(func.count()).where(col(PoolUpload.pool_id) == pool_id)).one() == 5
        session.execute(update(PoolUpload).where(col(PoolUpload.pool_id) == pool_id).values(status="failed", error="400"))
        session.commit()
    page = web.get("/admin/distribution").text
    assert "5 failed to upload" in page and "Retry failed uploads" in page
    assert web.post(f"/admin/distribution/pools/{pool_id}/retry", data={"csrf_token": token}).status_code == 303
    with Session(engine) as session:
        statuses = set(session.exec(select(PoolUpload.status).where(col(PoolUpload.pool_id) == pool_id)).all())
    assert statuses == {"queued"}
    # its top-up policy
    policy = {"csrf_token": token, "alert_below": "20", "topup_below": "", "topup_count": ""}
    assert web.post(f"/admin/distribution/pools/{pool_id}/policy", data=policy).status_code == 303
    bad = web.post(f"/admin/distribution/pools/{pool_id}/policy", data={**policy, "alert_below": "-1"})
    assert bad.status_code == 422 and re.search(
        rf'id="e-pool-{pool_id}"[^>]*>thresholds and counts must not be negative', bad.text
    )
    with Session(engine) as session:
        again = session.get_one(CouponPool, pool_id)
    assert (again.alert_below, again.topup_below, again.topup_count) == (20, None, 0)
    actions = {
        action: audit(engine, shop_id, action)
        for action in ("klaviyo_pool.created", "klaviyo_pool.codes_added", "klaviyo_pool.retried", "klaviyo_pool.policy_set")
    }
    assert {a: [(actor, subject) for actor, subject, _ in rows] for a, rows in actions.items()} == {
        a: [(OWNER_ACTOR, f"pool:{pool_id}")] for a in actions
    }
    assert actions["klaviyo_pool.codes_added"][0][2] == {"requested": 3, "added": 3}
    assert actions["klaviyo_pool.retried"][0][2] == {"requeued": 5}
    # another shop's pool: 404, untouched
    their_campaign, _ = make_campaign(engine, other_shop_id, rules(), codes=2, status="active")
    with Session(engine) as session:
        theirs = CouponPool(shop_id=other_shop_id, campaign_id=their_campaign, coupon_id="THEIRS")
        session.add(theirs)
        session.commit()
        their_pool = theirs.id
    for action, extra in (("codes", {"count": "1"}), ("retry", {}), ("policy", {"alert_below": "1"})):
        answer = web.post(f"/admin/distribution/pools/{their_pool}/{action}", data={"csrf_token": token, **extra})
        assert answer.status_code == 404, action
    assert web.post("/admin/distribution/pools", data={**data, "pool_campaign": str(their_campaign)}).status_code == 404


def test_staff_fill_pools_but_set_nothing_up(web: TestClient, engine: Engine, admin_settings: Settings) -> None:
    shop_id = add_shop(engine, "bigcommerce", "abc123")
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3, status="active")
    partner_id = add_partner(engine, shop_id, "Acme")
    with Session(engine) as session:
        pool = CouponPool(shop_id=shop_id, campaign_id=campaign_id, coupon_id="POOL")
        session.add(pool)
        session.commit()
        pool_id = pool.id
    staff = bigcommerce_token(admin_settings, shop_id=shop_id, user_id="9", owner=False)
    page = web.get("/admin/distribution", params={"t": staff, "campaign": campaign_id})
    assert 'id="pool-form"' not in page.text and 'id="program-form"' not in page.text and 'id="allocate-form"' not in page.text
    headers, token = {"Authorization": f"Bearer {staff}"}, form_token(page.text)
    for path, data in (
        ("/admin/distribution/allocations", {"campaign": str(campaign_id), "block_partner": str(partner_id), "block_count": "1"}),
        ("/admin/distribution/programs", {"program_campaign": str(campaign_id), "reward_campaign": str(campaign_id)}),
        ("/admin/distribution/pools", {"pool_campaign": str(campaign_id), "coupon_id": "X"}),
        (f"/admin/distribution/pools/{pool_id}/policy", {"alert_below": "5"}),
    ):
        refused = web.post(path, data={"csrf_token": token, **data}, headers=headers)
        assert refused.status_code == 403 and refused.json()["reason"] == "owner_only", path
    filled = web.post(f"/admin/distribution/pools/{pool_id}/codes", data={"csrf_token": token, "count": "2"}, headers=headers)
    assert filled.status_code == 303
    assert audit(engine, shop_id, "klaviyo_pool.codes_added") == [
        ("bigcommerce:user:9", f"pool:{pool_id}", {"requested": 2, "added": 2})
    ]
