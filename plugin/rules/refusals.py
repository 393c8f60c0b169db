"""The one catalogue of refusal reasons (promise 7: every refusal says why).

A refusal has three parts:

- `reason`: a stable machine key (`Reason`, a `str` enum; the value is what the API, the
  database and the logs carry; never rename one, only add).
- `message`: a sentence the shopper understands, rendered from `MESSAGES[locale][reason]`
  with `{placeholders}` filled from the details.
- `details`: JSON values that explain the refusal (how much more to spend, when the code
  expired, a likely typo...). `CATALOGUE[reason].detail_keys` lists the keys each reason
  carries; money details are integers in minor units and come with a `currency` key;
  instants are ISO 8601 UTC strings (`2026-03-01T00:00:00Z`).

Messages are kept per locale so they can be translated later: `MESSAGES` maps a locale to a
template per reason, and `PLAIN_MESSAGES` holds a placeholder-free fallback for every
template with placeholders (used when a detail is missing, e.g. no `suggestion`). Money is
displayed with `format_money` (£12.50, ¥1,200, 12.500 KWD) and dates as "1 March 2026"
(UTC; the shop's time zone is not known here).

Generic mode (the shop's choice, research/peers.md B4): telling "does not exist" apart from
"already used" or "belongs to someone else" turns the validation endpoint into an oracle for
live codes. `shopper_view(refusal, detailed=False)` therefore replaces the message of every
reason marked `confirms_live_code` with the same generic message an unknown code gets, and
drops the details; `public_reason` gives the reason key a shopper may see. The rule for
`confirms_live_code`: a reason is marked when it is reached for a code that exists but that a
fresh anonymous shopper could not use by changing their own basket, channel or sign-in
(voided, used up, expired, held, bound to someone, campaign not running, budget spent).
Reasons that are only reached once the code is live and usable by such a shopper (basket,
channel, currency, stacking, the shopper's own history) are not marked: hiding them tells an
attacker nothing a successful validation would not, and only hurts the honest shopper.
`customer_required` is marked because a bound code answers it to every guest; checkouts in
generic mode should therefore send the shopper's email or id with each validation.

In generic mode a `suggestion` is dropped from `unknown_code` (a suggestion found by looking
up live codes is itself an oracle) but kept on `mistyped_code`, whose suggestion must come
from the code format alone (check characters), never from a database lookup.

The merchant's own systems always get the exact reason, message and details.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from pydantic import BaseModel, ConfigDict, JsonValue

__all__ = [
    "CATALOGUE",
    "MESSAGES",
    "PLAIN_MESSAGES",
    "Reason",
    "ReasonInfo",
    "Refusal",
    "Stage",
    "format_money",
    "generic_message",
    "iso_utc",
    "minor_unit_exponent",
    "public_reason",
    "refuse",
    "render",
    "shopper_view",
]

DEFAULT_LOCALE: Final = "en"


class Reason(enum.StrEnum):
    """Stable refusal keys, in the order the checks run (see `plugin.rules.evaluate`)."""

    # Decided by the caller before evaluation (the code is not in the database, or its check
    # characters are wrong).
    UNKNOWN_CODE = "unknown_code"
    MISTYPED_CODE = "mistyped_code"
    # Code level.
    VOIDED = "voided"
    ALREADY_REDEEMED = "already_redeemed"
    USAGE_LIMIT_REACHED = "usage_limit_reached"
    EXPIRED = "expired"
    HELD_BY_OTHER_CHECKOUT = "held_by_other_checkout"
    # Campaign status, time and channel.
    CAMPAIGN_DRAFT = "campaign_draft"
    CAMPAIGN_PAUSED = "campaign_paused"
    CAMPAIGN_ENDED = "campaign_ended"
    NOT_YET_VALID = "not_yet_valid"
    CHANNEL_NOT_ALLOWED = "channel_not_allowed"
    # Customer.
    CUSTOMER_REQUIRED = "customer_required"
    BOUND_TO_OTHER_CUSTOMER = "bound_to_other_customer"
    CUSTOMER_LIMIT_REACHED = "customer_limit_reached"
    FIRST_ORDER_ONLY = "first_order_only"
    # Basket.
    CURRENCY_MISMATCH = "currency_mismatch"
    NOT_COMBINABLE = "not_combinable"
    NO_ELIGIBLE_ITEMS = "no_eligible_items"
    MINIMUM_QUANTITY_NOT_MET = "minimum_quantity_not_met"
    MINIMUM_SUBTOTAL_NOT_MET = "minimum_subtotal_not_met"
    BUNDLE_NOT_MET = "bundle_not_met"
    # Budget.
    BUDGET_EXHAUSTED = "budget_exhausted"


class Stage(enum.StrEnum):
    """Where a reason is decided; stages run in this order."""

    LOOKUP = "lookup"
    CODE = "code"
    CAMPAIGN = "campaign"
    CUSTOMER = "customer"
    BASKET = "basket"
    BUDGET = "budget"


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    """What the app knows about a reason besides its shopper message."""

    stage: Stage
    confirms_live_code: bool
    detail_keys: tuple[str, ...]
    merchant_description: str


def _info(stage: Stage, confirms: bool, keys: tuple[str, ...], description: str) -> ReasonInfo:
    return ReasonInfo(stage, confirms, keys, description)


_R = Reason
_S = Stage

CATALOGUE: Final[Mapping[Reason, ReasonInfo]] = {
    _R.UNKNOWN_CODE: _info(_S.LOOKUP, False, ("suggestion",), "No code with this value exists in the shop."),
    _R.MISTYPED_CODE: _info(_S.LOOKUP, False, ("suggestion",), "The code's check characters are wrong: a typing mistake."),
    _R.VOIDED: _info(_S.CODE, True, (), "The code was voided by the merchant."),
    _R.ALREADY_REDEEMED: _info(_S.CODE, True, (), "The single-use code has been redeemed."),
    _R.USAGE_LIMIT_REACHED: _info(_S.CODE, True, ("limit", "uses"), "The code's redemption limit is used up."),
    _R.EXPIRED: _info(
        _S.CODE,
        True,
        ("expired_at",),
        "The code expired (its own expiry, its relative expiry or the campaign end).",
    ),
    _R.HELD_BY_OTHER_CHECKOUT: _info(_S.CODE, True, (), "Another checkout holds a reservation on the code."),
    _R.CAMPAIGN_DRAFT: _info(_S.CAMPAIGN, True, (), "The campaign is still a draft."),
    _R.CAMPAIGN_PAUSED: _info(_S.CAMPAIGN, True, (), "The campaign is paused."),
    _R.CAMPAIGN_ENDED: _info(_S.CAMPAIGN, True, (), "The campaign was ended."),
    _R.NOT_YET_VALID: _info(_S.CAMPAIGN, True, ("starts_at",), "The campaign has not started yet."),
    _R.CHANNEL_NOT_ALLOWED: _info(_S.CAMPAIGN, False, ("channel", "allowed_channels"), "The sales channel is not allowed."),
    _R.CUSTOMER_REQUIRED: _info(
        _S.CUSTOMER,
        True,
        ("requires", "because"),
        "The rules need to know the customer (binding, per-customer limit, first order) "
        "but the checkout sent no customer id or email.",
    ),
    _R.BOUND_TO_OTHER_CUSTOMER: _info(_S.CUSTOMER, True, (), "The code is bound to another customer id or email."),
    _R.CUSTOMER_LIMIT_REACHED: _info(
        _S.CUSTOMER, False, ("limit", "uses"), "The customer used the campaign as often as allowed."
    ),
    _R.FIRST_ORDER_ONLY: _info(_S.CUSTOMER, False, (), "The campaign is for first orders and this is not one."),
    _R.CURRENCY_MISMATCH: _info(_S.BASKET, False, ("currency", "basket_currency"), "The basket is in another currency."),
    _R.NOT_COMBINABLE: _info(
        _S.BASKET,
        False,
        ("conflicts_with", "codes"),
        "The campaign does not combine with other codes or automatic discounts in the basket.",
    ),
    _R.NO_ELIGIBLE_ITEMS: _info(_S.BASKET, False, (), "No basket line is eligible for the discount."),
    _R.MINIMUM_QUANTITY_NOT_MET: _info(
        _S.BASKET,
        False,
        ("minimum_quantity", "quantity", "missing_quantity"),
        "Too few eligible items.",
    ),
    _R.MINIMUM_SUBTOTAL_NOT_MET: _info(
        _S.BASKET,
        False,
        ("minimum_subtotal", "subtotal", "missing_amount", "currency"),
        "The eligible subtotal is below the minimum (or below the lowest tier).",
    ),
    _R.BUNDLE_NOT_MET: _info(
        _S.BASKET,
        False,
        ("buy_quantity", "get_quantity", "missing_quantity"),
        "The basket does not hold one full bundle (buy N, get M).",
    ),
    _R.BUDGET_EXHAUSTED: _info(
        _S.BUDGET,
        True,
        ("budget",),
        "The campaign's redemption budget (budget=redemptions) or money budget (budget=discount) "
        "is spent, or this discount would exceed what is left.",
    ),
}

# Shopper messages per locale. Placeholders name detail keys; money keys are shown with
# `format_money`, `*_at` instants as dates, lists joined with commas.
MESSAGES: Final[Mapping[str, Mapping[Reason, str]]] = {
    "en": {
        _R.UNKNOWN_CODE: "We don't recognise this code. Did you mean {suggestion}?",
        _R.MISTYPED_CODE: "This code looks mistyped. Did you mean {suggestion}?",
        _R.VOIDED: "This code is no longer valid.",
        _R.ALREADY_REDEEMED: "This code has already been used.",
        _R.USAGE_LIMIT_REACHED: "This code has been used the maximum number of times ({limit}).",
        _R.EXPIRED: "This code expired on {expired_at}.",
        _R.HELD_BY_OTHER_CHECKOUT: "This code is being used in another checkout right now.",
        _R.CAMPAIGN_DRAFT: "This offer hasn't started yet.",
        _R.CAMPAIGN_PAUSED: "This offer is paused at the moment.",
        _R.CAMPAIGN_ENDED: "This offer has ended.",
        _R.NOT_YET_VALID: "This code can be used from {starts_at}.",
        _R.CHANNEL_NOT_ALLOWED: "This code can't be used here. It's valid for: {allowed_channels}.",
        _R.CUSTOMER_REQUIRED: "Sign in or enter your email address to use this code.",
        _R.BOUND_TO_OTHER_CUSTOMER: "This code belongs to another customer.",
        _R.CUSTOMER_LIMIT_REACHED: "You've already used this offer the maximum number of times ({limit}).",
        _R.FIRST_ORDER_ONLY: "This code is only valid on your first order.",
        _R.CURRENCY_MISMATCH: "This code can only be used when paying in {currency}.",
        _R.NOT_COMBINABLE: "This code can't be combined with other discounts in your basket.",
        _R.NO_ELIGIBLE_ITEMS: "None of the items in your basket are eligible for this code.",
        _R.MINIMUM_QUANTITY_NOT_MET: (
            "Add {missing_quantity} more eligible item(s) to use this code (minimum {minimum_quantity})."
        ),
        _R.MINIMUM_SUBTOTAL_NOT_MET: (
            "Spend {missing_amount} more on eligible items to use this code (minimum {minimum_subtotal})."
        ),
        _R.BUNDLE_NOT_MET: "Add {missing_quantity} more qualifying item(s) to get this offer.",
        _R.BUDGET_EXHAUSTED: "This offer is no longer available.",
    },
}

# Placeholder-free fallbacks, used when a template's detail is missing.
PLAIN_MESSAGES: Final[Mapping[str, Mapping[Reason, str]]] = {
    "en": {
        _R.UNKNOWN_CODE: "We don't recognise this code. Check it and try again.",
        _R.MISTYPED_CODE: "This code looks mistyped. Check it and try again.",
        _R.USAGE_LIMIT_REACHED: "This code has been used the maximum number of times.",
        _R.EXPIRED: "This code has expired.",
        _R.NOT_YET_VALID: "This code can't be used yet.",
        _R.CHANNEL_NOT_ALLOWED: "This code can't be used here.",
        _R.CUSTOMER_LIMIT_REACHED: "You've already used this offer the maximum number of times.",
        _R.CURRENCY_MISMATCH: "This code can't be used in this currency.",
        _R.MINIMUM_QUANTITY_NOT_MET: "Add more eligible items to use this code.",
        _R.MINIMUM_SUBTOTAL_NOT_MET: "Spend a little more on eligible items to use this code.",
        _R.BUNDLE_NOT_MET: "Add more qualifying items to get this offer.",
    },
}

_MONTHS: Final[Mapping[str, tuple[str, ...]]] = {
    "en": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
}

# Shopper-facing names of the documented channels (see `plugin.rules.KNOWN_CHANNELS`).
_CHANNEL_NAMES: Final[Mapping[str, Mapping[str, str]]] = {
    "en": {
        "online_store": "the online store",
        "pos": "in-store (point of sale)",
        "mobile_app": "the mobile app",
        "marketplace": "marketplaces",
        "partner": "partner sites",
        "social": "social shops",
        "phone": "phone orders",
        "b2b": "wholesale (B2B)",
    },
}

_MONEY_KEYS: Final = frozenset({"minimum_subtotal", "subtotal", "missing_amount", "amount"})

# ISO 4217 minor-unit exponents that are not 2.
_EXPONENTS: Final[Mapping[str, int]] = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG"),
        0,
    ),
    **dict.fromkeys(("RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}

_SYMBOLS: Final[Mapping[str, str]] = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥"}


class Refusal(BaseModel):
    """Why a code can't be used: a stable `reason`, the English shopper `message`, `details`.

    Build one with `refuse(reason, **details)`; show it to a shopper with `shopper_view`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: Reason
    message: str
    details: dict[str, JsonValue] = {}


def refuse(reason: Reason, /, **details: JsonValue) -> Refusal:
    """A refusal for `reason` with its English message rendered from `details`.

    Details whose value is None are dropped (so optional details such as `suggestion` can be
    passed unconditionally).
    """
    kept = {key: value for key, value in details.items() if value is not None}
    return Refusal(reason=reason, message=render(reason, kept), details=kept)


def render(reason: Reason, details: Mapping[str, JsonValue], locale: str = DEFAULT_LOCALE) -> str:
    """The shopper message for `reason` in `locale` (falls back to English), details filled in."""
    templates = MESSAGES.get(locale, MESSAGES[DEFAULT_LOCALE])
    template = templates[reason]
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    if not fields.issubset(details):
        return _plain(reason, locale)
    try:
        return template.format_map(_display(details, locale))
    except (KeyError, ValueError, IndexError, AttributeError):
        return _plain(reason, locale)


def generic_message(locale: str = DEFAULT_LOCALE) -> str:
    """The one message shown for unknown codes and, in generic mode, for masked reasons."""
    return _plain(Reason.UNKNOWN_CODE, locale)


def public_reason(refusal: Refusal, detailed: bool) -> Reason:
    """The reason key a shopper may see: `unknown_code` for masked reasons in generic mode."""
    if not detailed and CATALOGUE[refusal.reason].confirms_live_code:
        return Reason.UNKNOWN_CODE
    return refusal.reason


def shopper_view(refusal: Refusal, detailed: bool, locale: str = DEFAULT_LOCALE) -> tuple[str, dict[str, JsonValue]]:
    """The (message, details) a shopper sees, following the shop's choice of mode.

    `detailed=True`: the exact message and details. `detailed=False` (generic mode): reasons
    marked `confirms_live_code`, and `unknown_code` itself, get `generic_message()` and no
    details, so they can't be told apart; other reasons keep their message and details.
    Pair it with `public_reason` for the reason key.
    """
    reason = refusal.reason
    if not detailed and (CATALOGUE[reason].confirms_live_code or reason is Reason.UNKNOWN_CODE):
        return generic_message(locale), {}
    return render(reason, refusal.details, locale), dict(refusal.details)


def minor_unit_exponent(currency: str) -> int:
    """Digits after the decimal point of an ISO 4217 currency (JPY 0, GBP 2, KWD 3)."""
    return _EXPONENTS.get(currency.upper(), 2)


def format_money(amount: int, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """Minor units as a shopper reads them: `format_money(1250, "GBP")` → `£12.50`."""
    del locale  # only English formatting exists so far
    currency = currency.upper()
    exponent = minor_unit_exponent(currency)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**exponent)
    number = f"{major:,}" + (f".{minor:0{exponent}d}" if exponent else "")
    symbol = _SYMBOLS.get(currency)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {currency}"


def iso_utc(moment: datetime) -> str:
    """An aware datetime as the ISO 8601 UTC string used in details (`...T10:00:00Z`)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(reason: Reason, locale: str) -> str:
    plain = PLAIN_MESSAGES.get(locale, PLAIN_MESSAGES[DEFAULT_LOCALE])
    if reason in plain:
        return plain[reason]
    return MESSAGES.get(locale, MESSAGES[DEFAULT_LOCALE])[reason]


def _display(details: Mapping[str, JsonValue], locale: str) -> dict[str, str]:
    currency = details.get("currency")
    shown: dict[str, str] = {}
    for key, value in details.items():
        if key in _MONEY_KEYS and isinstance(value, int) and isinstance(currency, str):
            shown[key] = format_money(value, currency, locale)
        elif key.endswith("_at") and isinstance(value, str):
            shown[key] = _display_date(value, locale)
        elif key == "allowed_channels" and isinstance(value, list):
            names = _CHANNEL_NAMES.get(locale, _CHANNEL_NAMES[DEFAULT_LOCALE])
            shown[key] = ", ".join(names.get(str(item), str(item)) for item in value)
        elif isinstance(value, list):
            shown[key] = ", ".join(str(item) for item in value)
        else:
            shown[key] = str(value)
    return shown


def _display_date(value: str, locale: str) -> str:
    moment = datetime.fromisoformat(value).astimezone(UTC)
    months = _MONTHS.get(locale, _MONTHS[DEFAULT_LOCALE])
    return f"{moment.day} {months[moment.month - 1]} {moment.year}"
