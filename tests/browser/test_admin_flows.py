"""The admin in a real headless Chromium against a real server (uvicorn, SQLite file, the
sandbox store, the in-process worker), run on SQLite only: the server owns its own database.

Everything a merchant does here is clicked and typed in the pages: first-run setup, the Campaigns
form with its live preview, generation with its live progress figure, the push to the platform,
a sandbox order, the Redemption syncs log, Home's figures, pause with its platform outcome,
retrying a failed sync from Sync health, code search as a shopper typed it, bulk deactivate and a
CSV import's row report. The one thing set outside the pages is the sandbox store's fault knob
(its API answering 503), the stand-in for a platform outage.
"""

from __future__ import annotations

import re
import time
from typing import Any

import jwt
from sqlmodel import Session, col, select

from plugin.sandbox import store as sandbox
from plugin.shops import users
from plugin.store.db import session_scope
from plugin.store.models import Shop
from tests.browser.harness import SHOPIFY, Running, wait_until

PASSWORD = "correct horse battery staple"
EMAIL = "owner@shop.example"
GENERATED = 20_000  # the page shows the batch running, then done


def figure(page: Any, name: str) -> str:
    return str(page.locator(f"#fig-{name}").inner_text()).strip()


def text(page: Any, selector: str) -> str:
    """The element's text as in the page (textContent: before CSS changes its case)."""
    return " ".join(str(page.locator(selector).first.text_content()).split())


def watch_csp(page: Any) -> list[str]:
    """Console messages where the browser refused something under our CSP (none is expected)."""
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    return refused


def set_up_owner(app: Running, page: Any) -> None:
    page.goto(users.setup_link(app.settings, app.shop_id))
    page.locator("#f-email").fill(EMAIL)
    page.locator("#f-password").fill(PASSWORD)
    page.locator("#f-confirm").fill(PASSWORD)
    page.get_by_role("button").click()
    page.wait_for_url(f"{app.url}/admin/")


def create_campaign(page: Any, name: str, *, prefix: str, percent: str) -> int:
    """Through Campaigns → New campaign; the live preview follows the format fields as typed."""
    page.get_by_role("link", name="Campaigns", exact=True).click()
    page.get_by_role("link", name="New campaign").click()
    page.wait_for_selector("#format-preview")
    page.locator("#f-name").fill(name)
    page.locator("#f-length").fill("12")
    page.locator("#f-prefix").fill(prefix)
    # the preview is asked for again (htmx, 400 ms after typing) and its samples take the prefix
    page.wait_for_function(
        "p => [...document.querySelectorAll('#format-preview .samples code')].every(c => c.textContent.startsWith(p))"
        " && document.querySelectorAll('#format-preview .samples code').length > 0",
        arg=prefix,
    )
    assert float(text(page, "#entropy").split()[0]) > 40  # 12 symbols of the safe alphabet (27 of them)
    page.locator("#f-discount_type").select_option("percentage")
    page.locator("#f-discount_value").fill(percent)
    page.locator("#f-start").select_option("active")
    page.get_by_role("button", name="Create campaign").click()
    page.wait_for_url(re.compile(r".*/admin/campaigns/\d+$"))
    assert text(page, "#campaign-status") == "active"
    return int(page.url.rsplit("/", 1)[1])


def generate(page: Any, count: int) -> str:
    """Generate on the campaign page; the batch page's figure moves without a reload (htmx polls)."""
    page.locator("#f-count").fill(str(count))
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r".*/admin/batches/\d+$"))
    first = text(page, "#batch-status")
    page.evaluate("window.__samePage = true")
    page.wait_for_function("() => document.getElementById('batch-status').textContent.trim() === 'done'", timeout=30_000)
    assert page.evaluate("window.__samePage === true")  # updated in place, not reloaded
    assert text(page, "#batch-figure") == f"{count:,} of {count:,}"
    assert page.locator("#batch-progress progress").get_attribute("value") == str(count)
    return first


def go(page: Any, link: str, path: str) -> None:
    """Click a navigation link and wait for its page (htmx's boosted links swap the body later)."""
    page.get_by_role("link", name=link, exact=True).first.click()
    page.wait_for_url(re.compile(rf".*{re.escape(path)}(\?.*)?$"))
    page.wait_for_load_state()


def reload_until(page: Any, check: Any, *, timeout: float = 60) -> None:
    def again() -> bool:
        page.reload()
        return bool(check())

    wait_until(again, timeout=timeout, every=0.5)


def test_standalone_flow_from_set_up_to_a_retried_sync(browser: Any, app: Running) -> None:
    """Set-up → a campaign from the form (live preview) → codes generated with live progress →
    pushed to the sandbox platform → a sandbox order placed on the Sandbox page → its redemption in
    the Redemption syncs log and Home's figures → the code found as a shopper typed it → pause from
    the campaign page while the platform is down: the page shows the platform's refusal, Sync
    health lists the failing job with its message, Retry → the campaign page shows the platform
    followed the pause."""
    page = browser.new_page()
    refused = watch_csp(page)
    set_up_owner(app, page)
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

    campaign_id = create_campaign(page, "Spring", prefix="SPR", percent="10")
    first = generate(page, GENERATED)
    assert first in ("queued", "running"), first  # the figure the merchant saw was a live one

    page.locator("main a", has_text="Campaign").first.click()  # back to the campaign
    assert text(page, "#fig-codes") == f"{GENERATED:,}"
    page.get_by_role("button", name="Push codes to the platform").click()
    page.wait_for_selector("#sync-queued")
    reload_until(page, lambda: f"synced {GENERATED:,}" in text(page, "#platform"))
    assert "Discount: not created yet" not in text(page, "#platform")

    go(page, "Home", "/admin/")
    assert figure(page, "active") == "1" and figure(page, "issued") == f"{GENERATED:,}"

    # a shopper's code, from the campaign's codes
    go(page, "Codes", "/admin/codes")
    page.locator("#f-campaign_id").fill(str(campaign_id))
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*/admin/codes\?.*campaign_id="))
    page.wait_for_selector("#codes tbody tr td code")
    code = text(page, "#codes tbody tr td code")
    assert code.startswith("SPR")

    go(page, "Sandbox", "/admin/sandbox")
    page.locator("#f-codes").fill(code.lower())  # as a shopper types it at the checkout
    page.locator("#f-subtotal").fill("80.00")
    page.locator("#f-currency").fill("USD")
    page.get_by_role("button", name="Place order").click()
    page.wait_for_selector("#orders .status-paid")
    assert code in page.locator("#orders tbody tr").first.inner_text()

    go(page, "Redemption syncs", "/admin/redemptions")
    reload_until(page, lambda: code in page.locator("main table tbody").inner_text())
    row = page.locator("main table tbody tr").first
    assert "Redeemed" in row.inner_text() and "USD 8.00" in row.inner_text() and "order webhook" in row.inner_text()
    go(page, "Order webhooks", "/admin/redemptions")
    page.wait_for_selector("[id^=delivery-]")
    assert "processed" in page.locator("main table tbody tr").first.inner_text()

    go(page, "Home", "/admin/")
    assert figure(page, "redemptions") == "1" and figure(page, "discount") == "USD 8.00"

    # code search as the shopper typed it: lower case, spaced, a look-alike O for the 0 it may hold
    go(page, "Codes", "/admin/codes")
    typed = " ".join(code.lower()[i : i + 3] for i in range(0, len(code), 3))
    page.locator("#f-q").fill(typed)
    page.get_by_role("button", name="Find").click()
    page.wait_for_selector("#story")
    assert code in text(page, "h1") and text(page, "#code-status") in ("active", "used")
    assert "redeemed" in text(page, "#story")

    # the platform goes down; the merchant pauses the campaign
    with session_scope(app.engine) as session:
        sandbox.set_knobs(session, app.settings.default_shop_domain, {"api_fail_rate": 1.0})
    page.goto(f"{app.url}/admin/campaigns/{campaign_id}")
    page.get_by_role("button", name="Pause").click()
    page.wait_for_url(re.compile(r".*changed=pause"))
    assert text(page, "#campaign-status") == "paused" and "Done: pause" in text(page, ".notice")
    reload_until(page, lambda: page.locator("#platform-error").count() > 0)
    assert "503" in text(page, "#platform-error") or "unavailable" in text(page, "#platform-error")

    go(page, "Sync health", "/admin/health")
    page.locator("#f-failing").check()
    page.get_by_role("button", name="Filter").click()
    failing = page.locator("tr", has_text="sync.follow").first  # the pause the platform must follow
    failing.wait_for()
    assert "unavailable" in failing.inner_text() or "503" in failing.inner_text()
    with session_scope(app.engine) as session:  # the platform is back
        sandbox.set_knobs(session, app.settings.default_shop_domain, {"api_fail_rate": 0.0})
    failing.get_by_role("button", name=re.compile("Retry")).click()
    page.wait_for_selector(".notice")
    # queued again; or, on a slow machine, the worker's own retry came due first and took it
    assert "queued to run again" in text(page, ".notice") or "no longer waiting" in text(page, ".notice")

    page.goto(f"{app.url}/admin/campaigns/{campaign_id}")
    reload_until(page, lambda: page.locator("#last-follow").count() > 0 and page.locator("#platform-error").count() == 0)
    assert "paused" in text(page, "#last-follow") or "pause" in text(page, "#last-follow")
    go(page, "Home", "/admin/")
    assert figure(page, "active") == "0"
    assert not refused, refused


def test_bulk_deactivate_names_the_count_and_an_import_reports_its_rows(browser: Any, app: Running) -> None:
    """Bulk deactivate by filter asks "void N codes?" with the filter's count before anything is
    voided, and never for an empty filter; a CSV with bad rows is refused with each row's problem
    and nothing lands; a good file lands."""
    page = browser.new_page()
    refused = watch_csp(page)
    set_up_owner(app, page)
    campaign_id = create_campaign(page, "Bulk", prefix="BLK", percent="5")
    generate(page, 12)

    go(page, "Codes", "/admin/codes")
    page.get_by_role("button", name="Count the codes to void").click()  # no filter at all
    page.wait_for_selector("#e-bulk, .field-error")
    assert page.locator("#bulk-count").count() == 0  # nothing offered to void

    page.locator("#f-campaign_id").fill(str(campaign_id))
    page.locator("#f-status").select_option("unused")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*/admin/codes\?.*campaign_id="))
    assert page.locator("#codes tbody tr").count() == 12
    page.get_by_role("button", name="Count the codes to void").click()
    page.wait_for_selector("#bulk-count")
    assert "Void 12 active codes" in text(page, "#bulk-count")
    page.locator("#f-reason").fill("leaked on a forum")
    page.get_by_role("button", name="Void 12 codes").click()
    page.wait_for_url(re.compile(r".*voided=12"))
    assert text(page, "#voided").startswith("12 codes voided")
    page.locator("#f-campaign_id").fill(str(campaign_id))
    page.locator("#f-status").select_option("voided")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*/admin/codes\?.*campaign_id="))
    assert page.locator("#codes tbody tr").count() == 12

    page.goto(f"{app.url}/admin/campaigns/{campaign_id}")
    bad = b"code,email\nBLKGOOD1,ann@example.com\nno!,\nBLKGOOD2,ann@example.com\n"
    page.locator("#f-file").set_input_files({"name": "codes.csv", "mimeType": "text/csv", "buffer": bad})
    page.get_by_role("button", name="Import", exact=True).click()
    page.wait_for_selector("#import-report")
    assert "nothing was imported" in text(page, "#e-file")
    rows = [r.inner_text() for r in page.locator("#import-report tbody tr").all()]
    assert len(rows) == 2 and rows[0].startswith("3") and rows[1].startswith("4"), rows
    page.goto(f"{app.url}/admin/campaigns/{campaign_id}")
    assert text(page, "#fig-codes") == "12"  # nothing landed

    good = b"code\nBLKGOOD1\nBLKGOOD2\n"
    page.locator("#f-file").set_input_files({"name": "codes.csv", "mimeType": "text/csv", "buffer": good})
    page.get_by_role("button", name="Import", exact=True).click()
    page.wait_for_selector("#batch-status")
    assert text(page, "#batch-status") == "done" and text(page, "#batch-figure") == "2 of 2"
    page.goto(f"{app.url}/admin/campaigns/{campaign_id}")
    assert text(page, "#fig-codes") == "14"
    assert not refused, refused


def test_errors_show_beside_their_field_in_the_browser(browser: Any, app: Running) -> None:
    """A refused form (422) is swapped in by htmx's boosted submit, red and next to its field."""
    context = browser.new_context()
    page = context.new_page()
    set_up_owner(app, page)
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
