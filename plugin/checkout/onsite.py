"""Onsite: a recipient's code revealed on the shop's own pages, and checked against the basket
there so the page can nudge ("spend £12.00 more to use your code").

Both start from a signed claim link (`plugin.distribution.claimlinks`): the link names the shop,
the campaign and the recipient, so nothing here takes a code typed by a shopper. That is why the
check answers the exact reason and details (the holder of the link holds the code; telling them
it expired confirms nothing to a guesser) and counts nothing against guessing limits: a forged
link fails its signature before any lookup.

The caller has already checked that the link belongs to the shop asking (the `storefront` key's
shop, or the shop Shopify signed an App Proxy request for).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from plugin.checkout import checkout
from plugin.distribution.claimlinks import ClaimLink
from plugin.distribution.claims import Claim, claim_or_alert
from plugin.rules import Basket, Customer


def reveal(engine: Engine, link: ClaimLink) -> Claim:
    """The link's recipient's code (claimed on first use, as the claim page does)."""
    return claim_or_alert(
        engine, shop_id=link.shop_id, campaign_id=link.campaign_id, recipient=link.recipient, partner_id=link.partner_id
    )


def revealed_json(found: Claim) -> dict[str, Any]:
    """What the page shows: never the recipient (the page needs only the code)."""
    return {
        "code": found.display,
        "expires_at": found.expires_at.isoformat() if found.expires_at else None,
        "bound": found.bound,
        "binding": found.binding,
    }


def link_customer(link: ClaimLink, signed_in: str | None = None) -> Customer | None:
    """Who the check is made for: the customer the platform says is signed in, else the link's
    own recipient when it is an id or an email (a phone identifies nobody at checkout)."""
    if signed_in:
        return Customer(id=signed_in)
    kind, _, value = link.recipient.partition(":")
    if kind == "id" and value:
        return Customer(id=value)
    if "@" in link.recipient:
        return Customer(email=link.recipient)
    return None


def check(engine: Engine, link: ClaimLink, basket: Basket, *, now: datetime, signed_in: str | None = None) -> checkout.Decision:
    """The link's code on this basket, changing nothing (a validation)."""
    found = reveal(engine, link)
    return checkout.validate(
        engine,
        shop_id=link.shop_id,
        typed=found.code,
        basket=basket,
        customer=link_customer(link, signed_in),
        channel=None,
        checkout_id=None,
        now=now,
    )


def checked_json(decision: checkout.Decision) -> dict[str, Any]:
    """The storefront answer (`valid`, `discount`, `shopper`), with the exact shopper view."""
    return decision.as_json(detailed_for_shopper=True, storefront=True)
