"""Building a shop's platform connector from the registry, the settings and the shop's credentials.

The sandbox needs no configuration: its base URL, webhook secret and per-shop tokens derive
from the app's own settings (plugin.sandbox.keys).
"""

from __future__ import annotations

from typing import Any

import httpx

from connectors import shop_connector_class
from connectors.base import ConnectorConfig, Credentials, ShopConnector
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
    if shop.platform == "sandbox":
        from plugin.sandbox import keys

        return Credentials(shop_domain=shop.domain, access_token=keys.access_token(settings, shop.domain))
    # TODO(lead): decrypt shop.access_token_encrypted once the token vault lands.
    return Credentials(shop_domain=shop.domain, access_token="", scopes=tuple(shop.scopes.split()))


def platform_connector(settings: Settings, http: httpx.AsyncClient, platform: str, **kwargs: Any) -> ShopConnector:
    """A connector without shop credentials: enough to verify and parse webhooks."""
    connector: ShopConnector = shop_connector_class(platform)(http, connector_config(settings, platform), None, **kwargs)
    return connector


def shop_connector(settings: Settings, http: httpx.AsyncClient, shop: Shop, **kwargs: Any) -> ShopConnector:
    cls = shop_connector_class(shop.platform)
    connector: ShopConnector = cls(http, connector_config(settings, shop.platform), shop_credentials(settings, shop), **kwargs)
    return connector
