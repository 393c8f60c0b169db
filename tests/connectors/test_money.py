"""Money strings from every platform become integer minor units the same way."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, getcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import money
from connectors.errors import Rejected
from connectors.money import EXPONENTS, from_minor, minor_unit_exponent, to_minor


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


# --- the fast path agrees with the Decimal path -----------------------------------------------


def decimal_to_minor(amount: object, currency: str) -> int | str:
    """The Decimal path alone, as `to_minor` had it before its fast path: the reference. A
    refused amount is its error message."""
    if amount is None or amount == "":
        return 0
    try:
        return int(Decimal(str(amount)).scaleb(minor_unit_exponent(currency)).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except (InvalidOperation, ValueError):
        return f"malformed amount {amount!r}"


def outcome(amount: object, currency: str) -> int | str:
    try:
        return to_minor(amount, currency)
    except Rejected as exc:
        return exc.message


CURRENCIES = ("JPY", "USD", "eur", "KWD", "CLF")  # exponents 0, 2, 2, 3, 4


def test_the_currencies_cover_every_exponent() -> None:
    assert sorted({minor_unit_exponent(c) for c in CURRENCIES}) == [0, 2, 3, 4]
    # the fast path's longest string, scaled, stays inside Decimal's precision: both are exact
    assert money._FAST_MAX_LEN + max(EXPONENTS.values()) <= getcontext().prec


@pytest.mark.parametrize("currency", CURRENCIES)
@pytest.mark.parametrize(
    "amount",
    [
        "80.00",
        "72.00",
        "8.00",
        "0.5",
        "-1.25",
        "12",
        "0",
        "-0",
        "-0.00",
        "007.50",
        "0.005",
        "0.0050",
        "1.2345",
        "1.23456",
        "2.5",
        "-2.5",
        "",
        None,
        "1e3",
        "1E3",
        "1.5e2",
        " 5",
        "5 ",
        "+5",
        "5.",
        ".5",
        "-.5",
        "-5.",
        ".",
        "-",
        "--5",
        "-+5",
        "1_000",
        "1.2.3",
        "١٢",  # Arabic-Indic digits: str.isdigit() says yes, Decimal takes them too
        "1٢.5",
        "²",  # isdigit() but not a decimal digit
        "NaN",
        "-Infinity",
        "ten",
        "9" * 20,
        "9" * 21,
        "-" + "9" * 19,
        "9" * 17 + ".99",
        "9" * 27,  # past 28 digits once scaled (but for yen): refused by the Decimal path
        "9" * 40 + ".5",
        "1" * 5000,  # past int()'s digit limit
        0,
        3,
        -7,
        12.5,
        0.1,
        1.005,
        True,
        Decimal("1.25"),
        Decimal("-0.005"),
    ],
)
def test_explicit_amounts_agree_with_the_decimal_path(amount: object, currency: str) -> None:
    assert outcome(amount, currency) == decimal_to_minor(amount, currency)


def test_the_fast_path_gives_the_values_platforms_send() -> None:
    assert [to_minor(a, "USD") for a in ("80.00", "72.00", "8.00", "-1.25", "12", ".5", "5.")] == [
        8000,
        7200,
        800,
        -125,
        1200,
        50,
        500,
    ]
    assert to_minor("0.5", "JPY") == 1  # more decimals than yen have: rounded half up by the Decimal path
    assert to_minor("-0.5", "JPY") == -1
    assert to_minor("1.2345", "CLF") == 12345


class Text(str):
    """A str whose str() says something else: `to_minor` reads what str() says."""

    def __str__(self) -> str:
        return "2.50"


def test_a_str_subclass_is_read_through_str() -> None:
    assert to_minor(Text("1.00"), "USD") == decimal_to_minor(Text("1.00"), "USD") == 250


plain_decimals = st.from_regex(r"\A-?[0-9]{0,22}(\.[0-9]{0,6})?\Z")
near_misses = st.from_regex(r"\A[-+ ]?[0-9.]{0,8}([eE][-+]?[0-9]{1,2})?[ ]?\Z")
decimals = st.decimals(allow_nan=True, allow_infinity=True, places=None).map(str)
floats = st.floats(allow_nan=True, allow_infinity=True)
ints = st.integers(min_value=-(10**30), max_value=10**30)


@settings(max_examples=1000, deadline=None)
@given(amount=st.one_of(plain_decimals, decimals), currency=st.sampled_from(CURRENCIES))
def test_random_decimal_strings_agree_with_the_decimal_path(amount: str, currency: str) -> None:
    assert outcome(amount, currency) == decimal_to_minor(amount, currency)


@settings(max_examples=500, deadline=None)
@given(amount=st.one_of(near_misses, st.text(max_size=12), floats, ints), currency=st.sampled_from(CURRENCIES))
def test_random_other_amounts_agree_with_the_decimal_path(amount: object, currency: str) -> None:
    assert outcome(amount, currency) == decimal_to_minor(amount, currency)


def test_plain_decimal_strings_skip_decimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(money, "Decimal", None)  # the fast path must not need it
    assert [to_minor(a, c) for a, c in [("80.00", "USD"), ("-1.25", "EUR"), ("1000", "JPY"), ("1.250", "KWD")]] == [
        8000,
        -125,
        1000,
        1250,
    ]
