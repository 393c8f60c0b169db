"""Address fingerprints: the same place written differently compares equal, another place does
not, an incomplete address has none, and the fingerprint depends on the app's secret."""

from __future__ import annotations

from dataclasses import replace

import pytest

from connectors.base import ShippingAddress
from plugin.orders import addresses
from plugin.settings import Secret, Settings
from plugin.shops import tokens

KEY = b"k" * 32
HOME = ShippingAddress(line1="12 Main Street", line2="Apt 4", postcode="SW1A 1AA", country="GB")


@pytest.mark.parametrize(
    "same",
    [
        ShippingAddress("12 MAIN STREET", "apt 4", "sw1a 1aa", "gb"),  # case
        ShippingAddress("  12   Main\tStreet ", " Apt  4", "SW1A1AA", " GB "),  # spacing
        ShippingAddress("12, Main-Street.", "Apt. #4", "SW1A-1AA", "GB"),  # punctuation
        ShippingAddress("12 Main Street Apt 4", "", "SW1A 1AA", "GB"),  # one line or two
        # full-width forms, as some keyboards type them (NFKD folds them)
        ShippingAddress("\uff11\uff12 Main Street", "Apt 4", "\uff33\uff37\uff11\uff21 \uff11\uff21\uff21", "GB"),
    ],
)
def test_the_same_address_written_differently_is_equal(same: ShippingAddress) -> None:
    assert addresses.fingerprint(KEY, same) == addresses.fingerprint(KEY, HOME)


def test_accents_and_zip_plus_four_are_folded() -> None:
    accented = ShippingAddress("5 Rue de l'Église", "", "75001", "FR")
    assert addresses.fingerprint(KEY, accented) == addresses.fingerprint(
        KEY, ShippingAddress("5 rue de l eglise", "", "75001", "FR")
    )
    zip5 = ShippingAddress("969 Market", "", "94103", "US")
    assert addresses.fingerprint(KEY, ShippingAddress("969 Market", "", "94103-1234", "US")) == addresses.fingerprint(KEY, zip5)
    # only in the US: elsewhere nine digits are a postcode of their own
    assert addresses.fingerprint(KEY, ShippingAddress("1 Rua", "", "94103-1234", "BR")) != addresses.fingerprint(
        KEY, ShippingAddress("1 Rua", "", "94103", "BR")
    )


@pytest.mark.parametrize(
    "other",
    [
        replace(HOME, line1="14 Main Street"),
        replace(HOME, line2="Apt 5"),
        replace(HOME, postcode="SW1A 2AA"),
        replace(HOME, country="IE"),
    ],
)
def test_another_address_differs(other: ShippingAddress) -> None:
    assert addresses.fingerprint(KEY, other) != addresses.fingerprint(KEY, HOME)


@pytest.mark.parametrize(
    "incomplete",
    [
        None,
        ShippingAddress(),
        replace(HOME, line1="", line2=""),
        replace(HOME, line1="-- ,", line2=""),
        replace(HOME, postcode=" "),
        replace(HOME, country=""),
        replace(HOME, country="GBR"),
    ],
)
def test_an_incomplete_address_has_no_fingerprint(incomplete: ShippingAddress | None) -> None:
    assert addresses.fingerprint(KEY, incomplete) is None


def test_what_is_compared() -> None:
    assert addresses.normalise(HOME) == ("12 main street apt 4", "sw1a1aa", "GB")
    fingerprint = addresses.fingerprint(KEY, HOME)
    assert fingerprint is not None and len(fingerprint) == 64 and "main" not in fingerprint


def test_the_fingerprint_is_keyed_by_the_apps_secret() -> None:
    one = Settings(secret_key=Secret("secret-one-0123456789-abcdefghijkl"))
    two = Settings(secret_key=Secret("secret-two-0123456789-abcdefghijkl"))
    key_one, key_two = tokens.address_key(one), tokens.address_key(two)
    assert key_one == tokens.address_key(Settings(secret_key=Secret("secret-one-0123456789-abcdefghijkl")))  # stable
    assert addresses.fingerprint(key_one, HOME) != addresses.fingerprint(key_two, HOME)
    # its own purpose: not the key that encrypts platform tokens
    assert key_one != tokens._derive("secret-one-0123456789", tokens._INFO)
