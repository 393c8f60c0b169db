"""The storefront script in a real headless Chromium, on a test shop whose pages are served under
a strict Content-Security-Policy (no inline script or style, no eval, Trusted Types required,
styles from nowhere), on both paths:

- storefront key: the shop's page (its own https origin) loads the script from the app and calls
  the app cross-origin (CORS, the shop's allowed origins);
- Shopify App Proxy: the page loads the theme extension's copy from its own origin and calls
  `/apps/couponry/...` on its own domain, which the test shop forwards to the app signed as
  Shopify's proxy signs it; the page holds no key.

Each: a signed claim link (`?couponry=<token>`) reveals the recipient's code, Copy puts it on the
clipboard, and the nudge changes as the basket does. Run on SQLite only: the server owns its own
database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from plugin.campaigns import campaigns, issuing
from plugin.distribution.claimlinks import ClaimLink, claim_token
from plugin.shops import apikeys
from plugin.shops.shops import set_allowed_origins
from plugin.store.db import session_scope
from plugin.store.models import Code, Shop, utcnow
from tests.browser.harness import SHOPIFY, Running, wait_until
from tests.browser.shopsite import SockShop, running_shop, violations

SHOPIFY_DOMAIN = "sock-shop.myshopify.com"
RECIPIENT = "ada@example.com"
FORMAT = {"length": 10, "check_chars": 1}


def campaign(run: Running, shop_id: int, basket_rules: dict[str, Any]) -> int:
    rules = {"currency": "GBP", "discount": {"type": "percentage", "percent": "10"}, "basket": basket_rules}
    with session_scope(run.engine) as session:
        made = campaigns.create_campaign(session, shop_id=shop_id, name="Socks", code_format=FORMAT, currency="GBP", rules=rules)
        campaign_id = made.id
    assert campaign_id is not None
    issuing.generate_codes(run.engine, shop_id=shop_id, campaign_id=campaign_id, count=5)
    return campaign_id


def holder(run: Running, shop_id: int, shown: str) -> str | None:
    with Session(run.engine) as session:
        row = session.exec(select(Code).where(col(Code.shop_id) == shop_id, col(Code.code) == shown.replace("-", ""))).one()
        return row.recipient


def link(run: Running, shop_id: int, campaign_id: int) -> str:
    expires = utcnow().replace(microsecond=0) + timedelta(days=30)
    return claim_token(run.settings.secret_key, ClaimLink(shop_id, campaign_id, RECIPIENT, expires))


@pytest.fixture
def shop(app: Running, tmp_path: Path) -> Iterator[SockShop]:
    with running_shop(tmp_path, app_url=app.url, proxy_secret=SHOPIFY["client_secret"], shopify_domain=SHOPIFY_DOMAIN) as site:
        yield site


@pytest.fixture
def context(browser: Any, shop: SockShop) -> Iterator[Any]:
    ctx = browser.new_context(ignore_https_errors=True)  # the test shop's certificate is self-signed
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=shop.url)
    try:
        yield ctx
    finally:
        ctx.close()


def nudge(page: Any) -> str:
    return str(page.locator("[data-couponry] .nudge").inner_text()).strip()


def wait_for_nudge(page: Any, text: str) -> None:
    try:
        wait_until(lambda: nudge(page) == text, timeout=15)
    except AssertionError:
        raise AssertionError(f"nudge stayed {nudge(page)!r}, wanted {text!r}") from None


def copy_and_read(page: Any) -> str:
    page.locator("[data-couponry] button.copy").click()
    wait_until(lambda: page.locator("[data-couponry] button.copy").inner_text() == "Copied", timeout=5)
    return str(page.evaluate("navigator.clipboard.readText()"))


def test_storefront_key_reveal_copy_and_nudges_under_a_strict_csp(app: Running, shop: SockShop, context: Any) -> None:
    campaign_id = campaign(app, app.shop_id, {"minimum_subtotal": 6200})  # £62.00; the page's basket is £50.00
    with session_scope(app.engine) as session:
        _, shop.key = apikeys.create_key(session, shop_id=app.shop_id, name="storefront", scopes=["storefront"])
        set_allowed_origins(session, app.shop_id, [shop.url])
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{shop.url}/?couponry={link(app, app.shop_id, campaign_id)}&utm_source=email")
    code = page.locator("[data-couponry] .code")
    wait_until(lambda: code.inner_text().strip() != "", timeout=15)
    shown = code.inner_text().strip()
    assert holder(app, app.shop_id, shown) == RECIPIENT
    assert "couponry=" not in page.url and "utm_source=email" in page.url  # the personal link leaves the address bar
    wait_for_nudge(page, "Spend £12.00 more to use your code")
    assert copy_and_read(page) == shown
    page.get_by_role("button", name="Add a sock").click()  # £75.00
    wait_for_nudge(page, "Your code takes £7.50 off this basket")
    page.get_by_role("button", name="Remove a sock").click()
    page.get_by_role("button", name="Remove a sock").click()  # £25.00
    wait_for_nudge(page, "Spend £37.00 more to use your code")
    assert not page.locator("[data-couponry] button.apply").count()  # no cart URL to apply to off Shopify
    # styled by its constructable stylesheet, which `style-src 'none'` does not block
    position = page.locator("[data-couponry] .bar").evaluate("e => getComputedStyle(e).position")
    assert position == "fixed"
    assert violations(page) == ""
    assert not [e for e in errors if "Content Security Policy" in e or "TrustedHTML" in e], errors
    # the next page of the shop shows the code again without the link
    page.goto(f"{shop.url}/")
    wait_until(lambda: page.locator("[data-couponry] .code").inner_text().strip() == shown, timeout=15)


def test_shopify_app_proxy_reveal_copy_apply_and_nudges_with_no_key(app: Running, shop: SockShop, context: Any) -> None:
    with session_scope(app.engine) as session:
        shopify_shop = Shop(platform="shopify", domain=SHOPIFY_DOMAIN)
        session.add(shopify_shop)
        session.flush()
        shop_id = shopify_shop.id
    assert shop_id is not None
    campaign_id = campaign(app, shop_id, {"minimum_quantity": 3})  # the cart holds two socks
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{shop.url}/shopify?couponry={link(app, shop_id, campaign_id)}")
    code = page.locator("[data-couponry] .code")
    wait_until(lambda: code.inner_text().strip() != "", timeout=15)
    shown = code.inner_text().strip()
    assert holder(app, shop_id, shown) == RECIPIENT
    wait_for_nudge(page, "Add one more item to use your code")
    assert copy_and_read(page) == shown
    page.get_by_role("button", name="Add a sock").click()  # /cart/add.js, as a theme's button would
    wait_for_nudge(page, "Your code takes £7.50 off this basket")
    page.get_by_role("button", name="Remove a sock").click()  # /cart/change.js: one sock left
    wait_for_nudge(page, "Add 2 more items to use your code")
    assert shop.forwarded[0].startswith("GET claims/") and any(f.endswith("/check") for f in shop.forwarded)
    html = page.content()
    assert "cpy_" not in html and "Bearer" not in html  # no key anywhere on the page
    assert violations(page) == ""
    assert not [e for e in errors if "Content Security Policy" in e or "TrustedHTML" in e], errors
    page.locator("[data-couponry] button.apply").click()  # Shopify's /discount/<code>?redirect=<this page>
    wait_until(lambda: shop.applied, timeout=10)
    assert shop.applied == [shown]
    page.wait_for_url(f"{shop.url}/shopify")
