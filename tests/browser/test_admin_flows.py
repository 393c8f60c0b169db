"""The admin in a real headless Chromium against a real server (uvicorn, SQLite file, the
sandbox store, the in-process worker), run on SQLite only: the server owns its own database.

The campaign and code steps go through the JSON API because this branch has no Campaigns or
Codes pages yet (other helpers build them); everything else is clicked in the pages that exist
here: set-up, sign-in, Home, Settings and Sandbox.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
from sqlmodel import Session, col, select

from plugin.platforms import sync
from plugin.shops import users
from plugin.store.db import session_scope
from plugin.store.models import Shop
from plugin.store.sandbox_models import SandboxCode
from tests.browser.harness import SHOPIFY, Running, api, wait_until

PASSWORD = "correct horse battery staple"
EMAIL = "owner@shop.example"
RULES = {"currency": "USD", "discount": {"type": "percentage", "percent": "10"}}


def figure(page: Any, name: str) -> str:
    return str(page.locator(f"#fig-{name}").inner_text()).strip()


def test_standalone_first_run_to_a_redeemed_sandbox_order(browser: Any, app: Running) -> None:
    """Set-up link → sign out and in → Home → a key made in Settings → campaign and codes (API)
    → a sandbox order placed on the Sandbox page → its webhook redeems the code → Home's figures
    move → pause (API) → Home shows no active campaign."""
    page = browser.new_page()
    page.goto(users.setup_link(app.settings, app.shop_id))
    page.locator("#f-email").fill(EMAIL)
    page.locator("#f-password").fill(PASSWORD)
    page.locator("#f-confirm").fill(PASSWORD)
    page.get_by_role("button").click()
    page.wait_for_url(f"{app.url}/admin/")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{app.url}/admin/sign-in*")
    page.locator("#f-email").fill(EMAIL)
    page.locator("#f-password").fill("wrong password!!")
    page.get_by_role("button", name="Sign in").click()
    assert "wrong email or password" in page.locator(".field-error, .form-error").first.inner_text()
    page.locator("#f-password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#fig-redemptions")
    assert figure(page, "active") == "0" and figure(page, "redemptions") == "0"

    page.get_by_role("link", name="Settings").click()
    page.wait_for_selector("#key-form")
    page.locator("#f-name").fill("browser test")
    page.locator("#key-form input[value=admin]").check()
    page.locator("#key-form input[value=distribution]").check()
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key-value").input_value()
    assert key.startswith("cpy_")

    with api(app, key) as client:
        campaign = client.post("/campaigns", json={"name": "Spring", "rules": RULES, "status": "active"}).json()
        batch = client.post(f"/campaigns/{campaign['id']}/batches", json={"count": 20}).json()
        wait_until(lambda: client.get(f"/batches/{batch['id']}").json()["status"] == "done")
        code = client.post(f"/campaigns/{campaign['id']}/claims", json={"email": "ann@example.com"}).json()["stored_code"]
        with session_scope(app.engine) as session:  # as `couponry sync` does: no page or API queues it yet
            sync.enqueue_push(session, shop_id=app.shop_id, campaign_id=campaign["id"])

        def synced() -> bool:  # the worker pushed the codes to the sandbox store
            with Session(app.engine) as session:
                return session.exec(select(SandboxCode.id).where(col(SandboxCode.code_key) == code)).first() is not None

        wait_until(synced, timeout=30)
        page.get_by_role("link", name="Home").click()
        page.wait_for_selector("#fig-active")
        assert figure(page, "active") == "1" and figure(page, "issued") == "20"

        page.get_by_role("link", name="Sandbox").click()
        page.locator("#f-codes").fill(code)
        page.locator("#f-subtotal").fill("80.00")
        page.locator("#f-currency").fill("USD")
        page.get_by_role("button", name="Place order").click()
        page.wait_for_selector("#orders .status-paid")
        assert code in page.locator("#orders tbody tr").first.inner_text()

        def redeemed() -> bool:
            page.goto(f"{app.url}/admin/")
            return figure(page, "redemptions") == "1"

        wait_until(redeemed, timeout=30)
        assert figure(page, "discount") == "USD 8.00"
        assert client.post(f"/campaigns/{campaign['id']}/pause").json()["status"] == "paused"
    page.reload()
    assert figure(page, "active") == "0"


def test_errors_show_beside_their_field_in_the_browser(browser: Any, app: Running) -> None:
    """A refused form (422) is swapped in by htmx's boosted submit, red and next to its field."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(users.setup_link(app.settings, app.shop_id))
    page.locator("#f-email").fill(EMAIL)
    page.locator("#f-password").fill(PASSWORD)
    page.locator("#f-confirm").fill(PASSWORD)
    page.get_by_role("button").click()
    page.wait_for_url(f"{app.url}/admin/")
    page.goto(f"{app.url}/admin/settings")
    page.locator("#f-origins").fill("https://*.example.com")
    page.get_by_role("button", name="Save origins").click()
    error = page.locator("#e-origins")
    error.wait_for()
    assert "not an origin" in error.inner_text()
    assert page.locator("#f-origins").get_attribute("aria-invalid") == "true"
    colour = error.evaluate("e => getComputedStyle(e).color")
    assert colour == "rgb(180, 35, 24)"  # --danger: red, not a toast
    context.close()


def test_embedded_shopify_admin_with_a_stand_in_app_bridge(browser: Any, app: Running) -> None:
    """Shopify's CDN is answered by a stand-in App Bridge whose shopify.idToken() returns tokens
    signed with the test secret: the bounce page gets one, Home renders, and Settings' form posts
    carry a fresh token and the CSRF header (admin.js) through htmx."""
    domain = "test-shop.myshopify.com"
    with Session(app.engine) as session:
        session.add(Shop(platform="shopify", domain=domain, name="Test Shop", access_token_encrypted="x"))
        session.commit()
    issued: list[str] = []

    def token() -> str:
        now = int(time.time())
        claims = {"iss": f"https://{domain}/admin", "dest": f"https://{domain}", "aud": SHOPIFY["client_id"], "sub": "42",
                  "exp": now + 60, "nbf": now - 1, "iat": now - 1, "jti": f"j{len(issued)}", "sid": "s"}  # fmt: skip
        issued.append(jwt.encode(claims, SHOPIFY["client_secret"], algorithm="HS256"))
        return issued[-1]

    page = browser.new_page()
    page.expose_function("couponryTestToken", token)
    stand_in = "window.shopify = { idToken: function () { return window.couponryTestToken(); } };"
    page.route(
        "https://cdn.shopify.com/**", lambda route: route.fulfill(status=200, content_type="text/javascript", body=stand_in)
    )
    page.goto(f"{app.url}/admin/?shop={domain}&host=YWRtaW4uc2hvcGlmeS5jb20vc3RvcmUvdGVzdA")
    page.wait_for_selector("#fig-redemptions")
    assert "id_token=" in page.url and page.locator("h1").inner_text() == "Test Shop"
    page.goto(f"{app.url}/admin/settings?shop={domain}&id_token={token()}")
    assert page.locator("#set-shop").inner_text() == domain
    before = len(issued)
    page.locator("#refusals input[value=generic]").check()
    # the radio is checked in the page at once: wait for the boosted POST's answer, not for it
    with page.expect_response(lambda r: r.request.method == "POST" and "/admin/settings" in r.url) as answer:
        page.locator("#refusals").get_by_role("button", name="Save").click()
    assert answer.value.status < 400, answer.value.status  # 303: saved, then the page again
    assert len(issued) > before  # the boosted POST asked App Bridge for a fresh token
    with Session(app.engine) as session:
        shop = session.exec(select(Shop).where(col(Shop.domain) == domain)).one()
        assert shop.preferences.get("detailed_refusals") is False
