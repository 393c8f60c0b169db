"""Onsite reveal and nudges (issue 16): the storefront script's routes, the `storefront`-key reveal
(CORS, the shop's origins) and Shopify's App Proxy (each request's signature and freshness),
with their refusals, tenant isolation and caching headers. Basket conditions a live code has not
met yet are nudges: they never spend a shopper's failed-guess budget."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.distribution.claimlinks import ClaimLink, claim_token
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.models import Code, Shop, utcnow
from plugin.web.storefront import SCRIPT, SCRIPT_PATH
from tests.web.conftest import REDIS_URL, Api, TestClient, basket, make_app, make_campaign, make_key, rules

SHOP_PAGE = "https://shop.example"
CLIENT_SECRET = "shopify-app-secret-for-the-proxy-tests-0123"
SHOPIFY_DOMAIN = "onsite-test.myshopify.com"
RECIPIENT = "ada@example.com"
MINIMUM = rules(basket={"minimum_subtotal": 6200})  # £62.00 of eligible items
SHORT = basket(("p1", 2, 2500))  # £50.00: £12.00 short
ENOUGH = basket(("p1", 3, 2500))  # £75.00


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, connector_config={"shopify": {"client_id": "api-key", "client_secret": CLIENT_SECRET}})


def link_token(settings: Settings, shop_id: int, campaign_id: int, recipient: str = RECIPIENT, **kw: Any) -> str:
    expires = kw.pop("expires_at", utcnow().replace(microsecond=0) + timedelta(days=30))
    return claim_token(settings.secret_key, ClaimLink(shop_id, campaign_id, recipient, expires, **kw))


def holder(engine: Engine, shop_id: int, display: str) -> str | None:
    stored = display.replace("-", "")
    with Session(engine) as session:
        code = session.exec(select(Code).where(col(Code.shop_id) == shop_id, col(Code.code) == stored)).one()
        return code.recipient


def assigned(engine: Engine, shop_id: int) -> int:
    with Session(engine) as session:
        return len(session.exec(select(Code).where(col(Code.shop_id) == shop_id, col(Code.recipient).is_not(None))).all())


# --- the script -------------------------------------------------------------------------------


def test_the_script_url_redirects_to_the_immutable_versioned_script(client: TestClient) -> None:
    latest = client.get("/storefront/couponry.js", follow_redirects=False)
    assert latest.status_code == 302
    assert latest.headers["location"] == f"/storefront/{SCRIPT.version}/couponry.js"
    assert latest.headers["cache-control"] == "public, max-age=300"  # a release reaches pages within minutes
    plain = client.get(latest.headers["location"], headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.content == SCRIPT_PATH.read_bytes()
    assert plain.headers["content-type"] == "text/javascript; charset=utf-8"
    assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert plain.headers["x-content-type-options"] == "nosniff"
    assert plain.headers["access-control-allow-origin"] == "*"  # pages may pin it with SRI
    assert "content-encoding" not in plain.headers
    # the version is the content's hash: the immutable URL can never serve other bytes
    assert SCRIPT.version == hashlib.sha256(plain.content).hexdigest()[: len(SCRIPT.version)]


def test_the_script_is_gzipped_for_browsers_that_accept_it_and_answers_304_to_its_etag(client: TestClient) -> None:
    url = f"/storefront/{SCRIPT.version}/couponry.js"
    raw = client.stream("GET", url, headers={"Accept-Encoding": "gzip, deflate, br"})
    with raw as response:
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["vary"] == "Accept-Encoding"
        body = b"".join(response.iter_raw())
    assert gzip.decompress(body) == SCRIPT_PATH.read_bytes()
    again = client.get(url, headers={"If-None-Match": f'"{SCRIPT.version}"'})
    assert again.status_code == 304 and again.content == b""


def test_an_old_or_malformed_script_version(client: TestClient) -> None:
    old = client.get("/storefront/0123456789abcdef/couponry.js", follow_redirects=False)
    assert old.status_code == 302 and old.headers["location"] == f"/storefront/{SCRIPT.version}/couponry.js"
    assert old.headers["cache-control"] == "no-cache"  # never the immutable answer under another URL
    for bad in ("latest", "0123", "../../etc", "ZZZZZZZZZZZZZZZZ"):
        answer = client.get(f"/storefront/{bad}/couponry.js", follow_redirects=False)
        assert answer.status_code == 404, bad


def test_the_script_stays_under_10_kb_compressed() -> None:
    body = SCRIPT_PATH.read_bytes()
    assert len(gzip.compress(body, 9)) < 10_000
    try:
        import brotli  # type: ignore[import-not-found]
    except ImportError:
        return
    assert len(brotli.compress(body)) < 10_000


FORBIDDEN_UNDER_STRICT_CSP = (
    "eval(",  # script-src without 'unsafe-eval'
    "new Function",
    'setTimeout("',
    "innerHTML",  # Trusted Types (require-trusted-types-for 'script') refuse HTML sinks
    "outerHTML",
    "insertAdjacentHTML",
    "document.write",
    'setAttribute("style"',  # style-src without 'unsafe-inline' refuses style attributes
    'createElement("style")',  # and <style> elements
    'createElement("script")',
    ".cssText",
)


def test_the_script_uses_nothing_a_strict_csp_forbids() -> None:
    source = SCRIPT_PATH.read_text()
    found = [token for token in FORBIDDEN_UNDER_STRICT_CSP if token in source]
    assert found == []
    assert "adoptedStyleSheets" in source  # its styles: a constructable stylesheet, which style-src does not govern


# --- the storefront-key reveal ------------------------------------------------------------------


def reveal_with_key(client: TestClient, key: str, token: str, origin: str | None = SHOP_PAGE) -> Any:
    headers = {"Authorization": f"Bearer {key}"}
    if origin is not None:
        headers["Origin"] = origin
    return client.get(f"/api/v1/storefront/claims/{token}", headers=headers)


def allow_origin(api: Api, *origins: str) -> None:
    assert api.client.put("/api/v1/shop/origins", headers=api.headers, json={"origins": list(origins)}).status_code == 200


def test_a_storefront_key_reveals_the_links_code_from_the_shops_origin(
    engine: Engine, client: TestClient, api: Api, settings: Settings, shop_id: int
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, MINIMUM, codes=3)
    allow_origin(api, SHOP_PAGE)
    key = make_key(engine, shop_id, ("storefront",))
    token = link_token(settings, shop_id, campaign_id)
    first = reveal_with_key(client, key, token)
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"code", "expires_at", "bound", "binding"}  # never the recipient
    assert holder(engine, shop_id, body["code"]) == RECIPIENT
    assert first.headers["cache-control"] == "no-store"
    assert first.headers["access-control-allow-origin"] == SHOP_PAGE
    assert "Origin" in first.headers["vary"]
    again = reveal_with_key(client, key, token)
    assert again.json()["code"] == body["code"]  # one recipient, one code
    assert assigned(engine, shop_id) == 1
    # the preflight lets the page send its key on a GET
    asked = {"Origin": SHOP_PAGE, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    preflight = client.options(f"/api/v1/storefront/claims/{token}", headers=asked)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-methods"] == "GET"
    assert preflight.headers["access-control-allow-headers"] == "Authorization, Content-Type"


def test_the_storefront_reveal_refuses_with_reasons(
    engine: Engine, client: TestClient, api: Api, settings: Settings, shop_id: int
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, MINIMUM, codes=3)
    allow_origin(api, SHOP_PAGE)
    key = make_key(engine, shop_id, ("storefront",))
    token = link_token(settings, shop_id, campaign_id)
    other_page = reveal_with_key(client, key, token, origin="https://elsewhere.example")
    assert other_page.status_code == 403 and other_page.json()["reason"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in other_page.headers
    forged = reveal_with_key(client, key, token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    assert forged.status_code == 403 and forged.json()["reason"] == "bad_link"
    assert forged.headers["access-control-allow-origin"] == SHOP_PAGE  # the page can read why
    expired = link_token(settings, shop_id, campaign_id, expires_at=utcnow().replace(microsecond=0) - timedelta(seconds=1))
    answer = reveal_with_key(client, key, expired)
    assert answer.status_code == 410 and answer.json()["reason"] == "link_expired"
    too_long = reveal_with_key(client, key, "x" * 2000)
    assert too_long.status_code == 404 and too_long.json()["reason"] == "link_not_found"
    checkout_key = make_key(engine, shop_id, ("checkout",))
    assert reveal_with_key(client, checkout_key, token, origin=None).json()["reason"] == "insufficient_scope"
    unauthenticated = client.get(f"/api/v1/storefront/claims/{token}")
    assert unauthenticated.status_code == 401
    assert assigned(engine, shop_id) == 0  # no refusal assigned a code


def test_a_storefront_key_never_reveals_another_shops_link(
    engine: Engine, client: TestClient, api: Api, settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    other_campaign, _ = make_campaign(engine, other_shop_id, MINIMUM, codes=3)
    allow_origin(api, SHOP_PAGE)
    key = make_key(engine, shop_id, ("storefront",))
    theirs = link_token(settings, other_shop_id, other_campaign)
    answer = reveal_with_key(client, key, theirs)
    assert answer.status_code == 404 and answer.json()["reason"] == "link_not_found"
    assert assigned(engine, other_shop_id) == 0


# --- Shopify's App Proxy -------------------------------------------------------------------------


@pytest.fixture
def shopify_shop_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        shop = Shop(platform="shopify", domain=SHOPIFY_DOMAIN)
        session.add(shop)
        session.flush()
        assert shop.id is not None
        return shop.id


def signed_query(shop: str = SHOPIFY_DOMAIN, *, timestamp: int | None = None, customer: str = "", secret: str = CLIENT_SECRET,
                 **extra: str) -> str:  # fmt: skip
    """The query Shopify's proxy adds, signed as "Authenticate app proxies" documents."""
    params = {
        "shop": shop,
        "logged_in_customer_id": customer,
        "path_prefix": "/apps/couponry",
        "timestamp": str(int(time.time()) if timestamp is None else timestamp),
        **extra,
    }
    message = "".join(sorted(f"{k}={v}" for k, v in params.items()))
    signature = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return urlencode({**params, "signature": signature})


def proxy_reveal(client: TestClient, token: str, query: str | None = None) -> Any:
    return client.get(f"/proxy/shopify/claims/{token}?{query if query is not None else signed_query()}")


def proxy_check(client: TestClient, token: str, basket_: Any, query: str | None = None, customer: str = "") -> Any:
    """As the script asks: the basket in the query, signed by Shopify with the rest of it."""
    if query is None:
        query = signed_query(customer=customer, basket=json.dumps(basket_))
    return client.get(f"/proxy/shopify/claims/{token}/check?{query}")


def proxy_check_posted(client: TestClient, token: str, basket_: Any) -> Any:
    return client.post(f"/proxy/shopify/claims/{token}/check?{signed_query()}", json={"basket": basket_})


def test_the_app_proxy_reveals_and_checks_with_a_good_signature(
    engine: Engine, client: TestClient, settings: Settings, shopify_shop_id: int
) -> None:
    campaign_id, _ = make_campaign(engine, shopify_shop_id, MINIMUM, codes=3)
    token = link_token(settings, shopify_shop_id, campaign_id)
    revealed = proxy_reveal(client, token)
    assert revealed.status_code == 200, revealed.text
    assert revealed.headers["cache-control"] == "no-store"
    assert "access-control-allow-origin" not in revealed.headers  # same origin: the shop's own domain
    assert holder(engine, shopify_shop_id, revealed.json()["code"]) == RECIPIENT
    short = proxy_check(client, token, SHORT)
    assert short.status_code == 200 and short.headers["cache-control"] == "no-store"
    assert short.json()["valid"] is False
    shopper = short.json()["shopper"]
    assert shopper["reason"] == "minimum_subtotal_not_met"
    assert shopper["details"]["missing_amount"] == 1200 and shopper["details"]["currency"] == "GBP"
    assert "£12.00" in shopper["message"]
    assert proxy_check_posted(client, token, SHORT).json() == short.json()  # the same in a JSON body
    enough = proxy_check(client, token, ENOUGH)
    assert enough.json()["valid"] is True and enough.json()["discount"]["amount"] == 750  # 10% of £75.00
    assert set(enough.json()) == {"valid", "discount", "shopper"}  # the storefront view, no stored code


def test_the_app_proxy_refuses_bad_stale_and_tampered_signatures(
    engine: Engine, client: TestClient, settings: Settings, shopify_shop_id: int
) -> None:
    campaign_id, _ = make_campaign(engine, shopify_shop_id, MINIMUM, codes=3)
    token = link_token(settings, shopify_shop_id, campaign_id)
    now = int(time.time())
    refused = {
        "another secret": signed_query(secret="not-the-apps-secret"),
        "stale": signed_query(timestamp=now - 330),  # (the exact bounds: tests/connectors/test_shopify_app_proxy.py)
        "from the future": signed_query(timestamp=now + 330),
        "no signature": urlencode({"shop": SHOPIFY_DOMAIN, "timestamp": str(now), "path_prefix": "/apps/couponry"}),
        "tampered shop": signed_query().replace(SHOPIFY_DOMAIN, "someone-else.myshopify.com"),
        "customer added after signing": signed_query() + "&logged_in_customer_id=42",
        "not a timestamp": signed_query(timestamp=None).replace("timestamp=", "timestamp=x"),
        "basket changed after signing": signed_query(basket=json.dumps(SHORT)).replace("2500", "9500"),
    }
    for why, query in refused.items():
        for answer in (proxy_reveal(client, token, query), proxy_check(client, token, SHORT, query)):
            assert answer.status_code == 401, why
            assert answer.json()["reason"] == "bad_signature", why
    assert proxy_reveal(client, token, signed_query(timestamp=int(time.time()) - 270)).status_code == 200  # within the skew
    assert assigned(engine, shopify_shop_id) == 1


def test_the_app_proxy_keeps_shops_apart(
    engine: Engine, client: TestClient, settings: Settings, shopify_shop_id: int, shop_id: int
) -> None:
    """A correctly signed request for one shop never reaches another shop's link; a shop without
    the app (or uninstalled) is refused."""
    local_campaign, _ = make_campaign(engine, shop_id, MINIMUM, codes=3)
    theirs = link_token(settings, shop_id, local_campaign)
    for answer in (proxy_reveal(client, theirs), proxy_check(client, theirs, SHORT)):
        assert answer.status_code == 404 and answer.json()["reason"] == "link_not_found"
    assert assigned(engine, shop_id) == 0
    own_campaign, _ = make_campaign(engine, shopify_shop_id, MINIMUM, codes=3)
    mine = link_token(settings, shopify_shop_id, own_campaign)
    unknown = proxy_reveal(client, mine, signed_query("not-installed.myshopify.com"))
    assert unknown.status_code == 404 and unknown.json()["reason"] == "shop_not_found"
    with session_scope(engine) as session:
        shop = session.get_one(Shop, shopify_shop_id)
        shop.uninstalled_at = utcnow()
        session.add(shop)
    gone = proxy_reveal(client, mine)
    assert gone.status_code == 404 and gone.json()["reason"] == "shop_not_found"


def test_the_app_proxy_refuses_bad_input(engine: Engine, client: TestClient, settings: Settings, shopify_shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shopify_shop_id, MINIMUM, codes=3)
    token = link_token(settings, shopify_shop_id, campaign_id)
    bad_baskets: list[Any] = [
        None,
        {"currency": "pounds", "lines": []},
        {"currency": "GBP", "lines": [{"product_id": "p1", "quantity": -1, "unit_price": 100}]},
        {"currency": "GBP", "lines": [{"product_id": "p1", "quantity": 1, "unit_price": 1.5}]},
    ]
    for bad in bad_baskets:
        for answer in (proxy_check(client, token, bad), proxy_check_posted(client, token, bad)):
            assert answer.status_code == 422, bad
            assert answer.json()["reason"]
    for query in (signed_query(), signed_query(basket="{"), signed_query(basket=json.dumps(SHORT) + " " * 17_000)):
        answer = proxy_check(client, token, None, query)
        assert answer.status_code == 422 and answer.json()["reason"] in ("invalid_basket", "invalid_input"), query[:80]
    not_json = client.post(
        f"/proxy/shopify/claims/{token}/check?{signed_query()}", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    forged = proxy_reveal(client, token[:-3] + "abc")
    assert forged.status_code == 403 and forged.json()["reason"] == "bad_link"
    assert proxy_reveal(client, "x" * 5000).json()["reason"] == "link_not_found"
    assert client.put(f"/proxy/shopify/claims/{token}/check?{signed_query()}").status_code == 405


def test_the_app_proxy_needs_the_apps_client_secret(engine: Engine, settings: Settings, shopify_shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shopify_shop_id, MINIMUM, codes=3)
    bare = replace(settings, connector_config={})
    with TestClient(make_app(bare, engine)) as client:
        answer = proxy_reveal(client, link_token(settings, shopify_shop_id, campaign_id))
    assert answer.status_code == 503 and answer.json()["reason"] == "app_proxy_not_configured"


def test_a_signed_in_customer_is_who_the_proxy_checks_for(
    engine: Engine, client: TestClient, settings: Settings, shopify_shop_id: int
) -> None:
    """A code bound to its recipient answers for the link's recipient; Shopify's signed-in
    customer, when there is one, is who the check is made for."""
    bound = rules(basket={"minimum_subtotal": 6200}, distribution={"binding": "claim"})
    campaign_id, _ = make_campaign(engine, shopify_shop_id, bound, codes=3)
    token = link_token(settings, shopify_shop_id, campaign_id, recipient="id:7001")
    assert proxy_reveal(client, token).json()["bound"] is True
    theirs = proxy_check(client, token, ENOUGH, customer="7001")
    assert theirs.json()["valid"] is True
    as_link = proxy_check(client, token, ENOUGH)  # a guest holding the link: checked as its recipient
    assert as_link.json()["valid"] is True
    someone_else = proxy_check(client, token, ENOUGH, customer="9999")
    assert someone_else.json()["valid"] is False
    assert someone_else.json()["shopper"]["reason"] == "bound_to_other_customer"


# --- nudges are not guesses -------------------------------------------------------------------

LIMIT = 4


@pytest.fixture(params=["memory", "redis"])
def strict_client(request: pytest.FixtureRequest, settings: Settings, engine: Engine) -> Any:
    if request.param == "redis":
        if not REDIS_URL:
            pytest.skip("Redis rate-limit storage: set COUPONRY_TEST_REDIS_URL")
        settings = replace(settings, redis_url=REDIS_URL)
    with TestClient(make_app(settings, engine, limit=f"{LIMIT}/minute", unnamed=f"{LIMIT}/minute")) as client:
        yield client


def test_basket_nudges_never_count_as_failed_guesses_on_either_path(
    engine: Engine, strict_client: TestClient, settings: Settings, shop_id: int, shopify_shop_id: int
) -> None:
    admin = Api(strict_client, make_key(engine, shop_id))
    allow_origin(admin, SHOP_PAGE)
    campaign_id, _ = make_campaign(engine, shop_id, MINIMUM, codes=3)
    key = make_key(engine, shop_id, ("storefront",))
    code = reveal_with_key(strict_client, key, link_token(settings, shop_id, campaign_id)).json()["code"]
    headers = {"Authorization": f"Bearer {key}", "Origin": SHOP_PAGE}
    for _ in range(LIMIT * 3):  # a shopper filling their basket, checking after every change
        answer = strict_client.post("/api/v1/validate", headers=headers, json={"code": code, "basket": SHORT})
        assert answer.status_code == 200
        assert answer.json()["shopper"]["reason"] == "minimum_subtotal_not_met"
        assert answer.json()["shopper"]["details"]["missing_amount"] == 1200  # the nudge survives the generic view
    proxy_campaign, _ = make_campaign(engine, shopify_shop_id, MINIMUM, codes=3)
    proxy_token = link_token(settings, shopify_shop_id, proxy_campaign)
    for _ in range(LIMIT * 3):
        assert proxy_check(strict_client, proxy_token, SHORT).json()["shopper"]["reason"] == "minimum_subtotal_not_met"
    # the same shopper's budget is intact: a live code still validates, and real guesses still count
    assert strict_client.post("/api/v1/validate", headers=headers, json={"code": code, "basket": ENOUGH}).json()["valid"]
    statuses = [
        strict_client.post("/api/v1/validate", headers=headers, json={"code": f"NOPE{i:06d}", "basket": SHORT}).status_code
        for i in range(LIMIT + 1)
    ]
    assert statuses == [200] * LIMIT + [429]
