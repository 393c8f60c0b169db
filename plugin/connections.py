"""Building a shop's platform connector from the registry, the settings and the shop's credentials.

The sandbox needs no configuration: its base URL, webhook secret and per-shop tokens derive
from the app's own settings (plugin.sandbox.keys).
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
from plugin import tokens
from plugin.models import Shop
from plugin.settings import Settings


def connector_config(settings: Settings, platform: str) -> ConnectorConfig:
    options = dict(settings.connector_config.get(platform, {}))
    if platform == "sandbox":
        from plugin.sandbox import keys

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
    """What the shop granted us, decrypted (plugin.tokens); AuthError when it uninstalled the app."""
    if shop.platform == "sandbox":
        from plugin.sandbox import keys

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


def normalise_store_url(url: str) -> str | None:
    """A WooCommerce store's URL as a shop domain: scheme and lower-case host (and path), no
    trailing slash; https unless given otherwise. None when it is not a URL."""
    value = url.strip()
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    host = parts.hostname.lower() + (f":{parts.port}" if parts.port else "")
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
        from plugin import ratestate

        kwargs["bucket"] = ratestate.shopify_bucket(settings, engine, shop.domain)
    connector: ShopConnector = cls(http, connector_config(settings, shop.platform), shop_credentials(settings, shop), **kwargs)
    return connector
