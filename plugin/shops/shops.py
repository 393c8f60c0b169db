"""Shops (tenants): the embedded default's local shop and look-ups."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from sqlalchemy import Engine
from sqlmodel import Session, select

from plugin.errors import InvalidInput, NotFound
from plugin.store import caches
from plugin.store.db import read_cursor
from plugin.store.models import Shop

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


def installed_shop_id(engine: Engine, platform: str, domain: str) -> int | None:
    """The id of the shop a platform names by this domain, while the app is installed there
    (an App Proxy request names its shop that way), else None."""
    with read_cursor(engine) as reader:
        rows = reader.rows(
            "SELECT id FROM shop WHERE platform = ? AND domain = ? AND uninstalled_at IS NULL", (platform, domain.lower())
        )
    return int(rows[0][0]) if rows else None


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
        raise InvalidInput(
            f"the refusal mode is one of {', '.join(REFUSAL_MODES)}", reason="invalid_refusal_mode", details={"field": "mode"}
        )
    shop = get_shop(session, shop_id)
    preferences = {k: v for k, v in shop.preferences.items() if k != "detailed_refusals"}
    if REFUSAL_MODES[mode] is not None:
        preferences["detailed_refusals"] = REFUSAL_MODES[mode]
    shop.preferences = preferences  # a new dict, so the JSON column is written
    session.add(shop)
    session.flush()
    return shop


# The pages from which the shop's `storefront` keys may be used (CORS, plugin.web.cors): exact
# origins as a browser sends them, `https://host[:port]`, stored as the `allowed_origins`
# preference. No wildcards and no paths: an origin is a whole site, and a pattern would let a
# look-alike host in.
ORIGINS_PREFERENCE = "allowed_origins"
MAX_ORIGINS = 50
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ORIGIN = re.compile(rf"^https://(?P<host>{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?$")


def normalise_origin(text: str) -> str | None:
    """The origin as a browser's `Origin` header names it (lower case, no default port), or
    None when `text` is not exactly `https://host[:port]`."""
    found = _ORIGIN.match(text.strip().lower())
    if found is None:
        return None
    port = found["port"]
    if port is not None and not 0 < int(port) < 65536:
        return None
    return f"https://{found['host']}" + (f":{int(port)}" if port and int(port) != 443 else "")


def allowed_origins(shop: Shop) -> list[str]:
    origins = shop.preferences.get(ORIGINS_PREFERENCE) or []
    return [str(o) for o in origins]


def set_allowed_origins(session: Session, shop_id: int, origins: Sequence[str]) -> Shop:
    """Replace the shop's allowed origins (an empty list: storefront keys work from no page)."""
    if len(origins) > MAX_ORIGINS:
        raise InvalidInput(f"at most {MAX_ORIGINS} allowed origins", reason="invalid_origin", details={"field": "origins"})
    chosen: list[str] = []
    for text in origins:
        origin = normalise_origin(text)
        if origin is None:
            raise InvalidInput(
                f"{text[:100]!r} is not an origin: give exactly https://host or https://host:port"
                " (no wildcard, no path, no trailing slash)",
                reason="invalid_origin",
                details={"field": "origins"},
            )
        if origin not in chosen:
            chosen.append(origin)
    shop = get_shop(session, shop_id)
    preferences = {k: v for k, v in shop.preferences.items() if k != ORIGINS_PREFERENCE}
    if chosen:
        preferences[ORIGINS_PREFERENCE] = chosen
    shop.preferences = preferences  # a new dict, so the JSON column is written
    session.add(shop)
    session.flush()
    return shop


def allowed_origins_cached(engine: Engine, shop_id: int) -> frozenset[str]:
    """The shop's allowed origins for the hot path: one read per shop per `caches.TTL_SECONDS`
    (a change is seen at once in this process, within seconds in the others)."""
    cache = caches.for_engine(engine).shop_origins
    origins = cache.get(shop_id)
    if origins is None:
        gen = caches.generation()
        with read_cursor(engine) as reader:
            rows = reader.rows("SELECT CAST(preferences AS TEXT) FROM shop WHERE id = ?", (shop_id,))
        preferences = json.loads(rows[0][0] or "{}") if rows else {}
        origins = frozenset(str(o) for o in preferences.get(ORIGINS_PREFERENCE) or [])
        cache.put(shop_id, origins, gen)
    return origins
