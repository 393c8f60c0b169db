"""Discount arithmetic: table-driven cases for every discount type, rounding and allocation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.rules import (
    Basket,
    BasketLine,
    CampaignRules,
    DiscountResult,
    allocate,
    compute_discount,
    discount_cap,
    max_discount_per_use,
    round_half_up,
)
from plugin.rules.refusals import Reason, Refusal


def line(product: str = "p1", qty: int = 1, price: int = 1000, **kw: Any) -> BasketLine:
    return BasketLine(product_id=product, quantity=qty, unit_price=price, **kw)


def basket(*lines: BasketLine, currency: str = "GBP", **kw: Any) -> Basket:
    return Basket(currency=currency, lines=lines, **kw)


def rules(discount: dict[str, Any], currency: str | None = "GBP", **kw: Any) -> CampaignRules:
    data: dict[str, Any] = {"discount": discount, **kw}
    if currency is not None:
        data["currency"] = currency
    return CampaignRules.model_validate(data)


def ok(result: DiscountResult | Refusal) -> DiscountResult:
    assert isinstance(result, DiscountResult), result
    assert sum(a.amount for a in result.lines) == result.items_amount
    assert result.amount == result.items_amount + result.shipping_amount
    return result


def amounts(result: DiscountResult) -> dict[int, int]:
    return {a.index: a.amount for a in result.lines}


PCT = {"type": "percentage"}
SHIRTS = {"product_ids": ["shirt"]}

# (id, rules kwargs, basket lines, expected total, expected per-line amounts by index)
LINE_CASES: list[tuple[str, dict[str, Any], list[BasketLine], int, dict[int, int]]] = [
    (
        "percent_two_lines",
        {"discount": {**PCT, "percent": 10}},
        [line("a", 2, 1000), line("b", 1, 500)],
        250,
        {0: 200, 1: 50},
    ),
    (
        "percent_with_cap",
        {"discount": {**PCT, "percent": 50, "max_amount": 2000}},
        [line("a", 1, 6000), line("b", 1, 4000)],
        2000,
        {0: 1200, 1: 800},
    ),
    (
        "percent_under_cap",
        {"discount": {**PCT, "percent": 10, "max_amount": 2000}},
        [line("a", 1, 6000)],
        600,
        {0: 600},
    ),
    (
        "fixed_below_subtotal",
        {"discount": {"type": "fixed", "amount": 500}},
        [line("a", 1, 1000), line("b", 1, 1000), line("c", 1, 1000)],
        500,
        {0: 167, 1: 167, 2: 166},
    ),
    (
        "fixed_above_eligible_subtotal",
        {"discount": {"type": "fixed", "amount": 5000}, "basket": {"excluded": {"product_ids": ["gift"]}}},
        [line("a", 2, 600), line("gift", 1, 10000)],
        1200,
        {0: 1200},
    ),
    (
        "excluded_by_product",
        {"discount": {**PCT, "percent": 10}, "basket": {"excluded": {"product_ids": ["b"]}}},
        [line("a", 1, 1000), line("b", 1, 1000)],
        100,
        {0: 100},
    ),
    (
        "excluded_by_variant",
        {"discount": {**PCT, "percent": 10}, "basket": {"excluded": {"variant_ids": ["b-red"]}}},
        [line("b", 1, 1000, variant_id="b-blue"), line("b", 1, 1000, variant_id="b-red")],
        100,
        {0: 100},
    ),
    (
        "excluded_by_sku",
        {"discount": {**PCT, "percent": 10}, "basket": {"excluded": {"skus": ["SKU-2"]}}},
        [line("a", 1, 1000, sku="SKU-1"), line("a", 1, 3000, sku="SKU-2")],
        100,
        {0: 100},
    ),
    (
        "excluded_by_collection",
        {"discount": {**PCT, "percent": 10}, "basket": {"excluded": {"collection_ids": ["sale"]}}},
        [line("a", 1, 1000, collection_ids=("new", "sale")), line("b", 1, 2000, collection_ids=("new",))],
        200,
        {1: 200},
    ),
    (
        "eligible_collection_minus_excluded_sku",
        {
            "discount": {**PCT, "percent": 20},
            "basket": {"eligible": {"collection_ids": ["summer"]}, "excluded": {"skus": ["HAT-XL"]}},
        },
        [
            line("hat", 1, 1000, sku="HAT-M", collection_ids=("summer",)),
            line("hat", 1, 1000, sku="HAT-XL", collection_ids=("summer",)),
            line("coat", 1, 9000, collection_ids=("winter",)),
        ],
        200,
        {0: 200},
    ),
    # 33.333% of 3 x 10.00 = 9.9999 -> 10.00 on the total, allocated 3.34 / 3.33 / 3.33.
    (
        "rounding_33_333_three_lines",
        {"discount": {**PCT, "percent": "33.333"}},
        [line("a", 1, 1000), line("b", 1, 1000), line("c", 1, 1000)],
        1000,
        {0: 334, 1: 333, 2: 333},
    ),
    ("rounding_33_333_one_line", {"discount": {**PCT, "percent": "33.333"}}, [line("a", 1, 1000)], 333, {0: 333}),
    ("rounding_half_up", {"discount": {**PCT, "percent": 50}}, [line("a", 1, 1)], 1, {0: 1}),
    ("rounding_below_half", {"discount": {**PCT, "percent": "33.3333"}}, [line("a", 1, 1)], 0, {}),
    # Yen have no minor unit: 15% of 1,234 yen = 185.1 -> 185.
    ("jpy_percent", {"currency": "JPY", "discount": {**PCT, "percent": 15}}, [line("a", 1, 1234)], 185, {0: 185}),
    ("jpy_fixed", {"currency": "JPY", "discount": {"type": "fixed", "amount": 500}}, [line("a", 2, 300)], 500, {0: 500}),
    ("gbp_percent", {"discount": {**PCT, "percent": 15}}, [line("a", 1, 1234)], 185, {0: 185}),
    (
        "percent_without_currency_any_basket",
        {"currency": None, "discount": {**PCT, "percent": 10}},
        [line("a", 1, 999)],
        100,
        {0: 100},
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "lines", "total", "per_line"),
    [case[1:] for case in LINE_CASES],
    ids=[case[0] for case in LINE_CASES],
)
def test_line_discounts(kwargs: dict[str, Any], lines: list[BasketLine], total: int, per_line: dict[int, int]) -> None:
    kwargs = dict(kwargs)
    currency = kwargs.pop("currency", "GBP")
    discount = kwargs.pop("discount")
    basket_currency = currency or "EUR"
    result = ok(compute_discount(rules(discount, currency=currency, **kwargs), basket(*lines, currency=basket_currency)))
    assert result.amount == total
    assert amounts(result) == per_line
    assert result.currency == basket_currency


TIERS = {
    "type": "tiered",
    "tiers": [
        {"min_subtotal": 5000, "reward": {**PCT, "percent": 10}},
        {"min_subtotal": 10000, "reward": {**PCT, "percent": 20}},
    ],
}


@pytest.mark.parametrize(
    ("subtotal", "tier", "total"),
    [
        (4999, None, None),
        (5000, 0, 500),
        (5001, 0, 500),  # 500.1 -> 500
        (9999, 0, 1000),  # 999.9 -> 1000
        (10000, 1, 2000),
        (10001, 1, 2000),  # 2000.2 -> 2000
    ],
)
def test_tiers_at_and_around_thresholds(subtotal: int, tier: int | None, total: int | None) -> None:
    result = compute_discount(rules(TIERS), basket(line("a", 1, subtotal)))
    if tier is None:
        assert isinstance(result, Refusal)
        assert result.reason is Reason.MINIMUM_SUBTOTAL_NOT_MET
        assert result.details == {
            "minimum_subtotal": 5000,
            "subtotal": 4999,
            "missing_amount": 1,
            "currency": "GBP",
        }
        assert result.message == "Spend £0.01 more on eligible items to use this code (minimum £50.00)."
    else:
        result = ok(result)
        assert (result.type, result.tier, result.amount) == ("tiered", tier, total)


def test_tiers_count_eligible_lines_only_and_fixed_rewards() -> None:
    tiers = {
        "type": "tiered",
        "tiers": [
            {"min_subtotal": 0, "reward": {"type": "fixed", "amount": 100}},
            {"min_subtotal": 5000, "reward": {"type": "fixed", "amount": 1000}},
        ],
    }
    r = rules(tiers, basket={"excluded": {"product_ids": ["gift"]}})
    result = ok(compute_discount(r, basket(line("a", 1, 4000), line("gift", 1, 5000))))
    assert (result.tier, result.amount, amounts(result)) == (0, 100, {0: 100})
    result = ok(compute_discount(r, basket(line("a", 1, 5000), line("gift", 1, 5000))))
    assert (result.tier, result.amount) == (1, 1000)


def bundle(**kw: Any) -> dict[str, Any]:
    return {"type": "bundle", "buy_quantity": 2, "get_quantity": 1, **kw}


SIX_PRICES = [3000, 1000, 6000, 2000, 5000, 4000]  # six different items, one unit each

# (id, bundle fields, lines, total, {index: (quantity, amount)}, applications)
BUNDLE_CASES: list[tuple[str, dict[str, Any], list[BasketLine], int, dict[int, tuple[int, int]], int]] = [
    # Buy 2 get 1 on six items: two sets, the two cheapest (10.00 and 20.00) are free.
    (
        "six_items_two_cheapest_free",
        {},
        [line(f"p{i}", 1, price) for i, price in enumerate(SIX_PRICES)],
        3000,
        {1: (1, 1000), 3: (1, 2000)},
        2,
    ),
    (
        "six_items_half_price",
        {"percent_off": 50},
        [line(f"p{i}", 1, price) for i, price in enumerate(SIX_PRICES)],
        1500,
        {1: (1, 500), 3: (1, 1000)},
        2,
    ),
    (
        "seven_items_still_two_sets",
        {},
        [*(line(f"p{i}", 1, price) for i, price in enumerate(SIX_PRICES)), line("p6", 1, 500)],
        1500,
        {6: (1, 500), 1: (1, 1000)},
        2,
    ),
    ("one_line_six_units", {}, [line("a", 6, 1000)], 2000, {0: (2, 2000)}, 2),
    ("max_applications", {"max_applications": 1}, [line("a", 6, 1000)], 1000, {0: (1, 1000)}, 1),
    ("capped", {"max_amount": 1500}, [line("a", 6, 1000)], 1500, {0: (2, 1500)}, 2),
    (
        "rounding_33_333_off",
        {"percent_off": "33.333"},
        [line("a", 3, 1000), line("b", 3, 1000)],
        667,  # 2 units x 10.00 x 33.333% = 6.6666 -> 6.67; equal prices: the earlier line first
        {0: (2, 667)},
        2,
    ),
    # Buy 2 shirts, get a sock free: the cheaper sock is the free one.
    (
        "separate_sets",
        {"buy": SHIRTS, "get": {"product_ids": ["sock"]}},
        [line("shirt", 3, 2500), line("sock", 1, 800, sku="S1"), line("sock", 1, 500, sku="S2")],
        500,
        {2: (1, 500)},
        1,
    ),
    # Overlapping sets: buy any two, get a hat; the hats are also in the buy set. The cheapest
    # hat is free and the others count as bought.
    (
        "overlapping_sets",
        {"get": {"collection_ids": ["hats"]}},
        [
            line("hat1", 1, 1500, collection_ids=("hats",)),
            line("hat2", 1, 1200, collection_ids=("hats",)),
            line("scarf", 1, 900),
        ],
        1200,
        {1: (1, 1200)},
        1,
    ),
    # Only the cheap item is in both sets: it is free only if enough "buy" units remain.
    (
        "overlap_keeps_buy_units",
        {"buy": {"product_ids": ["a", "b"]}, "get": {"product_ids": ["b", "c"]}},
        [line("a", 1, 5000), line("b", 2, 100), line("c", 1, 4000)],
        100,
        {1: (1, 100)},
        1,
    ),
]


@pytest.mark.parametrize(
    ("fields", "lines", "total", "per_line", "applications"),
    [case[1:] for case in BUNDLE_CASES],
    ids=[case[0] for case in BUNDLE_CASES],
)
def test_bundles(
    fields: dict[str, Any],
    lines: list[BasketLine],
    total: int,
    per_line: dict[int, tuple[int, int]],
    applications: int,
) -> None:
    result = ok(compute_discount(rules(bundle(**fields)), basket(*lines)))
    assert result.amount == total
    assert {a.index: (a.quantity, a.amount) for a in result.lines} == per_line
    assert result.applications == applications


@pytest.mark.parametrize(
    ("fields", "lines", "missing"),
    [
        ({}, [line("a", 2, 1000)], 1),
        ({"buy_quantity": 3, "get_quantity": 2}, [line("a", 1, 1000)], 4),
        ({"buy": SHIRTS, "get": {"product_ids": ["sock"]}}, [line("shirt", 5, 1000)], 1),
        ({"buy": SHIRTS, "get": {"product_ids": ["sock"]}}, [line("shirt", 1, 1000), line("sock", 3, 100)], 1),
    ],
)
def test_incomplete_bundle(fields: dict[str, Any], lines: list[BasketLine], missing: int) -> None:
    result = compute_discount(rules(bundle(**fields)), basket(*lines))
    assert isinstance(result, Refusal)
    assert result.reason is Reason.BUNDLE_NOT_MET
    assert result.details["missing_quantity"] == missing


@pytest.mark.parametrize(
    ("max_amount", "shipping", "expected"),
    [(None, 499, 499), (300, 499, 300), (None, 0, 0)],
)
def test_free_shipping(max_amount: int | None, shipping: int, expected: int) -> None:
    discount: dict[str, Any] = {"type": "free_shipping"}
    if max_amount is not None:
        discount["max_amount"] = max_amount
    result = ok(compute_discount(rules(discount), basket(line(), shipping_amount=shipping)))
    assert (result.amount, result.shipping_amount, result.items_amount, result.lines) == (expected, expected, 0, ())


# (id, rules kwargs, basket kwargs, reason, details subset)
BASKET_REFUSALS: list[tuple[str, dict[str, Any], dict[str, Any], Reason, dict[str, Any]]] = [
    (
        "currency",
        {},
        {"currency": "EUR"},
        Reason.CURRENCY_MISMATCH,
        {"currency": "GBP", "basket_currency": "EUR"},
    ),
    (
        "other_code",
        {},
        {"applied_codes": ("OTHER", "THIS")},
        Reason.NOT_COMBINABLE,
        {"conflicts_with": "other_codes", "codes": ["OTHER"]},
    ),
    (
        "automatic",
        {"stacking": {"with_automatic_discounts": False}},
        {"has_automatic_discounts": True},
        Reason.NOT_COMBINABLE,
        {"conflicts_with": "automatic_discounts"},
    ),
    ("no_lines", {}, {"lines": ()}, Reason.NO_ELIGIBLE_ITEMS, {}),
    (
        "all_excluded",
        {"basket": {"excluded": {"product_ids": ["p1"]}}},
        {},
        Reason.NO_ELIGIBLE_ITEMS,
        {},
    ),
    (
        "min_quantity",
        {"basket": {"minimum_quantity": 3}},
        {},
        Reason.MINIMUM_QUANTITY_NOT_MET,
        {"minimum_quantity": 3, "quantity": 1, "missing_quantity": 2},
    ),
    (
        "min_subtotal_counts_eligible_only",
        {"basket": {"minimum_subtotal": 5000, "excluded": {"product_ids": ["gift"]}}},
        {"lines": (line("p1", 1, 1000), line("gift", 1, 9000))},
        Reason.MINIMUM_SUBTOTAL_NOT_MET,
        {"minimum_subtotal": 5000, "subtotal": 1000, "missing_amount": 4000, "currency": "GBP"},
    ),
]


@pytest.mark.parametrize(
    ("rule_kw", "basket_kw", "reason", "details"),
    [case[1:] for case in BASKET_REFUSALS],
    ids=[case[0] for case in BASKET_REFUSALS],
)
def test_basket_refusals(rule_kw: dict[str, Any], basket_kw: dict[str, Any], reason: Reason, details: dict[str, Any]) -> None:
    basket_kw = {"lines": (line(),), **basket_kw}
    result = compute_discount(
        rules({**PCT, "percent": 10}, **rule_kw), Basket(**{"currency": "GBP", **basket_kw}), this_code="THIS"
    )
    assert isinstance(result, Refusal)
    assert result.reason is reason
    assert details.items() <= result.details.items()


def test_combinable_codes_and_own_code_are_accepted() -> None:
    r = rules({**PCT, "percent": 10})
    assert ok(compute_discount(r, basket(line(), applied_codes=("THIS",)), this_code="THIS")).amount == 100
    assert ok(compute_discount(r, basket(line(), applied_codes=("sp-ring 7",)), this_code="SPRING7")).amount == 100
    r = rules({**PCT, "percent": 10}, stacking={"with_other_codes": True})
    assert ok(compute_discount(r, basket(line(), applied_codes=("OTHER",)), this_code="THIS")).amount == 100


def test_minimum_subtotal_message_in_yen() -> None:
    r = rules({**PCT, "percent": 10}, currency="JPY", basket={"minimum_subtotal": 5000})
    result = compute_discount(r, basket(line("a", 1, 3800), currency="JPY"))
    assert isinstance(result, Refusal)
    assert result.details["missing_amount"] == 1200
    assert result.message == "Spend ¥1,200 more on eligible items to use this code (minimum ¥5,000)."


@pytest.mark.parametrize(
    ("discount", "budget", "expected_cap", "expected_per_use"),
    [
        ({**PCT, "percent": 10}, None, None, None),
        ({**PCT, "percent": 10}, 50000, None, 50000),
        ({**PCT, "percent": 10, "max_amount": 2000}, None, 2000, 2000),
        ({"type": "fixed", "amount": 1500}, 1000, 1500, 1000),
        ({"type": "free_shipping"}, None, None, None),
        ({"type": "free_shipping", "max_amount": 800}, None, 800, 800),
        (TIERS, None, None, None),
        (
            {
                "type": "tiered",
                "tiers": [
                    {"min_subtotal": 5000, "reward": {"type": "fixed", "amount": 500}},
                    {"min_subtotal": 10000, "reward": {**PCT, "percent": 20, "max_amount": 3000}},
                ],
            },
            None,
            3000,
            3000,
        ),
        (bundle(), None, None, None),
        (bundle(max_amount=2500), None, 2500, 2500),
    ],
)
def test_max_discount_per_use(
    discount: dict[str, Any], budget: int | None, expected_cap: int | None, expected_per_use: int | None
) -> None:
    r = rules(discount, budget={"max_discount": budget} if budget else {})
    assert discount_cap(r.discount) == expected_cap
    assert max_discount_per_use(r) == expected_per_use


@pytest.mark.parametrize(
    ("total", "weights", "shares"),
    [
        (10, [1, 1, 1], [4, 3, 3]),
        (100, [0, 50, 50], [0, 50, 50]),
        (0, [5, 5], [0, 0]),
        (7, [0, 0], [0, 0]),
        (1, [1, 2, 3], [0, 0, 1]),
        (5, [2, 3], [2, 3]),
    ],
)
def test_allocate(total: int, weights: list[int], shares: list[int]) -> None:
    assert allocate(total, weights) == shares


@pytest.mark.parametrize(
    ("numerator", "denominator", "rounded"), [(0, 7, 0), (1, 2, 1), (3, 2, 2), (49, 100, 0), (50, 100, 1), (149, 100, 1)]
)
def test_round_half_up(numerator: int, denominator: int, rounded: int) -> None:
    assert round_half_up(numerator, denominator) == rounded


prices = st.integers(min_value=0, max_value=100_000)
lines_strategy = st.lists(st.tuples(st.integers(1, 20), prices), min_size=1, max_size=8)
discounts = st.one_of(
    st.builds(
        lambda p, cap: {**PCT, "percent": str(p), **({"max_amount": cap} if cap else {})},
        st.decimals(min_value="0.0001", max_value=100, places=4),
        st.none() | st.integers(1, 100_000),
    ),
    st.builds(lambda a: {"type": "fixed", "amount": a}, st.integers(1, 500_000)),
    st.builds(
        lambda n, m, p: bundle(buy_quantity=n, get_quantity=m, percent_off=str(p)),
        st.integers(1, 3),
        st.integers(1, 3),
        st.decimals(min_value="0.0001", max_value=100, places=4),
    ),
)


@settings(max_examples=300, deadline=None)
@given(spec=lines_strategy, discount=discounts)
def test_allocations_always_sum_exactly_and_never_exceed_a_line(spec: list[tuple[int, int]], discount: dict[str, Any]) -> None:
    b = basket(*(line(f"p{i}", qty, price) for i, (qty, price) in enumerate(spec)))
    result = compute_discount(rules(discount), b)
    if isinstance(result, Refusal):
        assert result.reason is Reason.BUNDLE_NOT_MET
        return
    result = ok(result)
    assert 0 <= result.amount <= sum(x.total for x in b.lines)
    for allocation in result.lines:
        assert 0 < allocation.amount <= b.lines[allocation.index].total
        assert allocation.amount <= allocation.quantity * b.lines[allocation.index].unit_price
