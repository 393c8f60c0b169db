"""Recipient keys: one key per person (a customer id, a lower-cased email or an international
phone number), as claims, pushes, bindings and imports name them. Pure: no I/O."""

from __future__ import annotations

import re

from plugin.errors import InvalidInput

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_NOISE = re.compile(r"[\s().\-/]")


def normalise_recipient(
    value: str | None = None, *, email: str | None = None, phone: str | None = None, customer_id: str | None = None
) -> str:
    """One key per person: `id:<customer id>`, a lower-cased email, or a phone as `+<digits>`.

    A bare `value` is read as a customer id when it starts with `id:`, an email when it holds
    an @, and a phone number otherwise."""
    given = [v for v in (value, email, phone, customer_id) if v is not None and v.strip()]
    if len(given) != 1:
        raise InvalidInput("give exactly one of recipient, email, phone or customer_id", reason="invalid_recipient")
    if customer_id is not None:
        return _customer(customer_id)
    if email is not None:
        return _email(email)
    if phone is not None:
        return _phone(phone)
    raw = given[0].strip()
    if raw.lower().startswith("id:"):
        return _customer(raw[3:])
    if "@" in raw:
        return _email(raw)
    return _phone(raw)


def _customer(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 255 or not value.isprintable():
        raise InvalidInput("a customer id is 1 to 255 printable characters", reason="invalid_recipient")
    return f"id:{value}"


def _email(raw: str) -> str:
    value = raw.strip().lower()
    if len(value) > 320 or not _EMAIL.match(value) or not value.isprintable():
        raise InvalidInput(f"{raw.strip()[:80]!r} is not an email address", reason="invalid_recipient")
    return value


def _phone(raw: str) -> str:
    value = _PHONE_NOISE.sub("", raw.strip().replace("(0)", ""))  # "+44 (0)20": the 0 is dialled at home only
    if value.startswith("00"):
        value = "+" + value[2:]
    digits = value.removeprefix("+")
    if not (digits.isascii() and digits.isdigit() and 7 <= len(digits) <= 15) or digits.startswith("0"):
        raise InvalidInput(
            f"{raw.strip()[:40]!r} is not a phone number in international form (+<country><number>)",
            reason="invalid_recipient",
        )
    return "+" + digits


def recipient_parts(key: str) -> dict[str, str | None]:
    """The key as email, phone and customer id (one of them set), for providers and exports.

    A mark after the key (a reissued code's, a referral reward's) is not part of the person."""
    for mark in ("#reissued:", "#referral:"):
        if mark in key:
            key = key.rsplit(mark, 1)[0]
    if key.startswith("id:"):
        return {"email": None, "phone": None, "customer_id": key[3:]}
    if key.startswith("+"):
        return {"email": None, "phone": key, "customer_id": None}
    if "@" in key:
        return {"email": key, "phone": None, "customer_id": None}
    return {"email": None, "phone": None, "customer_id": None}
