"""The Settings page's facts for one shop: its platform connection, the installation's messaging
providers, its API keys (never their secrets) and its shopper-facing preferences."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from plugin.distribution.providers import Provider, providers
from plugin.overview.home import setup_status
from plugin.settings import Settings
from plugin.shops import apikeys
from plugin.shops.shops import REFUSAL_MODES, allowed_origins, get_shop, refusal_mode
from plugin.store.models import ApiKey


@dataclass(frozen=True)
class ShopSettings:
    domain: str
    platform: str
    connected: bool
    webhooks: str  # as plugin.overview.home.Setup.webhooks
    providers: list[Provider]
    keys: list[ApiKey]
    refusal_mode: str
    refusal_modes: tuple[str, ...]
    origins: list[str]
    timezone: str = "UTC"  # results' days (plugin.shops.timezones)


def shop_settings(session: Session, settings: Settings, shop_id: int) -> ShopSettings:
    shop = get_shop(session, shop_id)
    setup = setup_status(session, settings, shop)
    keys = apikeys.list_keys(session, shop_id=shop_id)
    for key in keys:
        session.expunge(key)
    return ShopSettings(
        domain=shop.domain,
        platform=shop.platform,
        connected=setup.platform_connected,
        webhooks=setup.webhooks,
        providers=providers(settings),
        keys=keys,
        refusal_mode=refusal_mode(shop),
        refusal_modes=tuple(REFUSAL_MODES),
        origins=allowed_origins(shop),
        timezone=shop.timezone,
    )
