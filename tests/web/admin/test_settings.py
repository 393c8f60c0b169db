"""Settings: the connected store, providers (masked, test connection against the documented
read), API keys (shown once, revoked, tenant-scoped), refusal mode and origins; owner-only
changes, CSRF on every POST, errors next to their field."""

from __future__ import annotations

import re
import warnings
from dataclasses import replace

import httpx
import respx
from sqlalchemy import Engine
from sqlmodel import Session, select

from plugin.settings import Settings
from plugin.shops import apikeys
from plugin.shops.shops import allowed_origins, get_shop, refusal_mode
from plugin.store.models import ApiKey, AuditEvent
from tests.web.admin.conftest import BIGCOMMERCE, SHOPIFY, add_shop, form_token, session_token, set_up_owner
from tests.web.admin.test_embedded import signed_payload
from tests.web.conftest import make_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

KLAVIYO_KEY = "pk_live_0123456789abcdefWXYZ"
SID = "AC" + "0" * 32


def csrf(page: str) -> str:
    return form_token(page)


def test_settings_shows_the_store_and_masks_provider_secrets(engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    settings = replace(
        admin_settings, connector_config={**admin_settings.connector_config, "klaviyo": {"api_key": KLAVIYO_KEY, "list_id": "L1"}}
    )
    with TestClient(make_app(settings, engine), base_url="http://127.0.0.1:8000", follow_redirects=False) as web:
        set_up_owner(web, settings, shop_id)
        page = web.get("/admin/settings")
    assert page.status_code == 200
    assert 'id="set-shop">local.couponry.test<' in page.text and "Sandbox store (built in)" in page.text
    assert KLAVIYO_KEY not in page.text and "••••WXYZ" in page.text and "<code>L1</code>" in page.text
    assert 'href="/admin/settings" aria-current="page"' in page.text  # the nav entry
    assert "Test connection" in page.text and re.search(r'id="provider-braze".*?not configured', page.text, re.S)


def test_an_api_key_is_shown_once_then_revoked(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    token = csrf(web.get("/admin/settings").text)
    made = web.post(
        "/admin/settings/keys", data={"csrf_token": token, "name": "checkout server", "scopes": ["checkout", "distribution"]}
    )
    assert made.status_code == 201
    secret = re.search(r'id="new-key-value" class="secret" readonly value="(cpy_[^"]+)"', made.text)
    assert secret
    assert (
        web.post("/api/v1/validate", headers={"Authorization": f"Bearer {secret[1]}"}, json={"code": "NOPE"}).status_code != 401
    )
    again = web.get("/admin/settings").text
    assert secret[1] not in again and "checkout server" in again  # never shown again
    prefix = secret[1].split("_")[1]
    with Session(engine) as session:
        key = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).one()
        assert key.scopes == "checkout distribution" and key.key_hash != secret[1]
        _, foreign = apikeys.create_key(session, shop_id=other_shop_id, name="theirs", scopes=("checkout",))
        session.commit()
    assert web.post(f"/admin/settings/keys/{foreign.split('_')[1]}/revoke", data={"csrf_token": token}).status_code == 404
    assert web.post(f"/admin/settings/keys/{prefix}/revoke", data={"csrf_token": "forged"}).status_code == 403
    revoked = web.post(f"/admin/settings/keys/{prefix}/revoke", data={"csrf_token": token})
    assert revoked.status_code == 303 and revoked.headers["location"] == "/admin/settings#keys"
    assert (
        web.post("/api/v1/validate", headers={"Authorization": f"Bearer {secret[1]}"}, json={"code": "NOPE"}).status_code == 401
    )
    assert web.post("/api/v1/validate", headers={"Authorization": f"Bearer {foreign}"}, json={"code": "NOPE"}).status_code != 401
    assert web.post(f"/admin/settings/keys/{prefix}/revoke", data={"csrf_token": token}).status_code == 404  # already revoked
    with Session(engine) as session:
        actions = session.exec(select(AuditEvent.action, AuditEvent.actor).where(AuditEvent.shop_id == shop_id)).all()
    assert any(a == "apikey.created" and "owner@shop.example" in who for a, who in actions)
    assert any(a == "apikey.revoked" and "owner@shop.example" in who for a, who in actions)


def test_bad_key_input_is_shown_next_to_its_field(web, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    token = csrf(web.get("/admin/settings").text)
    nameless = web.post("/admin/settings/keys", data={"csrf_token": token, "name": " ", "scopes": ["checkout"]})
    assert nameless.status_code == 422 and 'id="e-name"' in nameless.text
    mixed = web.post("/admin/settings/keys", data={"csrf_token": token, "name": "x", "scopes": ["storefront", "admin"]})
    assert mixed.status_code == 422 and re.search(r'id="e-scopes" role="alert">a storefront key', mixed.text)
    none = web.post("/admin/settings/keys", data={"csrf_token": token, "name": "x"})
    assert none.status_code == 422 and 'id="e-scopes"' in none.text and "new-key" not in none.text


def test_refusal_mode_and_origins_are_saved_or_refused_beside_their_field(
    web, engine: Engine, admin_settings: Settings, shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    token = csrf(web.get("/admin/settings").text)
    assert web.post("/admin/settings/refusals", data={"csrf_token": token, "mode": "generic"}).status_code == 303
    bad = web.post("/admin/settings/refusals", data={"csrf_token": token, "mode": "loud"})
    assert bad.status_code == 422 and 'id="e-mode"' in bad.text
    saved = web.post(
        "/admin/settings/origins", data={"csrf_token": token, "origins": "https://Shop.Example\nhttps://shop.example:443\n"}
    )
    assert saved.status_code == 303
    wild = web.post("/admin/settings/origins", data={"csrf_token": token, "origins": "https://*.example.com"})
    assert wild.status_code == 422 and 'id="e-origins"' in wild.text and "https://*.example.com</textarea>" in wild.text
    assert web.post("/admin/settings/origins", data={"origins": "https://a.example"}).status_code == 403  # no CSRF token
    with Session(engine) as session:
        shop = get_shop(session, shop_id)
        assert refusal_mode(shop) == "generic" and allowed_origins(shop) == ["https://shop.example"]
    assert "https://shop.example</textarea>" in web.get("/admin/settings").text


def test_test_connection_calls_the_documented_read(engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    config = {
        **admin_settings.connector_config,
        "twilio": {"account_sid": SID, "access_token": "tok" * 8, "from": "+15005550006"},
    }
    settings = replace(admin_settings, connector_config=config)
    router = respx.mock(assert_all_called=True, assert_all_mocked=False)
    account = router.get(f"https://api.twilio.com/2010-04-01/Accounts/{SID}.json").mock(
        side_effect=[
            httpx.Response(200, json={"sid": SID, "friendly_name": "Acme SMS", "status": "active"}),
            httpx.Response(401, json={"code": 20003, "message": "Authenticate", "status": 401}),
        ]
    )
    with router, TestClient(make_app(settings, engine), base_url="http://127.0.0.1:8000", follow_redirects=False) as web:
        set_up_owner(web, settings, shop_id)
        token = csrf(web.get("/admin/settings").text)
        ok = web.post("/admin/settings/providers/twilio/test", data={"csrf_token": token})
        assert ok.status_code == 200 and re.search(r'id="check-twilio">connected: Acme SMS \(active\)', ok.text)
        refused = web.post("/admin/settings/providers/twilio/test", data={"csrf_token": token})
        assert refused.status_code == 200 and re.search(
            r'class="field-error" role="status" id="check-twilio">twilio refused', refused.text
        )
        assert web.post("/admin/settings/providers/nope/test", data={"csrf_token": token}).status_code == 404
        unset = web.post("/admin/settings/providers/klaviyo/test", data={"csrf_token": token})
        assert "klaviyo is not configured" in unset.text
        assert account.call_count == 2  # one read per press, the refusal not retried
        assert account.calls[0].request.headers["authorization"].startswith("Basic ")


def test_staff_see_settings_but_cannot_change_them(web, engine: Engine) -> None:
    add_shop(engine, "bigcommerce", "abc123")
    load = web.get("/install/bigcommerce/load", params={"signed_payload_jwt": signed_payload("abc123", user_id=8, owner_id=7)})
    target = load.headers["location"].removeprefix("http://127.0.0.1:8000")
    t = re.search(r"t=([^&]+)", target)
    assert t
    page = web.get("/admin/settings", params={"t": t[1]})
    assert page.status_code == 200 and "Create a key" not in page.text
    token = re.search(r'data-csrf="([^"]+)"', page.text)
    assert token
    refused = web.post(
        "/admin/settings/keys", params={"t": t[1]}, data={"csrf_token": token[1], "name": "x", "scopes": ["checkout"]}
    )
    assert refused.status_code == 403


def test_settings_on_shopify_need_a_session_token_and_show_that_shop(web, engine: Engine) -> None:
    add_shop(engine, "shopify", "test-shop.myshopify.com")
    assert web.get("/admin/settings").status_code == 303  # to sign in
    assert web.post("/admin/settings/refusals", data={"mode": "generic"}).status_code == 401
    page = web.get("/admin/settings", params={"id_token": session_token(), "shop": "test-shop.myshopify.com"})
    assert page.status_code == 200 and 'id="set-shop">test-shop.myshopify.com<' in page.text and "Shopify" in page.text
    assert '<s-link href="/admin/settings">Settings</s-link>' in page.text
    assert SHOPIFY["client_secret"] not in page.text and BIGCOMMERCE["client_secret"] not in page.text


def test_every_main_page_has_a_plain_title_and_one_of_each_section(web, admin_settings: Settings, shop_id: int) -> None:
    """A page's <title> is text ("Settings · Couponry"), never markup; a section is shown once."""
    import re

    set_up_owner(web, admin_settings, shop_id)
    for path in ("/admin", "/admin/campaigns", "/admin/codes", "/admin/redemptions", "/admin/health", "/admin/distribution",
                 "/admin/events", "/admin/settings", "/admin/users"):  # fmt: skip
        page = web.get(path)
        assert page.status_code == 200, path
        title = re.search(r"<title>(.*?)</title>", page.text, re.S)
        assert title is not None and "<" not in title.group(1) and len(title.group(1)) < 80, (path, title)
        ids = re.findall(r'<section[^>]* id="([^"]+)"', page.text)
        assert len(ids) == len(set(ids)), (path, ids)
