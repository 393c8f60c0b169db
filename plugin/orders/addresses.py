"""Shipping addresses as keyed fingerprints: equal addresses compare equal, and none is kept.

Self-referral by address (plugin.distribution.referrals) needs to know whether a friend's order ships where
the referrer lives, not where that is. So an address is reduced to one fingerprint:

    street    line1 and line2 joined (so "12 Main St, Apt 4" matches "12 Main St" + "Apt 4"),
              Unicode NFKD with accents dropped, casefolded, and every run of anything but
              letters and digits made one space ("12, Main-St." == "12 main st")
    postcode  letters and digits only, casefolded ("SW1A 1AA" == "sw1a1aa"); a US ZIP+4 keeps
              its first five digits (the same house with or without the +4)
    country   the ISO 3166-1 alpha-2 code, upper case

    fingerprint = hex(HMAC-SHA256(key, "v1" US street US postcode US country))   (US = \\x1f)

An address missing its street, postcode or country has no fingerprint: matching on what is left
would tie together strangers in one postcode, and a false match withholds an honest friend's
reward. Left out on purpose: names and company (the point is the place, not the person), city
and state (the postcode says where). Not handled: abbreviations ("Street" vs "St") and
transliterations; such pairs simply don't match.

The key is derived from the app's secret (`plugin.shops.tokens.address_key`), so the stored
fingerprints can't be turned back into addresses by trying likely ones without that secret.

Pure: no I/O, no database, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from typing import Protocol

_NOT_ALNUM = re.compile(r"[\W_]+", re.UNICODE)
_SEP = "\x1f"  # unit separator: can't occur in a normalised part
VERSION = "v1"


class AddressLike(Protocol):
    """What an address must offer: connectors.base.ShippingAddress and the API's body both do."""

    @property
    def line1(self) -> str: ...
    @property
    def line2(self) -> str: ...
    @property
    def postcode(self) -> str: ...
    @property
    def country(self) -> str: ...


def _fold(text: str | None) -> str:
    decomposed = unicodedata.normalize("NFKD", text or "")
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NOT_ALNUM.sub(" ", bare.casefold()).strip()


def normalise(address: AddressLike | None) -> tuple[str, str, str] | None:
    """(street, postcode, country) as compared, or None when a part is missing."""
    if address is None:
        return None
    street = _fold(f"{address.line1 or ''} {address.line2 or ''}")
    country = _fold(address.country).replace(" ", "").upper()
    postcode = _fold(address.postcode).replace(" ", "")
    if country == "US" and len(postcode) == 9 and postcode.isdigit():
        postcode = postcode[:5]  # ZIP+4 → ZIP
    if not street or not postcode or len(country) != 2:
        return None
    return street, postcode, country


def fingerprint(key: bytes, address: AddressLike | None) -> str | None:
    """The address's keyed fingerprint (64 hex characters), or None when it has none."""
    parts = normalise(address)
    if parts is None:
        return None
    message = _SEP.join((VERSION, *parts)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()
