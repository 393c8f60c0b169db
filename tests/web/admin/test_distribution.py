"""Distribution: claims and pushes of a campaign (keyset), partners with keys and blocks, referral
programs, Klaviyo pools; minting a claim link and a pull URL (owner only) through the services;
bad input next to its field; CSRF; other shops' ids answer 404."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.distribution import claimlinks
from plugin.settings import Settings
from plugin.store.models import ApiKey, CouponPool, Partner, RecipientDelivery, ReferralProgram
from plugin.web.admin.context import bigcommerce_token
from tests.web.admin.conftest import add_shop, form_token, set_up_owner
from tests.web.conftest import make_campaign, rules


def minted(page: str, element: str) -> str:
    found = re.search(rf'id="{element}"[^>]*value="([^"]+)"', page)
    assert found, page
    return html.unescape(found[1])


def test_the_page_shows_claims_pushes_partners_programs_and_pools(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    campaign_id, _codes = make_campaign(engine, shop_id, rules(), codes=3, status="active", name="Spring")
    reward_id, _ = make_campaign(engine, shop_id, rules(), name="Rewards")
    theirs, _ = make_campaign(engine, other_shop_id, rules(), codes=1, status="active", name="Theirs")
    with Session(engine) as session:
        session.add(Partner(shop_id=shop_id, name="Acme Affiliates"))
        session.add(ReferralProgram(campaign_id=campaign_id, shop_id=shop_id, reward_campaign_id=reward_id))
        session.add(CouponPool(shop_id=shop_id, campaign_id=campaign_id, coupon_id="SPRING_POOL"))
        session.add(RecipientDelivery(shop_id=shop_id, campaign_id=campaign_id, code_id=1, recipient="ann@example.com",
                                      provider="klaviyo", status="failed", error="Klaviyo 400: profile not found"))  # fmt: skip
        session.commit()
    page = web.get("/admin/distribution")
    assert page.status_code == 200
    assert "Spring" in page.text and "Theirs" not in page.text
    assert "Acme Affiliates" in page.text and "SPRING_POOL" in page.text
    assert f"Campaign {campaign_id} (shareable codes) rewards referrers from campaign {reward_id}" in page.text
    token = form_token(page.text)
    made = web.post(
        "/admin/distribution/claim-link", data={"csrf_token": token, "campaign": campaign_id, "recipient": "Bob@Example.com"}
    )
    assert made.status_code == 200
    one = web.get("/admin/distribution", params={"campaign": campaign_id}).text
    assert "bob@example.com" in one  # the claim, listed
    assert "Klaviyo 400: profile not found" in one and "failed 1" in one  # each recipient's push, and the counts
    assert web.get("/admin/distribution", params={"campaign": theirs}).status_code == 404
    assert web.get("/admin/distribution", params={"campaign": campaign_id, "provider": "fax"}).status_code == 422


def test_a_claim_link_is_minted_once_per_recipient(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    campaign_id, _codes = make_campaign(engine, shop_id, rules(), codes=3, status="active")
    token = form_token(web.get("/admin/distribution", params={"campaign": campaign_id}).text)
    first = web.post(
        "/admin/distribution/claim-link", data={"csrf_token": token, "campaign": campaign_id, "recipient": "ann@example.com"}
    )
    again = web.post(
        "/admin/distribution/claim-link", data={"csrf_token": token, "campaign": campaign_id, "recipient": "ANN@example.com"}
    )
    url = minted(first.text, "claim-url")
    assert url == minted(again.text, "claim-url")  # the same recipient, the same code and link
    link = claimlinks.read_claim_token(str(admin_settings.secret_key), url.rsplit("/", 1)[1], now=datetime.now(UTC))
    assert (link.shop_id, link.campaign_id, link.recipient) == (shop_id, campaign_id, "ann@example.com")
    bad = web.post("/admin/distribution/claim-link", data={"csrf_token": token, "campaign": campaign_id, "recipient": ""})
    assert bad.status_code == 422 and re.search(r'id="e-recipient"[^>]*>give exactly one', bad.text)
    assert web.post("/admin/distribution/claim-link", data={"campaign": campaign_id, "recipient": "x@y.z"}).status_code == 403


def test_a_pull_url_carries_its_own_key(web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2, status="active")
    token = form_token(web.get("/admin/distribution", params={"campaign": campaign_id}).text)
    bad = web.post("/admin/distribution/pull-url", data={"csrf_token": token, "campaign": campaign_id, "days": "900"})
    assert bad.status_code == 422 and re.search(r'id="e-days"[^>]*>a pull URL works for 1 to 400 days', bad.text)
    ok = web.post("/admin/distribution/pull-url", data={"csrf_token": token, "campaign": campaign_id, "days": "30"})
    assert ok.status_code == 200
    url = minted(ok.text, "pull-url")
    grant = claimlinks.read_pull_token(
        str(admin_settings.secret_key), url.split("/pull/")[1].split("?")[0], now=datetime.now(UTC)
    )
    with Session(engine) as session:
        key = session.exec(select(ApiKey).where(col(ApiKey.prefix) == grant.key_prefix)).one()
    assert key.shop_id == shop_id and key.scopes == "distribution" and grant.campaign_id == campaign_id
    theirs, _ = make_campaign(engine, other_shop_id, rules(), codes=1, status="active")
    assert (
        web.post("/admin/distribution/pull-url", data={"csrf_token": token, "campaign": theirs, "days": "30"}).status_code == 404
    )


def test_partners_and_their_keys(web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    token = form_token(web.get("/admin/distribution").text)
    empty = web.post("/admin/distribution/partners", data={"csrf_token": token, "name": "  "})
    assert empty.status_code == 422 and re.search(r'id="e-name"[^>]*>a partner needs a name', empty.text)
    assert web.post("/admin/distribution/partners", data={"csrf_token": token, "name": "Acme"}).status_code == 303
    twice = web.post("/admin/distribution/partners", data={"csrf_token": token, "name": "Acme"})
    assert twice.status_code == 422 and "already exists" in twice.text
    with Session(engine) as session:
        partner_id = session.exec(select(Partner.id).where(col(Partner.shop_id) == shop_id)).one()
        theirs = Partner(shop_id=other_shop_id, name="Theirs")
        session.add(theirs)
        session.commit()
        their_id = theirs.id
    made = web.post(f"/admin/distribution/partners/{partner_id}/keys", data={"csrf_token": token})
    secret = minted(made.text, "key-secret")
    page = web.get("/admin/distribution").text
    assert secret not in page  # shown once
    with Session(engine) as session:
        key = session.exec(select(ApiKey).where(col(ApiKey.partner_id) == partner_id)).one()
    assert f"<code>{key.prefix}</code>" in page  # only its prefix stays
    assert web.post(f"/admin/distribution/partners/{their_id}/keys", data={"csrf_token": token}).status_code == 404


def test_staff_may_claim_but_not_mint_keys(web, engine: Engine, admin_settings: Settings) -> None:
    shop_id = add_shop(engine, "bigcommerce", "abc123")
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2, status="active")
    staff = bigcommerce_token(admin_settings, shop_id=shop_id, user_id="9", owner=False)
    page = web.get("/admin/distribution", params={"t": staff, "campaign": campaign_id})
    assert page.status_code == 200 and "Make claim link" in page.text and "Make pull URL" not in page.text
    token = form_token(page.text)
    headers = {"Authorization": f"Bearer {staff}"}
    data = {"csrf_token": token, "campaign": str(campaign_id), "days": "30"}
    assert web.post("/admin/distribution/pull-url", data=data, headers=headers).status_code == 403
    assert web.post("/admin/distribution/partners", data={"csrf_token": token, "name": "X"}, headers=headers).status_code == 403
    claim = web.post("/admin/distribution/claim-link", data={**data, "recipient": "+447700900123"}, headers=headers)
    assert claim.status_code == 200 and "/claim/" in claim.text
