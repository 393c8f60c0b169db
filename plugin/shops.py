"""Shops (tenants): the embedded default's local shop and look-ups."""

from __future__ import annotations

from sqlmodel import Session, select

from plugin.errors import InvalidInput, NotFound
from plugin.models import Shop

LOCAL_PLATFORM = "sandbox"


def ensure_local_shop(session: Session, domain: str) -> Shop:
    """The one shop the embedded default runs, so the CLI works before any platform is connected."""
    shop = session.exec(select(Shop).where(Shop.platform == LOCAL_PLATFORM, Shop.domain == domain)).first()
    if shop is None:
        shop = Shop(platform=LOCAL_PLATFORM, domain=domain, name="Local sandbox shop")
        session.add(shop)
        session.flush()
    return shop


def get_shop(session: Session, shop_id: int) -> Shop:
    shop = session.get(Shop, shop_id)
    if shop is None:
        raise NotFound(f"shop {shop_id} does not exist")
    return shop


def find_shop(session: Session, domain: str) -> Shop:
    """An installed shop by its domain, on whichever platform (the CLI's --shop)."""
    shops = session.exec(select(Shop).where(Shop.domain == domain.strip().lower())).all()
    if not shops:
        raise NotFound(f"no shop with domain {domain!r} is installed", reason="shop_not_found")
    if len(shops) > 1:
        platforms = ", ".join(sorted(s.platform for s in shops))
        raise NotFound(f"{domain!r} is installed on several platforms ({platforms})", reason="shop_ambiguous")
    return shops[0]


def shop_on_platform(session: Session, platform: str, domain: str) -> Shop | None:
    """The shop a platform calls by this domain (webhooks name their shop that way)."""
    return session.exec(select(Shop).where(Shop.platform == platform, Shop.domain == domain)).first()


# What shoppers are told when a code is refused (`checkout.Decision.as_json`): `detailed`
# everywhere (storefront keys too), `generic` everywhere (merchant servers still get the exact
# reason beside the shopper view), or `default`: detailed to merchant servers, generic to
# storefront keys (a guesser's own browser). Stored as the `detailed_refusals` preference.
REFUSAL_MODES: dict[str, bool | None] = {"default": None, "detailed": True, "generic": False}


def refusal_mode(shop: Shop) -> str:
    chosen = shop.preferences.get("detailed_refusals")
    return "default" if chosen is None else "detailed" if chosen else "generic"


def set_refusal_mode(session: Session, shop_id: int, mode: str) -> Shop:
    if mode not in REFUSAL_MODES:
        raise InvalidInput(f"the refusal mode is one of {', '.join(REFUSAL_MODES)}", reason="invalid_refusal_mode")
    shop = get_shop(session, shop_id)
    preferences = {k: v for k, v in shop.preferences.items() if k != "detailed_refusals"}
    if REFUSAL_MODES[mode] is not None:
        preferences["detailed_refusals"] = REFUSAL_MODES[mode]
    shop.preferences = preferences  # a new dict, so the JSON column is written
    session.add(shop)
    session.flush()
    return shop
