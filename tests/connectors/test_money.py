"""Money strings from every platform become integer minor units the same way."""

from __future__ import annotations

import pytest

from connectors.errors import Rejected
from connectors.money import from_minor, to_minor


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("10.00", "USD", 1000),
        ("0.5", "EUR", 50),
        ("2.00", "usd", 200),
        ("1000", "JPY", 1000),
        ("1000.00", "JPY", 1000),
        ("1.250", "KWD", 1250),
        ("3.1", "BHD", 3100),
        ("0.005", "USD", 1),  # half up
        ("19.999", "USD", 2000),
        (3, "EUR", 300),
        (None, "USD", 0),
        ("", "USD", 0),
    ],
)
def test_amounts_to_minor_units(amount: object, currency: str, minor: int) -> None:
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize(
    ("minor", "currency", "amount"),
    [(1999, "EUR", "19.99"), (500, "JPY", "500"), (1250, "KWD", "1.250"), (5, "USD", "0.05"), (500, "USD", "5.00")],
)
def test_minor_units_to_amounts(minor: int, currency: str, amount: str) -> None:
    assert from_minor(minor, currency) == amount


@pytest.mark.parametrize("amount", ["ten", "1.2.3", "NaN", "Infinity"])
def test_malformed_amounts_are_rejected(amount: str) -> None:
    with pytest.raises(Rejected, match="malformed amount"):
        to_minor(amount, "USD")
