"""The embedded surfaces: Shopify ID tokens verified on every request (expired, forged, other
shop, wrong audience refused; `shop`/`host` alone never enough), BigCommerce's signed page token
from the `load` callback; no cookies; frame-ancestors naming the shop's admin only."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace

import jwt
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.settings import Settings
from plugin.store.models import AuditEvent
from plugin.web.admin.context import BC_TOKEN_PREFIX, bigcommerce_token, frame_ancestors
from tests.web.admin.conftest import BIGCOMMERCE, OTHER_SHOP, SHOP, add_shop, session_token
from tests.web.conftest import make_campaign, rules

# --- Shopify ---------------------------------------------------------------------------------


def test_a_page_load_with_a_valid_id_token_shows_the_home(web, engine: Engine) -> None:
    shop_id = add_shop(engine, "shopify", SHOP)
    make_campaign(engine, shop_id, rules(), codes=2, status="active")
    page = web.get("/admin/", params={"shop": SHOP, "host": "YWRtaW4", "embedded": "1", "id_token": session_token()})
    assert page.status_code == 200, page.text
    csp = page.headers["content-security-policy"]
    assert f"frame-ancestors https://{SHOP} https://admin.shopify.com" in csp and "*" not in csp
    assert '<meta name="shopify-api-key" content="api-key">' in page.text
    head = page.text.split("</head>")[0]
    assert '<script src="https://cdn.shopify.com/shopifycloud/app-bridge.js"></script>' in head
    assert "<s-app-nav>" in page.text and "admin.css" not in page.text  # Polaris surface: App Bridge, not our stylesheet
    assert re.search(r'id="fig-issued">2<', page.text)
    assert "set-cookie" not in page.headers  # nothing embedded relies on cookies


def test_partial_requests_carry_the_token_in_authorization(web, engine: Engine) -> None:
    add_shop(engine, "shopify", SHOP)
    ok = web.get("/admin/", headers={"Authorization": f"Bearer {session_token()}", "HX-Request": "true"})
    assert ok.status_code == 200
    refused = web.get("/admin/", headers={"HX-Request": "true"}, params={"shop": SHOP, "host": "YWRtaW4"})
    assert refused.status_code == 401  # no bounce page for a partial: a 401 App Bridge can retry


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: session_token(exp=int(time.time()) - 30, nbf=int(time.time()) - 90), id="expired"),
        pytest.param(lambda: session_token(nbf=int(time.time()) + 60), id="not-yet-valid"),
        pytest.param(lambda: session_token(secret="not-the-app-secret-0123456789abcdef0123"), id="forged"),
        pytest.param(lambda: session_token(aud="another-app"), id="wrong-aud"),
        pytest.param(lambda: session_token(shop=OTHER_SHOP), id="other-shop-not-installed"),
        pytest.param(lambda: session_token(dest=f"https://{OTHER_SHOP}"), id="dest-not-iss"),
        pytest.param(lambda: jwt.encode({"dest": f"https://{SHOP}"}, "", algorithm="none"), id="alg-none"),
        pytest.param(lambda: "not-a-token", id="garbage"),
    ],
)
def test_bad_session_tokens_are_refused(web, engine: Engine, token) -> None:
    add_shop(engine, "shopify", SHOP)
    page = web.get("/admin/", params={"shop": SHOP, "id_token": token()})
    assert page.status_code == 401
    partial = web.get("/admin/", headers={"Authorization": f"Bearer {token()}"})
    assert partial.status_code == 401
    assert "Key figures" not in page.text + partial.text


def test_a_token_of_one_shop_never_shows_another(web, engine: Engine) -> None:
    mine = add_shop(engine, "shopify", SHOP)
    theirs = add_shop(engine, "shopify", OTHER_SHOP)
    make_campaign(engine, theirs, rules(), codes=5, status="active")
    make_campaign(engine, mine, rules(), codes=1, status="active")
    # the query names the other shop, the token is ours: refused, never the other shop's page
    assert web.get("/admin/", params={"shop": OTHER_SHOP, "id_token": session_token()}).status_code == 401
    page = web.get("/admin/", params={"shop": SHOP, "id_token": session_token()})
    assert re.search(r'id="fig-issued">1<', page.text)


def test_shop_and_host_alone_get_the_bounce_page_never_data(web, engine: Engine) -> None:
    add_shop(engine, "shopify", SHOP)
    page = web.get("/admin/", params={"shop": SHOP, "host": "YWRtaW4", "embedded": "1"})
    assert page.status_code == 200
    assert "Key figures" not in page.text and "bounce.js" in page.text
    assert '<meta name="shopify-api-key" content="api-key">' in page.text and "app-bridge.js" in page.text
    assert f"frame-ancestors https://{SHOP} https://admin.shopify.com" in page.headers["content-security-policy"]
    # an invented shop name is not put in frame-ancestors
    evil = web.get("/admin/", params={"shop": "evil.example", "host": "x"})
    assert "frame-ancestors 'none'" in evil.headers["content-security-policy"]


def test_an_uninstalled_shop_is_refused(web, engine: Engine) -> None:
    add_shop(engine, "shopify", SHOP, installed=False)
    from plugin.store.db import session_scope
    from plugin.store.models import Shop, utcnow

    with session_scope(engine) as session:
        shop = session.exec(select(Shop).where(col(Shop.domain) == SHOP)).one()
        shop.uninstalled_at = utcnow()
        session.add(shop)
    assert web.get("/admin/", params={"id_token": session_token()}).status_code == 401


def test_embedded_posts_need_the_csrf_token_and_are_audited_with_the_user(web, engine: Engine) -> None:
    """Sign-out is the one POST of the foundation: on Shopify it only leads back home, but it
    still passes the CSRF check first."""
    add_shop(engine, "shopify", SHOP)
    auth = {"Authorization": f"Bearer {session_token()}"}
    home = web.get("/admin/", headers=auth)
    csrf = re.search(r'data-csrf="([^"]+)"', home.text)
    assert csrf
    assert web.post("/admin/sign-out", headers=auth, data={}).status_code == 403
    assert web.post("/admin/sign-out", headers=auth, data={"csrf_token": "x" * 64}).status_code == 403
    ok = web.post("/admin/sign-out", headers={**auth, "X-CSRF-Token": csrf[1]})
    assert ok.status_code == 303
    # a fresh token of the same user keeps the same CSRF token (tokens last a minute; forms longer)
    again = web.get("/admin/", headers={"Authorization": f"Bearer {session_token(jti='jti-2')}"})
    assert f'data-csrf="{csrf[1]}"' in again.text


# --- BigCommerce -----------------------------------------------------------------------------


def signed_payload(store_hash: str, *, user_id: int = 7, owner_id: int = 7, secret: str = BIGCOMMERCE["client_secret"]) -> str:
    now = int(time.time())
    claims = {
        "aud": BIGCOMMERCE["client_id"],
        "iss": "bc",
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "jti": "j-1",
        "sub": f"stores/{store_hash}",
        "user": {"id": user_id, "email": "user@store.example", "locale": "en-US"},
        "owner": {"id": owner_id, "email": "owner@store.example"},
        "url": "/",
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def test_the_load_callback_starts_a_page_token_and_home_answers(web, engine: Engine) -> None:
    shop_id = add_shop(engine, "bigcommerce", "abc123")
    make_campaign(engine, shop_id, rules(), codes=4, status="active")
    load = web.get("/install/bigcommerce/load", params={"signed_payload_jwt": signed_payload("abc123")})
    assert load.status_code == 302 and "set-cookie" not in load.headers
    target = load.headers["location"]
    assert target.startswith("http://127.0.0.1:8000/admin/?t=" + BC_TOKEN_PREFIX)
    page = web.get(target.removeprefix("http://127.0.0.1:8000"))
    assert page.status_code == 200 and re.search(r'id="fig-issued">4<', page.text)
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors https://store-abc123.mybigcommerce.com" in csp and "*" not in csp
    assert "app-bridge.js" not in page.text and "admin.css" in page.text
    assert re.search(r'data-token="cbc_[^"]+"', page.text)  # htmx requests carry it (admin.js)
    assert re.search(r'href="/admin/\?t=cbc_', page.text)  # and so do links
    assert "set-cookie" not in page.headers


def test_forged_or_other_store_payloads_and_tokens_are_refused(web, engine: Engine, admin_settings: Settings) -> None:
    add_shop(engine, "bigcommerce", "abc123")
    other = add_shop(engine, "bigcommerce", "zzz999")
    forged = web.get("/install/bigcommerce/load", params={"signed_payload_jwt": signed_payload("abc123", secret="x" * 40)})
    assert forged.status_code == 401
    bad = web.get("/admin/", params={"t": BC_TOKEN_PREFIX + "eyJzaG9wIjoxfQ.forged.sig"})
    assert bad.status_code == 401
    foreign_key = replace(admin_settings, secret_key=type(admin_settings.secret_key)("another-secret-key-0123456789-abcdef"))
    minted_elsewhere = bigcommerce_token(foreign_key, shop_id=other, user_id="7", owner=True)
    assert web.get("/admin/", headers={"Authorization": f"Bearer {minted_elsewhere}"}).status_code == 401


def test_an_old_page_token_expires(web, engine: Engine, admin_settings: Settings, monkeypatch) -> None:
    shop_id = add_shop(engine, "bigcommerce", "abc123")
    token = bigcommerce_token(admin_settings, shop_id=shop_id, user_id="7", owner=True)
    assert web.get("/admin/", params={"t": token}).status_code == 200
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 2 * 3600)  # itsdangerous reads the clock here
    assert web.get("/admin/", params={"t": token}).status_code == 401


def test_a_staff_user_is_staff(web, engine: Engine, admin_settings: Settings) -> None:
    add_shop(engine, "bigcommerce", "abc123")
    load = web.get("/install/bigcommerce/load", params={"signed_payload_jwt": signed_payload("abc123", user_id=8, owner_id=7)})
    from plugin.web.admin.context import _signer

    token = load.headers["location"].split("t=")[1]
    from urllib.parse import unquote

    data = _signer(admin_settings, "bigcommerce").loads(unquote(token).removeprefix(BC_TOKEN_PREFIX))
    assert data["owner"] is False and data["user"] == "8"


def test_embedded_actions_name_their_user_in_the_audit_trail(web, engine: Engine, admin_settings: Settings) -> None:
    """`act` writes the change and who made it in one transaction."""
    import anyio
    from starlette.requests import Request

    from plugin.web.admin.context import AdminContext
    from plugin.web.admin.forms import act

    shop_id = add_shop(engine, "shopify", SHOP)
    ctx = AdminContext(
        shop_id=shop_id,
        shop_domain=SHOP,
        shop_name=SHOP,
        actor="shopify:user:42",
        role="owner",
        surface="shopify",
        csrf_token="c",
    )
    request = Request({"type": "http", "app": web.app, "headers": []})

    def work(session: Session) -> int:
        return 5

    assert anyio.run(lambda: act(request, ctx, work, action="thing.changed", subject=lambda n: f"thing:{n}")) == 5
    with Session(engine) as session:
        events = session.exec(select(AuditEvent).where(col(AuditEvent.shop_id) == shop_id)).all()
    assert [(e.action, e.subject, e.actor) for e in events] == [("thing.changed", "thing:5", "shopify:user:42")]


def test_frame_ancestors_name_one_control_panel_or_nobody() -> None:
    """BigCommerce's control panel is https://store-{hash}.mybigcommerce.com: that store's panel
    alone may frame its pages; a shop name that is no store hash can't smuggle in another origin."""
    assert frame_ancestors("bigcommerce", "abc123") == "https://store-abc123.mybigcommerce.com"
    for odd in ("abc.evil.example", "abc123 https://evil.example", "ABC*", ""):
        assert frame_ancestors("bigcommerce", odd) == "'none'"
    assert frame_ancestors("shopify", SHOP) == f"https://{SHOP} https://admin.shopify.com"
    assert frame_ancestors("standalone", "anything") == "'none'"


def test_htmx_is_configured_for_our_csp(web, engine: Engine) -> None:
    """htmx 2 injects a <style> for its indicators and may eval; our CSP (script-src and
    style-src 'self') refuses both, so the page's htmx-config turns both off."""
    add_shop(engine, "bigcommerce", "abc123")
    load = web.get("/install/bigcommerce/load", params={"signed_payload_jwt": signed_payload("abc123")})
    page = web.get(load.headers["location"].removeprefix("http://127.0.0.1:8000"))
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "style-src 'self';" in csp
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']+)'>", page.text)
    assert meta is not None
    config = json.loads(meta.group(1))
    assert config["includeIndicatorStyles"] is False and config["allowEval"] is False
    assert {"code": "40[39]|422", "swap": True, "error": False} in config["responseHandling"]  # refusals shown
