"""The shop's time zone: the IANA zone its results' days are counted in (default UTC).

Taken from the platform where it says (Shopify's `shop.ianaTimezone`, at install) and editable in
the admin's settings. Changing it rebuilds the shop's results rollups in the same transaction,
since their days move with it (plugin.store.rollups).
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlmodel import Session

from plugin.errors import InvalidInput
from plugin.shops.shops import get_shop
from plugin.store import rollups
from plugin.store.models import Shop

DEFAULT = "UTC"


def valid_timezone(name: str) -> str:
    """`name` when it is an IANA zone this machine knows, else InvalidInput (reason invalid_timezone)."""
    name = (name or "").strip()
    problem = InvalidInput(
        f"{name[:64]!r} is not an IANA time zone name, like Europe/London or America/New_York",
        reason="invalid_timezone",
        details={"field": "timezone"},
    )
    # ZoneInfo also opens relative paths ("../x"): only names of the tz database are accepted
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise problem
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise problem from None
    return name


def zone_names() -> list[str]:
    return sorted(available_timezones())


def set_timezone(session: Session, shop_id: int, name: str) -> Shop:
    name = valid_timezone(name)
    shop = get_shop(session, shop_id)
    if shop.timezone != name:
        shop.timezone = name
        session.add(shop)
        session.flush()
        rollups.rebuild(session.connection(), shop_id=shop_id)
    return shop
