"""Building a shop's platform connector from the registry, the settings and the shop's credentials.

The sandbox needs no configuration: its base URL, webhook secret and per-shop tokens derive
from the app's own settings (plugin.shared_secrets).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine

from connectors import shop_connector_class
from connectors.base import ConnectorConfig, Credentials, ShopConnector
from connectors.errors import AuthError
from plugin.settings import Settings
from plugin.shops import tokens
from plugin.store.models import Shop


def connector_config(settings: Settings, platform: str) -> ConnectorConfig:
    options = dict(settings.connector_config.get(platform, {}))
    if platform == "sandbox":
        from plugin import shared_secrets as keys

        options.setdefault("base_url", keys.api_base_url(settings))
        options.setdefault("webhook_secret", keys.webhook_secret(settings))
    return ConnectorConfig(
        base_url=options.get("base_url"),
        client_id=options.get("client_id", ""),
        client_secret=options.get("client_secret", ""),
        webhook_secret=options.get("webhook_secret", ""),
        extra=options,
    )


def shop_credentials(settings: Settings, shop: Shop) -> Credentials:
    """What the shop granted us, decrypted (plugin.shops.tokens); AuthError when it uninstalled the app."""
    if shop.platform == "sandbox":
        from plugin import shared_secrets as keys

        return Credentials(shop_domain=shop.domain, access_token=keys.access_token(settings, shop.domain))
    if shop.uninstalled_at is not None or not shop.access_token_encrypted:
        raise AuthError(f"{shop.platform} shop {shop.domain} has no access token (the app is not installed)")
    stored = tokens.decrypt(settings, shop.access_token_encrypted)
    return Credentials(
        shop_domain=shop.domain, access_token=stored.access_token, scopes=tuple(shop.scopes.split()), extra=stored.extra
    )


def webhook_shop_hint(platform: str, headers: Mapping[str, str], body: bytes) -> str | None:
    """The shop an unverified delivery says it is from, for platforms whose deliveries are signed
    with a per-shop secret (WooCommerce, BigCommerce's secret header): the shop's own connector
    then verifies it. None for platforms signed with the app's secret."""
    if platform == "woocommerce":
        source = headers.get("x-wc-webhook-source")
        return normalise_store_url(source) if source else None
    if platform == "bigcommerce":
        try:
            producer = str(json.loads(body).get("producer") or "")
        except (ValueError, AttributeError):
            return None
        return producer.removeprefix("stores/") if producer.startswith("stores/") else None
    return None


# (shop, topic, delivery id) headers of each platform's webhooks, for a delivery refused unread
_DELIVERY_HEADERS = {
    "shopify": ("x-shopify-shop-domain", "x-shopify-topic", "x-shopify-webhook-id"),
    "woocommerce": ("x-wc-webhook-source", "x-wc-webhook-topic", "x-wc-webhook-delivery-id"),
    "bigcommerce": ("", "", "webhook-id"),  # its shop and scope are only in the body
    "sandbox": ("x-sandbox-shop-domain", "x-sandbox-topic", "x-sandbox-delivery-id"),
}


def webhook_headline(platform: str, headers: Mapping[str, str]) -> tuple[str | None, str, str]:
    """What a delivery's headers alone say it is: (shop domain or None, topic, delivery id),
    unverified, for one refused before its body was read. `headers`: names in lower case."""
    shop_name, topic_name, id_name = _DELIVERY_HEADERS.get(platform, ("", "", ""))
    shop = headers.get(shop_name, "").strip() if shop_name else ""
    if platform == "woocommerce" and shop:
        try:
            shop = normalise_store_url(shop) or ""
        except ValueError:  # e.g. an unclosed IPv6 bracket
            shop = ""
    elif shop:
        shop = shop.lower()
    topic = headers.get(topic_name, "").strip()[:128] if topic_name else ""
    return shop or None, topic, headers.get(id_name, "").strip()[:255]


def normalise_store_url(url: str) -> str | None:
    """A WooCommerce store's URL as a shop domain: scheme and lower-case host (and path), no
    trailing slash; https unless given otherwise. None when it is not a URL (an unbalanced
    IPv6 bracket or a port out of range included: such a value comes from outside, e.g. the
    unsigned `X-WC-Webhook-Source` header, and must not raise)."""
    value = url.strip()
    if "://" not in value:
        value = "https://" + value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    host = parts.hostname.lower()
    host = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")  # an IPv6 literal keeps its brackets
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}"


def platform_connector(settings: Settings, http: httpx.AsyncClient, platform: str, **kwargs: Any) -> ShopConnector:
    """A connector without shop credentials: enough to verify and parse webhooks."""
    connector: ShopConnector = shop_connector_class(platform)(http, connector_config(settings, platform), None, **kwargs)
    return connector


def shop_connector(
    settings: Settings, http: httpx.AsyncClient, shop: Shop, *, engine: Engine | None = None, **kwargs: Any
) -> ShopConnector:
    """The shop's connector with its credentials. A Shopify connector draws on the shop's one cost
    bucket in this process, kept in Redis or (given the engine) the database for every worker."""
    cls = shop_connector_class(shop.platform)
    if shop.platform == "shopify" and "bucket" not in kwargs:
        from plugin.store import ratestate

        kwargs["bucket"] = ratestate.shopify_bucket(settings, engine, shop.domain)
    connector: ShopConnector = cls(http, connector_config(settings, shop.platform), shop_credentials(settings, shop), **kwargs)
    return connector
