"""Discount arithmetic: what a campaign's discount gives on a basket, in integer minor units.

Rounding and allocation (the same for every discount type):

1. The exact discount is computed as a fraction (a percentage is an integer number of
   ten-thousandths of a percent, so `33.333%` of 1000 is exactly 333.33).
2. The *total* is rounded once, half up, to a whole minor unit (333.33 → 333, 0.5 → 1), then
   capped (`max_amount`, or the eligible subtotal for a fixed amount: a fixed discount never
   exceeds what the eligible lines cost).
3. The total is allocated to the discounted lines in proportion to their value by the
   largest-remainder method (ties go to the earlier line), so the line amounts always sum
   exactly to the total and no line gets more than it costs.

Only lines with a non-zero allocation appear in `DiscountResult.lines`. Free shipping
discounts `Basket.shipping_amount` (capped) and allocates nothing to lines.

Bundles (buy N get M): the basket's qualifying units are grouped into as many complete sets
as it holds (`max_applications` caps the count); for k sets, the k*M *cheapest* units of
the "get" set are discounted (ties: lines only in the "get" set first, then basket order),
while at least k*N other units of the "buy" set stay at full price as the ones bought. So
with buy 2 get 1 and six qualifying units, the two cheapest are free.

Basket checks run in this order: currency → stacking → eligible items → minimum quantity →
minimum subtotal → discount-specific (lowest tier, complete bundle). Minimums count the
eligible lines only.
"""

from collections.abc import Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from plugin.rules.context import Basket, BasketLine
from plugin.rules.model import (
    BundleDiscount,
    CampaignRules,
    Discount,
    FixedDiscount,
    FreeShippingDiscount,
    ItemSelector,
    PercentageDiscount,
    TieredDiscount,
)
from plugin.rules.refusals import Reason, Refusal, refuse

__all__ = [
    "DiscountResult",
    "LineAllocation",
    "allocate",
    "compute_discount",
    "discount_cap",
    "eligible_line_indexes",
    "max_discount_per_use",
    "round_half_up",
]

_PERCENT_SCALE = 10_000  # percentages are kept as integer ten-thousandths of a percent
_PERCENT_DENOMINATOR = 100 * _PERCENT_SCALE


class LineAllocation(BaseModel):
    """The part of the discount on one basket line (`index` into `Basket.lines`).

    `quantity` is how many of the line's units the discount covers (all of them, except for
    bundles, where it is the number of discounted units).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    line_id: str | None
    quantity: int
    amount: int


class DiscountResult(BaseModel):
    """What a code gives on a basket: `amount` = `items_amount` + `shipping_amount`.

    `tier` is the index of the applied tier (tiered discounts); `applications` the number of
    complete bundles (bundle discounts).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["percentage", "fixed", "free_shipping", "tiered", "bundle"]
    currency: str
    amount: int
    items_amount: int
    shipping_amount: int
    lines: tuple[LineAllocation, ...] = ()
    tier: int | None = None
    applications: int | None = None


def round_half_up(numerator: int, denominator: int) -> int:
    """`numerator / denominator` rounded to the nearest integer, halves up (both ≥ 0)."""
    return (2 * numerator + denominator) // (2 * denominator)


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` in proportion to `weights` by largest remainder; shares sum to `total`."""
    whole = sum(weights)
    if whole == 0 or total == 0:
        return [0] * len(weights)
    shares = [total * weight // whole for weight in weights]
    left = total - sum(shares)
    if left:  # only then do the remainders decide (never for one line: the hot path skips the sort)
        remainders = [total * weight % whole for weight in weights]
        for index in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
            shares[index] += 1
    return shares


@lru_cache(maxsize=256)  # a shop's few percentages recur on every validation; Decimal caches its hash
def _scaled(percent: Decimal) -> int:
    return int(percent * _PERCENT_SCALE)


def _selects(selector: ItemSelector | None, line: BasketLine) -> bool:
    return selector is None or selector.matches(line.product_id, line.variant_id, line.sku, line.collection_ids)


def eligible_line_indexes(rules: CampaignRules, basket: Basket) -> list[int]:
    """Indexes of the lines the campaign applies to (eligible and not excluded)."""
    eligible, excluded = rules.basket.eligible, rules.basket.excluded
    if eligible is None and excluded.is_empty():  # most campaigns: every line, without a test per line
        return list(range(len(basket.lines)))
    return [
        index
        for index, line in enumerate(basket.lines)
        if _selects(eligible, line) and not (not excluded.is_empty() and _selects(excluded, line))
    ]


def discount_cap(discount: Discount) -> int | None:
    """The most one use of `discount` can give, or None when it depends on the basket."""
    match discount:
        case FixedDiscount(amount=amount):
            return amount
        case PercentageDiscount(max_amount=cap) | FreeShippingDiscount(max_amount=cap) | BundleDiscount(max_amount=cap):
            return cap
        case TieredDiscount(tiers=tiers):
            caps = [discount_cap(tier.reward) for tier in tiers]
            return None if any(cap is None for cap in caps) else max(cap for cap in caps if cap is not None)
    raise AssertionError(f"unknown discount {discount!r}")  # pragma: no cover


def max_discount_per_use(rules: CampaignRules) -> int | None:
    """The most one redemption can give: the discount's cap, bounded by the money budget.

    None when neither bounds it (e.g. an uncapped percentage without a money budget).
    """
    bounds = [bound for bound in (discount_cap(rules.discount), rules.budget.max_discount) if bound is not None]
    return min(bounds) if bounds else None


def compute_discount(rules: CampaignRules, basket: Basket, *, this_code: str | None = None) -> DiscountResult | Refusal:
    """The discount `rules` give on `basket`, or the basket-stage refusal.

    Pure and reusable by the redemption path. `this_code` is the code being applied, so it
    is not counted among the basket's other codes (compared without case and separators). Budgets are not checked
    here (see `plugin.rules.budget_refusal`).
    """
    currency = rules.currency or basket.currency
    if basket.currency != currency:
        return refuse(Reason.CURRENCY_MISMATCH, currency=currency, basket_currency=basket.currency)

    other_codes: list[str] = []
    if basket.applied_codes:
        own = _loose(this_code) if this_code else None
        other_codes = sorted({code for code in basket.applied_codes if _loose(code) != own})
    if other_codes and not rules.stacking.with_other_codes:
        return refuse(Reason.NOT_COMBINABLE, conflicts_with="other_codes", codes=list(other_codes))
    if basket.has_automatic_discounts and not rules.stacking.with_automatic_discounts:
        return refuse(Reason.NOT_COMBINABLE, conflicts_with="automatic_discounts")

    indexes = eligible_line_indexes(rules, basket)
    if not indexes:
        return refuse(Reason.NO_ELIGIBLE_ITEMS)
    lines = basket.lines
    quantity = sum(lines[i].quantity for i in indexes)
    subtotal = sum(lines[i].total for i in indexes)

    minimum_quantity = rules.basket.minimum_quantity
    if minimum_quantity is not None and quantity < minimum_quantity:
        return refuse(
            Reason.MINIMUM_QUANTITY_NOT_MET,
            minimum_quantity=minimum_quantity,
            quantity=quantity,
            missing_quantity=minimum_quantity - quantity,
        )
    minimum_subtotal = rules.basket.minimum_subtotal
    if minimum_subtotal is not None and subtotal < minimum_subtotal:
        return _below_minimum(minimum_subtotal, subtotal, currency)

    discount = rules.discount
    if isinstance(discount, TieredDiscount):
        reached = [i for i, tier in enumerate(discount.tiers) if subtotal >= tier.min_subtotal]
        if not reached:
            return _below_minimum(discount.tiers[0].min_subtotal, subtotal, currency)
        tier_index = reached[-1]
        reward = discount.tiers[tier_index].reward
        return _on_lines(reward, basket, indexes, currency).model_copy(update={"type": "tiered", "tier": tier_index})
    if isinstance(discount, PercentageDiscount | FixedDiscount):
        return _on_lines(discount, basket, indexes, currency)
    if isinstance(discount, FreeShippingDiscount):
        shipping = basket.shipping_amount
        if discount.max_amount is not None:
            shipping = min(shipping, discount.max_amount)
        return DiscountResult(type="free_shipping", currency=currency, amount=shipping, items_amount=0, shipping_amount=shipping)
    return _bundle(discount, basket, indexes, currency)


def _loose(code: str) -> str:
    """A code without case or separators, so `spring-7k2q` is recognised as `SPRING7K2Q`."""
    return "".join(char for char in code.upper() if char.isalnum())


def _below_minimum(minimum: int, subtotal: int, currency: str) -> Refusal:
    return refuse(
        Reason.MINIMUM_SUBTOTAL_NOT_MET,
        minimum_subtotal=minimum,
        subtotal=subtotal,
        missing_amount=minimum - subtotal,
        currency=currency,
    )


def _on_lines(discount: PercentageDiscount | FixedDiscount, basket: Basket, indexes: list[int], currency: str) -> DiscountResult:
    weights = [basket.lines[i].total for i in indexes]
    subtotal = sum(weights)
    if isinstance(discount, FixedDiscount):
        total = min(discount.amount, subtotal)
    else:
        total = round_half_up(subtotal * _scaled(discount.percent), _PERCENT_DENOMINATOR)
        if discount.max_amount is not None:
            total = min(total, discount.max_amount)
    units = [basket.lines[i].quantity for i in indexes]
    return _result(discount.type, basket, indexes, units, allocate(total, weights), currency)


def _bundle(discount: BundleDiscount, basket: Basket, indexes: list[int], currency: str) -> DiscountResult | Refusal:
    lines = basket.lines
    get_selector = discount.get if discount.get is not None else discount.buy
    buy = {i for i in indexes if _selects(discount.buy, lines[i])}
    get = [i for i in indexes if _selects(get_selector, lines[i])]
    both = buy.intersection(get)
    buy_units = sum(lines[i].quantity for i in buy)
    get_units = sum(lines[i].quantity for i in get)
    all_units = buy_units + get_units - sum(lines[i].quantity for i in both)
    n, m = discount.buy_quantity, discount.get_quantity

    sets = min(buy_units // n, get_units // m, all_units // (n + m))
    if discount.max_applications is not None:
        sets = min(sets, discount.max_applications)
    if sets == 0:
        missing = max(n - buy_units, m - get_units, n + m - all_units)
        return refuse(Reason.BUNDLE_NOT_MET, buy_quantity=n, get_quantity=m, missing_quantity=missing)

    # The cheapest "get" units, keeping enough "buy" units to be the ones bought.
    need = sets * m
    shared_left = buy_units - sets * n  # "buy" units that may still be taken as "get" units
    picked: list[int] = []
    picked_units: list[int] = []
    for i in sorted(get, key=lambda i: (lines[i].unit_price, i in both, i)):
        if need == 0:
            break
        take = min(lines[i].quantity, need, shared_left if i in both else need)
        if take:
            picked.append(i)
            picked_units.append(take)
            need -= take
            if i in both:
                shared_left -= take
    picked_order = sorted(range(len(picked)), key=lambda k: picked[k])
    picked = [picked[k] for k in picked_order]
    picked_units = [picked_units[k] for k in picked_order]

    weights = [units * lines[i].unit_price for i, units in zip(picked, picked_units, strict=True)]
    total = round_half_up(sum(weights) * _scaled(discount.percent_off), _PERCENT_DENOMINATOR)
    if discount.max_amount is not None:
        total = min(total, discount.max_amount)
    result = _result("bundle", basket, picked, picked_units, allocate(total, weights), currency)
    return result.model_copy(update={"applications": sets})


def _result(
    kind: Literal["percentage", "fixed", "bundle"],
    basket: Basket,
    indexes: Sequence[int],
    units: Sequence[int],
    amounts: Sequence[int],
    currency: str,
) -> DiscountResult:
    lines = basket.lines
    # the allocations as data, validated with the result in one call: pydantic-core then
    # builds the LineAllocation models itself, cheaper than one model call per line here
    allocations = [
        {"index": i, "line_id": lines[i].line_id, "quantity": quantity, "amount": amount}
        for i, quantity, amount in zip(indexes, units, amounts, strict=True)
        if amount
    ]
    total = sum(amounts)
    return DiscountResult(type=kind, currency=currency, amount=total, items_amount=total, shipping_amount=0, lines=allocations)
