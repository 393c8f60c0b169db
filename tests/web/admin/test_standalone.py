"""The standalone admin: the first owner only through a one-time setup link, sign-in and out
with a signed cookie, CSRF on every form, tenants apart, bad input shown next to its field."""

from __future__ import annotations

import re

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.settings import Settings
from plugin.shops import users
from plugin.store.models import AdminUser, AuditEvent
from tests.web.admin.conftest import PASSWORD, form_token, set_up_owner


def test_admin_without_a_session_goes_to_sign_in(web, shop_id: int) -> None:
    answer = web.get("/admin/")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin/sign-in?next=%2Fadmin%2F"
    htmx = web.get("/admin/", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and htmx.headers["HX-Redirect"] == "/admin/sign-in"


def test_setup_link_creates_the_owner_once(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    link = users.setup_link(admin_settings, shop_id).removeprefix(admin_settings.public_url)
    page = web.get(link)
    assert page.status_code == 200 and 'name="password"' in page.text
    assert page.headers["content-security-policy"].endswith("frame-ancestors 'none'")
    token = form_token(page.text)
    done = web.post(link, data={"csrf_token": token, "email": "Owner@Shop.Example", "password": PASSWORD, "confirm": PASSWORD})
    assert done.status_code == 303 and done.headers["location"] == "/admin/"
    cookie = done.headers["set-cookie"]
    assert "couponry_admin=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # the public URL is http here
    home = web.get("/admin/")
    assert home.status_code == 200 and "Key figures" in home.text
    # the same link again: spent, even with a fresh form
    web.cookies.clear()
    again = web.get(link)
    assert again.status_code == 400 and "already used" in again.text
    second = web.post(
        link,
        data={
            "csrf_token": form_token(again.text) if "csrf_token" in again.text else "",
            "email": "evil@x.example",
            "password": PASSWORD,
            "confirm": PASSWORD,
        },
    )
    assert second.status_code in (400, 403)
    with Session(engine) as session:
        owners = session.exec(select(AdminUser).where(col(AdminUser.shop_id) == shop_id)).all()
        assert [(u.email, u.role) for u in owners] == [("owner@shop.example", "owner")]
        assert owners[0].password_hash.startswith("$argon2id$") and PASSWORD not in owners[0].password_hash
        actions = session.exec(select(AuditEvent.action, AuditEvent.actor).where(col(AuditEvent.shop_id) == shop_id)).all()
        assert ("admin.owner_set_up", f"user:{owners[0].id}:owner@shop.example") in actions


def test_forged_or_expired_setup_links_are_refused(web, admin_settings: Settings, shop_id: int) -> None:
    link = users.setup_link(admin_settings, shop_id).removeprefix(admin_settings.public_url)
    forged = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
    assert web.get(forged).status_code == 400
    other_key = Settings(
        database_url=admin_settings.database_url,
        secret_key=admin_settings.secret_key.__class__("another-secret-key-0123456789-abcdef"),
    )
    foreign = users.setup_link(other_key, shop_id).removeprefix(other_key.public_url)
    assert web.get(foreign).status_code == 400


def test_bad_setup_input_is_shown_next_to_its_field_and_keeps_the_link(web, admin_settings: Settings, shop_id: int) -> None:
    link = users.setup_link(admin_settings, shop_id).removeprefix(admin_settings.public_url)
    token = form_token(web.get(link).text)
    short = web.post(link, data={"csrf_token": token, "email": "owner@shop.example", "password": "short", "confirm": "short"})
    assert short.status_code == 422
    assert re.search(r'id="f-password"[^>]*aria-invalid="true" aria-describedby="e-password"', short.text)
    assert 'id="e-password"' in short.text and "at least 12 characters" in short.text
    assert 'value="owner@shop.example"' in short.text  # what they typed is kept (never the password)
    bad_email = web.post(link, data={"csrf_token": token, "email": "nope", "password": PASSWORD, "confirm": PASSWORD})
    assert bad_email.status_code == 422 and 'id="e-email"' in bad_email.text
    mismatch = web.post(
        link, data={"csrf_token": token, "email": "a@shop.example", "password": PASSWORD, "confirm": PASSWORD + "x"}
    )
    assert mismatch.status_code == 422 and 'id="e-confirm"' in mismatch.text
    ok = web.post(link, data={"csrf_token": token, "email": "a@shop.example", "password": PASSWORD, "confirm": PASSWORD})
    assert ok.status_code == 303  # the mistakes did not spend the link


def test_setup_form_without_its_csrf_token_is_refused(web, admin_settings: Settings, shop_id: int) -> None:
    link = users.setup_link(admin_settings, shop_id).removeprefix(admin_settings.public_url)
    web.get(link)
    answer = web.post(link, data={"csrf_token": "forged", "email": "a@shop.example", "password": PASSWORD, "confirm": PASSWORD})
    assert answer.status_code == 403
    assert web.get(link).status_code == 200  # still unspent


def test_sign_in_and_out(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    web.cookies.clear()
    page = web.get("/admin/sign-in?next=/admin/")
    assert page.status_code == 200
    token = form_token(page.text)
    wrong = web.post(
        "/admin/sign-in",
        data={"csrf_token": token, "email": "owner@shop.example", "password": "wrong password!", "next": "/admin/"},
    )
    assert wrong.status_code == 422 and "wrong email or password" in wrong.text and 'id="e-password"' in wrong.text
    assert "couponry_admin=" not in wrong.headers.get("set-cookie", "")
    nobody = web.post("/admin/sign-in", data={"csrf_token": token, "email": "nobody@shop.example", "password": PASSWORD})
    assert nobody.status_code == 422 and "wrong email or password" in nobody.text  # the same words: no account probing
    ok = web.post(
        "/admin/sign-in",
        data={"csrf_token": token, "email": "owner@shop.example", "password": PASSWORD, "next": "https://evil.example/"},
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/admin/"  # never an open redirect
    stolen = web.cookies.get("couponry_admin")
    home = web.get("/admin/")
    assert home.status_code == 200
    # sign out: needs the CSRF token, then the cookie (and any copy of it) stops working
    assert web.post("/admin/sign-out", data={}).status_code == 403
    out = web.post("/admin/sign-out", data={"csrf_token": form_token(home.text)})
    assert out.status_code == 303 and out.headers["location"] == "/admin/sign-in"
    web.cookies.clear()
    web.cookies.set("couponry_admin", stolen, path="/admin")
    assert web.get("/admin/").status_code == 303
    with Session(engine) as session:
        actions = set(session.exec(select(AuditEvent.action, AuditEvent.actor).where(col(AuditEvent.shop_id) == shop_id)).all())
    assert ("admin.signed_out", "user:1:owner@shop.example") in actions  # named as in every other row of theirs


def test_sign_in_form_without_csrf_is_refused(web, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    web.cookies.clear()
    answer = web.post("/admin/sign-in", data={"email": "owner@shop.example", "password": PASSWORD})
    assert answer.status_code == 403 and "couponry_admin=" not in answer.headers.get("set-cookie", "")


def test_a_forged_session_cookie_is_refused(web, shop_id: int) -> None:
    web.cookies.set("couponry_admin", "eyJ1c2VyIjoxLCJlcG9jaCI6MCwiY3NyZiI6IngifQ.forged.sig", path="/admin")
    assert web.get("/admin/").status_code == 303


def test_another_shops_owner_sees_only_their_shop(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    from tests.web.conftest import make_campaign, rules

    make_campaign(engine, shop_id, rules(), name="Mine", codes=3, status="active")
    set_up_owner(web, admin_settings, other_shop_id, email="other@shop.example")
    home = web.get("/admin/")
    assert home.status_code == 200
    assert re.search(r'id="fig-issued">0<', home.text) and re.search(r'id="fig-active">0<', home.text)
    web.cookies.clear()
    set_up_owner(web, admin_settings, shop_id, email="mine@shop.example")
    mine = web.get("/admin/")
    assert re.search(r'id="fig-issued">3<', mine.text) and re.search(r'id="fig-active">1<', mine.text)
