"""Shopify's App Proxy signature, against the vectors Shopify documents ("Authenticate app
proxies", shopify.dev/docs/apps/build/online-store/app-proxies/authenticate-app-proxies): shared
secret `hush`, forwarded query `extra=1&extra=2&shop=shop-name.myshopify.com&logged_in_customer_id=1
&path_prefix=%2Fapps%2Fawesome_reviews&timestamp=1317327555` signed `4c68c862...`; the page's older
revision, without `logged_in_customer_id`, signed `a9718877...`."""

from __future__ import annotations

from urllib.parse import parse_qsl

import httpx
import pytest

from connectors.base import ConnectorConfig
from connectors.errors import AuthError, BadSignature
from connectors.shopify import ShopifyConnector

DOCUMENTED = (
    "extra=1&extra=2&shop=shop-name.myshopify.com&logged_in_customer_id=1&path_prefix=%2Fapps%2Fawesome_reviews"
    "&timestamp=1317327555&signature=4c68c8624d737112c91818c11017d24d334b524cb5c2b8ba08daa056f7395ddb"
)
DOCUMENTED_BEFORE_CUSTOMER_ID = (
    "extra=1&extra=2&shop=shop-name.myshopify.com&path_prefix=%2Fapps%2Fawesome_reviews"
    "&timestamp=1317327555&signature=a9718877bea71c2484f91608a7eaea1532bdf71f5c56825065fa4ccabe549ef3"
)
SIGNED_AT = 1317327555


def connector(secret: str = "hush") -> ShopifyConnector:
    return ShopifyConnector(httpx.AsyncClient(), ConnectorConfig(client_id="key", client_secret=secret))


@pytest.mark.parametrize("query", [DOCUMENTED, DOCUMENTED_BEFORE_CUSTOMER_ID])
def test_the_documented_signatures_verify(query: str) -> None:
    pairs = parse_qsl(query, keep_blank_values=True)
    expected = dict(pairs)["signature"]
    assert connector().app_proxy_signature(pairs) == expected  # repeated keys joined by commas
    signed = connector().verify_app_proxy_query(pairs, now=SIGNED_AT + 10)
    assert signed.shop == "shop-name.myshopify.com"
    assert signed.path_prefix == "/apps/awesome_reviews"
    assert signed.customer_id == ("1" if "logged_in_customer_id" in query else None)


def test_a_changed_parameter_another_secret_or_a_stale_timestamp_is_refused() -> None:
    pairs = parse_qsl(DOCUMENTED, keep_blank_values=True)
    with pytest.raises(BadSignature, match="does not match"):
        connector("not-hush").verify_app_proxy_query(pairs, now=SIGNED_AT)
    changed = [(k, "2" if k == "logged_in_customer_id" else v) for k, v in pairs]
    with pytest.raises(BadSignature, match="does not match"):
        connector().verify_app_proxy_query(changed, now=SIGNED_AT)
    reordered = [(k, v) for k, v in pairs if k != "extra"] + [("extra", "2"), ("extra", "1")]
    with pytest.raises(BadSignature):  # "2,1" is not what Shopify signed
        connector().verify_app_proxy_query(reordered, now=SIGNED_AT)
    skew = ShopifyConnector.APP_PROXY_MAX_SKEW
    connector().verify_app_proxy_query(pairs, now=SIGNED_AT + skew)
    connector().verify_app_proxy_query(pairs, now=SIGNED_AT - skew)
    for now in (SIGNED_AT + skew + 1, SIGNED_AT - skew - 1):
        with pytest.raises(BadSignature, match="stale"):
            connector().verify_app_proxy_query(pairs, now=now)
    twice = [*pairs, ("signature", dict(pairs)["signature"])]
    with pytest.raises(BadSignature):
        connector().verify_app_proxy_query(twice, now=SIGNED_AT)


def test_without_a_client_secret_nothing_verifies() -> None:
    with pytest.raises(AuthError):
        connector("").verify_app_proxy_query(parse_qsl(DOCUMENTED), now=SIGNED_AT)
