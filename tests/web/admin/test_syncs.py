"""Redemption syncs: redemptions and stored order webhooks with their outcome, filtered and paged
by keyset; the stored delivery (or the word that it was redacted); roll back (CSRF-checked,
audited, once, never another shop's); misuse flags in a merchant's words."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.orders import listing
from plugin.settings import Settings
from plugin.store.models import AuditEvent, Campaign, Redemption, WebhookEvent
from tests.web.admin.conftest import SHOP, add_shop, form_token, session_token, set_up_owner
from tests.web.conftest import basket, make_campaign, make_key, rules


def redeem(web, engine: Engine, shop_id: int, code: str, order: str) -> int:
    key = make_key(engine, shop_id)
    answer = web.post(
        "/api/v1/redemptions",
        headers={"Authorization": f"Bearer {key}"},
        json={"code": code, "order_id": order, "basket": basket(("p1", 1, 5000))},
    )
    assert answer.status_code in (200, 201), answer.text
    with Session(engine) as session:
        found = session.exec(select(Redemption).where(col(Redemption.order_id) == order)).one()
        assert found.id is not None
        return found.id


def add_delivery(engine: Engine, shop_id: int, delivery_id: str, **values: object) -> int:
    with Session(engine) as session:
        event = WebhookEvent(shop_id=shop_id, platform="sandbox", delivery_id=delivery_id, topic="orders/create", **values)
        session.add(event)
        session.commit()
        assert event.id is not None
        return event.id


def test_redemptions_show_with_their_outcome_and_flags_in_words(
    web, engine: Engine, admin_settings: Settings, shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    _cid, codes = make_campaign(engine, shop_id, rules(), codes=3, status="active")
    first = redeem(web, engine, shop_id, codes[0], "o-1")
    redeem(web, engine, shop_id, codes[1], "o-2")
    with Session(engine) as session:
        row = session.get_one(Redemption, first)
        row.flagged_reason = "customer_limit_reached"
        session.add(row)
        session.commit()
    page = web.get("/admin/redemptions")
    assert page.status_code == 200
    assert "o-1" in page.text and "o-2" in page.text and "Redeemed" in page.text
    assert "The customer used the campaign as often as allowed." in page.text  # the flag, explained
    assert "customer_limit_reached" not in page.text
    flagged = web.get("/admin/redemptions", params={"flagged": "yes"}).text
    assert "o-1" in flagged and "o-2" not in flagged


def test_flags_are_explained_for_every_reason() -> None:
    assert listing.explain_flag(None) is None
    assert "own referral code" in (listing.explain_flag("self_referral") or "")
    assert "redemption limit is used up" in (listing.explain_flag("usage_limit_reached") or "")
    assert "some new rule" in (listing.explain_flag("some_new_rule") or "")  # unknown: still words, never a crash


def test_lists_page_by_keyset(web, engine: Engine, admin_settings: Settings, shop_id: int, monkeypatch) -> None:
    from plugin.web.admin.pages import syncs

    monkeypatch.setattr(syncs, "PAGE_SIZE", 2)
    set_up_owner(web, admin_settings, shop_id)
    for n in range(5):
        add_delivery(engine, shop_id, f"d-{n}", order_id=f"order-{n}")
    seen: list[str] = []
    url: str | None = "/admin/redemptions?view=deliveries"
    while url:
        page = web.get(url).text
        seen += re.findall(r"<td>(order-\d)</td>", page)
        found = re.search(r'rel="next" href="([^"]+)"', page)
        url = found[1].replace("&amp;", "&") if found else None
    assert seen == [f"order-{n}" for n in (4, 3, 2, 1, 0)]  # newest first, each once, no OFFSET


def test_bad_filters_are_shown_next_to_their_field(web, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    page = web.get("/admin/redemptions", params={"since": "31/01/2027", "view": "deliveries", "platform": "myspace"})
    assert page.status_code == 422
    assert re.search(r'id="e-since"[^>]*>give a date as YYYY-MM-DD', page.text)
    assert re.search(r'id="e-platform"[^>]*>platform must be one of', page.text)
    backwards = web.get("/admin/redemptions", params={"since": "2027-02-01", "until": "2027-01-01"})
    assert backwards.status_code == 422 and "the end date is before the start date" in backwards.text
    bad_status = web.get("/admin/redemptions", params={"status": "lost"})
    assert bad_status.status_code == 422 and re.search(r'id="e-status"[^>]*>status must be one of', bad_status.text)


def test_date_filter_includes_the_end_day(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    add_delivery(engine, shop_id, "jan", order_id="o-jan", received_at=datetime(2027, 1, 31, 23, 0, tzinfo=UTC))
    add_delivery(engine, shop_id, "feb", order_id="o-feb", received_at=datetime(2027, 2, 1, 0, 30, tzinfo=UTC))
    page = web.get("/admin/redemptions", params={"view": "deliveries", "since": "2027-01-31", "until": "2027-01-31"}).text
    assert "o-jan" in page and "o-feb" not in page


def test_the_stored_delivery_and_a_redacted_one(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    kept = add_delivery(
        engine,
        shop_id,
        "d-1",
        payload='{"id": 1, "discount_codes": ["SAVE10"]}',
        status="failed",
        error="HTTP 500 from the platform",
    )
    gone = add_delivery(engine, shop_id, "d-2", payload="", redacted_at=datetime(2027, 1, 1, tzinfo=UTC))
    theirs = add_delivery(engine, other_shop_id, "d-3", payload='{"secret": "theirs"}')
    page = web.get(f"/admin/redemptions/deliveries/{kept}")
    assert page.status_code == 200
    assert "SAVE10" in page.text and "HTTP 500 from the platform" in page.text
    redacted = web.get(f"/admin/redemptions/deliveries/{gone}").text
    assert 'id="redacted"' in redacted and "was redacted" in redacted and 'id="payload"' not in redacted
    other = web.get(f"/admin/redemptions/deliveries/{theirs}")
    assert other.status_code == 404 and "theirs" not in other.text


def test_roll_back_once_with_who_did_it(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    campaign_id, codes = make_campaign(engine, shop_id, rules(), codes=1, status="active")
    rid = redeem(web, engine, shop_id, codes[0], "o-1")
    token = form_token(web.get("/admin/redemptions").text)
    answer = web.post(f"/admin/redemptions/{rid}/rollback", data={"csrf_token": token, "reason": "order cancelled by phone"})
    assert answer.status_code == 303
    again = web.post(f"/admin/redemptions/{rid}/rollback", data={"csrf_token": token})
    assert again.status_code == 303  # already rolled back: nothing more happens
    with Session(engine) as session:
        assert session.get_one(Redemption, rid).status == "rolled_back"
        assert session.get_one(Campaign, campaign_id).redemption_count == 0  # the budget got the use back, once
        events = session.exec(select(AuditEvent).where(col(AuditEvent.subject) == f"redemption:{rid}")).all()
    assert events and all(e.actor.endswith("owner@shop.example") for e in events)  # who did it
    # exactly one row for the rollback, with who did it and why (the second click recorded nothing)
    assert [(e.action, e.details["reason"]) for e in events] == [("redemption.rolled_back", "order cancelled by phone")]
    page = web.get("/admin/redemptions").text
    assert "Rolled back" in page and f"/admin/redemptions/{rid}/rollback" not in page


def test_roll_back_refuses_without_csrf_and_for_another_shop(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    _cid, codes = make_campaign(engine, other_shop_id, rules(), codes=1, status="active")
    theirs = redeem(web, engine, other_shop_id, codes[0], "o-theirs")
    set_up_owner(web, admin_settings, shop_id)
    assert web.post(f"/admin/redemptions/{theirs}/rollback", data={}).status_code == 403  # no CSRF token
    token = form_token(web.get("/admin/redemptions").text)
    assert web.post(f"/admin/redemptions/{theirs}/rollback", data={"csrf_token": token}).status_code == 404
    with Session(engine) as session:
        assert session.get_one(Redemption, theirs).status == "active"


def test_embedded_shopify_sees_the_page_and_needs_a_token(web, engine: Engine) -> None:
    shop_id = add_shop(engine, "shopify", SHOP)
    add_delivery(engine, shop_id, "d-1", order_id="o-embedded")
    page = web.get("/admin/redemptions", params={"shop": SHOP, "view": "deliveries", "id_token": session_token()})
    assert page.status_code == 200 and "o-embedded" in page.text
    assert web.get("/admin/redemptions", headers={"HX-Request": "true"}).status_code == 401
    assert web.get("/admin/redemptions").status_code == 303  # standalone without a session: sign in
