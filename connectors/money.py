"""Platform money strings ↔ integer minor units, with ISO 4217 exponents.

Platforms send decimal strings ("12.50", "1000" for JPY, "1.250" for KWD); Couponry keeps
integer minor units everywhere. One table and one rounding rule (half up) for every connector.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Final

from connectors.errors import Rejected

# ISO 4217 minor-unit exponents that are not 2.
EXPONENTS: Final[Mapping[str, int]] = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4,
    "UYW": 4,
}


def minor_unit_exponent(currency: str) -> int:
    return EXPONENTS.get(currency.upper(), 2)


# Longest string the fast path in `to_minor` takes: at most 20 digits, scaled by an exponent
# of at most 4, stay well inside Decimal's default 28-digit precision (so the Decimal path would
# be exact too) and far from int()'s digit limit.
_FAST_MAX_LEN: Final = 20


def to_minor(amount: object, currency: str) -> int:
    """A decimal amount ("12.50", 12.5, 3; None or "" as 0) in minor units, rounded half up."""
    # Fast exact path, for what platforms send nearly always: a plain decimal string ("80.00",
    # "-1.25", "1000") with no more decimals than the currency has, so no rounding is needed
    # and integers give exactly what the Decimal path would. Only ASCII digits (str.isdigit
    # alone takes "١٢"), and only an exact str (a subclass's str() may say something else);
    # anything else ("+5", " 5", "1e3", "0.005", floats, ints) takes the Decimal path.
    if type(amount) is str and len(amount) <= _FAST_MAX_LEN:
        whole, _, fraction = amount.removeprefix("-").partition(".")
        digits = whole + fraction
        if digits.isascii() and digits.isdigit():
            exponent = minor_unit_exponent(currency)
            if len(fraction) <= exponent:
                minor: int = int(digits) * 10 ** (exponent - len(fraction))
                return -minor if amount[0] == "-" else minor
    if amount is None or amount == "":
        return 0
    try:
        value = Decimal(str(amount))
        return int(value.scaleb(minor_unit_exponent(currency)).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except (InvalidOperation, ValueError) as exc:
        raise Rejected(f"malformed amount {amount!r}") from exc


def from_minor(amount: int, currency: str) -> str:
    """Minor units as the decimal string platforms expect ("12.50", "500" for JPY)."""
    exponent = minor_unit_exponent(currency)
    return str(Decimal(amount).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent)))
