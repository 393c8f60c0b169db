"""Rules: model validation, overrides, expiry, evaluation (every reason), refusals, exposure."""

from __future__ import annotations

import dataclasses
import json
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from plugin.rules import (
    Basket,
    BasketLine,
    CampaignRules,
    CampaignState,
    CampaignStatus,
    CodeState,
    Customer,
    DiscountResult,
    Exposure,
    FixedDiscount,
    OpenUses,
    RulesOverride,
    apply_override,
    code_expires_at,
    evaluate,
    exposure,
)
from plugin.rules.refusals import (
    CATALOGUE,
    MESSAGES,
    PLAIN_MESSAGES,
    Reason,
    Refusal,
    format_money,
    generic_message,
    public_reason,
    refuse,
    render,
    shopper_view,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

TYPICAL_RULES_JSON = {
    "version": 1,
    "currency": "GBP",
    "discount": {
        "type": "tiered",
        "tiers": [
            {"min_subtotal": 5000, "reward": {"type": "percentage", "percent": "10", "max_amount": None}},
            {"min_subtotal": 10000, "reward": {"type": "percentage", "percent": "20", "max_amount": 5000}},
        ],
    },
    "time": {
        "starts_at": "2026-01-01T00:00:00Z",
        "ends_at": "2027-01-01T00:00:00Z",
        "relative_expiry": {"after": "assignment", "duration": 30, "unit": "days"},
    },
    "usage": {"uses_per_code": 1, "uses_per_customer": 1, "first_order_only": False},
    "basket": {
        "minimum_subtotal": None,
        "minimum_quantity": None,
        "eligible": None,
        "excluded": {"product_ids": [], "variant_ids": [], "skus": [], "collection_ids": ["gift-cards"]},
    },
    "allowed_channels": ["mobile_app", "online_store"],
    "stacking": {"with_other_codes": False, "with_automatic_discounts": True},
    "budget": {"max_redemptions": 10000, "max_discount": 2500000},
    "distribution": {"binding": "claim", "remind_days_before_expiry": None},
    "on_cancel": "restore",
}


def make_rules(**kw: Any) -> CampaignRules:
    data: dict[str, Any] = {"currency": "GBP", "discount": {"type": "percentage", "percent": 10}, **kw}
    return CampaignRules.model_validate(data)


# --- models ------------------------------------------------------------------------------


def test_typical_rules_round_trip_through_json() -> None:
    rules = CampaignRules.model_validate(TYPICAL_RULES_JSON)
    assert rules.model_dump(mode="json") == TYPICAL_RULES_JSON
    assert CampaignRules.model_validate_json(rules.model_dump_json()) == rules
    assert json.loads(json.dumps(rules.model_dump(mode="json"))) == TYPICAL_RULES_JSON


def test_inputs_are_normalised() -> None:
    rules = make_rules(
        currency="gbp",
        time={"starts_at": "2026-01-01T01:00:00+01:00"},
        allowed_channels=["POS", "online_store", "pos"],
        basket={"excluded": {"skus": ["b", "a", "b"]}},
    )
    assert rules.currency == "GBP"
    assert rules.time.starts_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert rules.time.starts_at.tzinfo is UTC
    assert rules.allowed_channels == ("online_store", "pos")
    assert rules.basket.excluded.skus == ("a", "b")
    assert Customer(email="  Ann@Example.COM ").email == "ann@example.com"
    assert Customer(email="  ").email is None


def test_json_schemas_generate() -> None:
    for model in (CampaignRules, RulesOverride, Basket, Customer, DiscountResult, Refusal, Exposure):
        for mode in ("validation", "serialization"):
            schema = model.model_json_schema(mode=mode)
            assert "properties" in schema or "$ref" in schema
    schema = CampaignRules.model_json_schema()
    assert schema["properties"]["discount"]["discriminator"]["propertyName"] == "type"


def pct(percent: Any, **kw: Any) -> dict[str, Any]:
    return {"type": "percentage", "percent": percent, **kw}


def tiers(*pairs: tuple[int, int]) -> dict[str, Any]:
    return {"type": "tiered", "tiers": [{"min_subtotal": s, "reward": pct(p)} for s, p in pairs]}


# (id, rules data (merged over a GBP 10% campaign), error location, message fragment)
INVALID_RULES: list[tuple[str, dict[str, Any], str, str]] = [
    ("negative_fixed", {"discount": {"type": "fixed", "amount": -5}}, "discount.fixed.amount", "greater than 0"),
    ("zero_fixed", {"discount": {"type": "fixed", "amount": 0}}, "discount.fixed.amount", "greater than 0"),
    ("float_money", {"discount": {"type": "fixed", "amount": 50.0}}, "discount.fixed.amount", "valid integer"),
    ("bool_money", {"discount": {"type": "fixed", "amount": True}}, "discount.fixed.amount", "valid integer"),
    ("percent_over_100", {"discount": pct(150)}, "discount.percentage.percent", "less than or equal to 100"),
    ("percent_zero", {"discount": pct(0)}, "discount.percentage.percent", "greater than 0"),
    ("percent_negative", {"discount": pct(-10)}, "discount.percentage.percent", "greater than 0"),
    ("percent_five_places", {"discount": pct("10.12345")}, "discount.percentage.percent", "4 decimal places"),
    ("negative_cap", {"discount": pct(10, max_amount=-1)}, "discount.percentage.max_amount", "greater than 0"),
    (
        "unknown_type",
        {"discount": {"type": "bogus", "percent": 10}},
        "discount",
        "does not match any of the expected tags: 'percentage', 'fixed', 'free_shipping', 'tiered', 'bundle'",
    ),
    ("missing_type", {"discount": {"percent": 10}}, "discount", "Unable to extract tag using discriminator 'type'"),
    (
        "tiers_not_rising",
        {"discount": tiers((5000, 10), (5000, 20))},
        "discount.tiered.tiers",
        "tier thresholds must rise: tier 2 starts at 5000, not above tier 1 (5000)",
    ),
    (
        "tiers_falling",
        {"discount": tiers((10000, 20), (5000, 30))},
        "discount.tiered.tiers",
        "tier thresholds must rise",
    ),
    (
        "tier_rewards_falling",
        {"discount": tiers((5000, 20), (10000, 10))},
        "discount.tiered.tiers",
        "tier rewards must not fall: tier 2 gives less than tier 1",
    ),
    ("no_tiers", {"discount": {"type": "tiered", "tiers": []}}, "discount.tiered.tiers", "at least 1 item"),
    (
        "negative_tier_threshold",
        {"discount": tiers((-1, 10))},
        "discount.tiered.tiers.0.min_subtotal",
        "greater than or equal to 0",
    ),
    (
        "empty_bundle_selector",
        {"discount": {"type": "bundle", "buy": {}, "buy_quantity": 2, "get_quantity": 1}},
        "discount.bundle.buy",
        "buy must list at least one product, variant, SKU or collection",
    ),
    (
        "bundle_zero_quantity",
        {"discount": {"type": "bundle", "buy_quantity": 0, "get_quantity": 1}},
        "discount.bundle.buy_quantity",
        "greater than 0",
    ),
    (
        "currency_required",
        {"currency": None, "discount": {"type": "fixed", "amount": 500}, "budget": {"max_discount": 9}},
        "",
        "currency is required because the rules hold money amounts (discount.amount, budget.max_discount)",
    ),
    ("bad_currency", {"currency": "POUND"}, "currency", "should match pattern"),
    ("naive_datetime", {"time": {"starts_at": "2026-01-01T00:00:00"}}, "time.starts_at", "timezone info"),
    ("numeric_datetime", {"time": {"starts_at": 1767225600}}, "time.starts_at", "ISO 8601 date-time string"),
    ("flag_as_number", {"stacking": {"with_other_codes": 1}}, "stacking.with_other_codes", "valid boolean"),
    (
        "window_backwards",
        {"time": {"starts_at": "2026-02-01T00:00:00Z", "ends_at": "2026-01-01T00:00:00Z"}},
        "time",
        "ends_at must be after starts_at",
    ),
    (
        "expiry_unit",
        {"time": {"relative_expiry": {"after": "issue", "duration": 2, "unit": "weeks"}}},
        "time.relative_expiry.unit",
        "'hours' or 'days'",
    ),
    ("negative_minimum", {"basket": {"minimum_subtotal": -100}}, "basket.minimum_subtotal", "greater than 0"),
    (
        "empty_eligible",
        {"basket": {"eligible": {}}},
        "basket.eligible",
        "eligible must list at least one product, variant, SKU or collection",
    ),
    ("uses_zero", {"usage": {"uses_per_code": 0}}, "usage.uses_per_code", "greater than 0"),
    ("negative_budget", {"budget": {"max_discount": -1}}, "budget.max_discount", "greater than 0"),
    (
        "no_channels",
        {"allowed_channels": []},
        "allowed_channels",
        "allowed_channels must list at least one channel",
    ),
    ("bad_channel", {"allowed_channels": ["online store"]}, "allowed_channels.0", "should match pattern"),
    ("extra_field", {"discount": pct(10, colour="red")}, "discount.percentage.colour", "Extra inputs"),
    ("unknown_version", {"version": 2}, "version", "Input should be 1"),
]


@pytest.mark.parametrize(
    ("data", "location", "fragment"),
    [case[1:] for case in INVALID_RULES],
    ids=[case[0] for case in INVALID_RULES],
)
def test_invalid_rules_give_clear_errors(data: dict[str, Any], location: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CampaignRules.model_validate({"currency": "GBP", "discount": pct(10), **data})
    found = [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]
    assert any(loc == location and fragment in msg for loc, msg in found), found


# --- overrides -----------------------------------------------------------------------------


def test_override_replaces_only_given_fields() -> None:
    rules = make_rules(usage={"uses_per_code": 1, "uses_per_customer": 2})
    override = RulesOverride.model_validate(
        {
            "discount": {"type": "fixed", "amount": 500},
            "uses_per_code": None,
            "relative_expiry": {"after": "issue", "duration": 48, "unit": "hours"},
            "allowed_channels": ["pos"],
        }
    )
    merged = apply_override(rules, override)
    assert merged.discount == FixedDiscount(amount=500)
    assert merged.usage.uses_per_code is None
    assert merged.usage.uses_per_customer == 2
    assert merged.time.relative_expiry is not None and merged.time.relative_expiry.delta() == 48 * HOUR
    assert merged.allowed_channels == ("pos",)
    assert merged.currency == "GBP"


def test_empty_override_inherits_and_serialises_only_given_fields() -> None:
    rules = make_rules(usage={"uses_per_code": 5})
    assert apply_override(rules, RulesOverride()) is rules
    assert apply_override(rules, None) is rules
    assert RulesOverride().model_dump(mode="json") == {}
    unlimited = RulesOverride.model_validate({"uses_per_code": None})
    stored = unlimited.model_dump(mode="json")
    assert stored == {"uses_per_code": None}
    assert apply_override(rules, RulesOverride.model_validate(stored)).usage.uses_per_code is None
    assert RulesOverride.model_validate_json(unlimited.model_dump_json()) == unlimited


@pytest.mark.parametrize(
    ("campaign", "override", "fragment"),
    [
        (
            {"currency": None},
            {"discount": {"type": "fixed", "amount": 500}},
            "currency is required because the rules hold money amounts (discount.amount)",
        ),
        ({}, {"discount": None}, "discount can't be null"),
        ({}, {"usage": {"uses_per_code": 2}}, "Extra inputs"),
    ],
)
def test_invalid_overrides(campaign: dict[str, Any], override: dict[str, Any], fragment: str) -> None:
    rules = make_rules(**campaign)
    with pytest.raises(ValidationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        apply_override(rules, RulesOverride.model_validate(override))


# --- expiry --------------------------------------------------------------------------------

ISSUED = NOW - 10 * DAY


@pytest.mark.parametrize(
    ("time", "assigned_at", "explicit", "expected"),
    [
        ({}, None, None, None),
        ({}, None, NOW, NOW),
        ({"ends_at": NOW + DAY}, None, None, NOW + DAY),
        ({"relative_expiry": {"after": "issue", "duration": 7, "unit": "days"}}, None, None, ISSUED + 7 * DAY),
        ({"relative_expiry": {"after": "assignment", "duration": 48, "unit": "hours"}}, None, None, None),
        (
            {"relative_expiry": {"after": "assignment", "duration": 48, "unit": "hours"}},
            NOW,
            None,
            NOW + 48 * HOUR,
        ),
        (
            {"ends_at": NOW + 3 * DAY, "relative_expiry": {"after": "issue", "duration": 12, "unit": "days"}},
            None,
            NOW + 5 * DAY,
            NOW + 2 * DAY,  # issue + 12 days is the earliest
        ),
    ],
)
def test_code_expires_at(
    time: dict[str, Any], assigned_at: datetime | None, explicit: datetime | None, expected: datetime | None
) -> None:
    assert code_expires_at(make_rules(time=time), ISSUED, assigned_at, explicit) == expected


# --- evaluation: every reason --------------------------------------------------------------


def ask(
    *,
    rules: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
    campaign: dict[str, Any] | None = None,
    customer: dict[str, Any] | None = None,
    basket: dict[str, Any] | None = None,
    channel: str | None = "online_store",
    now: datetime = NOW,
) -> DiscountResult | Refusal:
    state = CampaignState(rules=make_rules(**(rules or {})), status=CampaignStatus.ACTIVE)
    state = dataclasses.replace(state, **(campaign or {}))
    code_state = CodeState(code="SPRING-7K2Q", issued_at=ISSUED, **(code or {}))
    shopper = None if customer is None else Customer.model_validate(customer)
    lines = [BasketLine(product_id="p1", quantity=2, unit_price=2500)]
    cart = Basket.model_validate({"currency": "GBP", "lines": lines, **(basket or {})})
    return evaluate(code=code_state, campaign=state, customer=shopper, basket=cart, channel=channel, now=now)


ANN = {"id": "cust-1", "email": "ann@example.com", "orders_count": 0}

# (id, ask(...) keyword arguments, reason, expected details (None: don't check))
REFUSALS: list[tuple[str, dict[str, Any], Reason, dict[str, Any] | None]] = [
    ("voided", {"code": {"voided": True}}, Reason.VOIDED, {}),
    ("single_use_used", {"code": {"uses": 1}}, Reason.ALREADY_REDEEMED, {}),
    (
        "n_uses_exhausted",
        {"rules": {"usage": {"uses_per_code": 3}}, "code": {"uses": 3}},
        Reason.USAGE_LIMIT_REACHED,
        {"limit": 3, "uses": 3},
    ),
    ("explicit_expiry", {"code": {"expires_at": NOW - HOUR}}, Reason.EXPIRED, {"expired_at": "2026-03-01T11:00:00Z"}),
    ("expires_at_the_instant", {"code": {"expires_at": NOW}}, Reason.EXPIRED, {"expired_at": "2026-03-01T12:00:00Z"}),
    (
        "relative_after_issue",
        {"rules": {"time": {"relative_expiry": {"after": "issue", "duration": 7, "unit": "days"}}}},
        Reason.EXPIRED,
        {"expired_at": "2026-02-26T12:00:00Z"},
    ),
    (
        "relative_after_assignment",
        {
            "rules": {"time": {"relative_expiry": {"after": "assignment", "duration": 48, "unit": "hours"}}},
            "code": {"assigned_at": NOW - 49 * HOUR},
        },
        Reason.EXPIRED,
        {"expired_at": "2026-03-01T11:00:00Z"},
    ),
    (
        "campaign_end",
        {"rules": {"time": {"ends_at": "2026-02-28T00:00:00Z"}}},
        Reason.EXPIRED,
        {"expired_at": "2026-02-28T00:00:00Z"},
    ),
    ("held", {"code": {"held_by_other_checkout": True}}, Reason.HELD_BY_OTHER_CHECKOUT, {}),
    ("draft", {"campaign": {"status": CampaignStatus.DRAFT}}, Reason.CAMPAIGN_DRAFT, {}),
    ("paused", {"campaign": {"status": CampaignStatus.PAUSED}}, Reason.CAMPAIGN_PAUSED, {}),
    ("ended", {"campaign": {"status": CampaignStatus.ENDED}}, Reason.CAMPAIGN_ENDED, {}),
    (
        "not_started",
        {"rules": {"time": {"starts_at": "2026-03-02T09:00:00Z"}}},
        Reason.NOT_YET_VALID,
        {"starts_at": "2026-03-02T09:00:00Z"},
    ),
    (
        "wrong_channel",
        {"rules": {"allowed_channels": ["pos", "mobile_app"]}},
        Reason.CHANNEL_NOT_ALLOWED,
        {"channel": "online_store", "allowed_channels": ["mobile_app", "pos"]},
    ),
    (
        "unknown_channel",
        {"rules": {"allowed_channels": ["pos"]}, "channel": None},
        Reason.CHANNEL_NOT_ALLOWED,
        {"allowed_channels": ["pos"]},
    ),
    (
        "bound_code_guest",
        {"code": {"bound_email": "ann@example.com"}},
        Reason.CUSTOMER_REQUIRED,
        {"requires": "email", "because": "bound"},
    ),
    (
        "bound_to_id_email_given",
        {"code": {"bound_customer_id": "cust-1"}, "customer": {"email": "ann@example.com"}},
        Reason.CUSTOMER_REQUIRED,
        {"requires": "customer_id", "because": "bound"},
    ),
    (
        "bound_other_id",
        {"code": {"bound_customer_id": "cust-2"}, "customer": ANN},
        Reason.BOUND_TO_OTHER_CUSTOMER,
        {},
    ),
    (
        "bound_other_email",
        {"code": {"bound_email": "bob@example.com"}, "customer": {"email": "ann@example.com"}},
        Reason.BOUND_TO_OTHER_CUSTOMER,
        {},
    ),
    (
        "per_customer_guest",
        {"rules": {"usage": {"uses_per_customer": 1}}},
        Reason.CUSTOMER_REQUIRED,
        {"requires": "customer", "because": "uses_per_customer"},
    ),
    (
        "per_customer_used",
        {"rules": {"usage": {"uses_per_customer": 2}}, "customer": {**ANN, "campaign_uses": 2}},
        Reason.CUSTOMER_LIMIT_REACHED,
        {"limit": 2, "uses": 2},
    ),
    (
        "first_order_unknown",
        {"rules": {"usage": {"first_order_only": True}}, "customer": {"email": "ann@example.com"}},
        Reason.CUSTOMER_REQUIRED,
        {"requires": "customer", "because": "first_order_only"},
    ),
    (
        "not_first_order",
        {"rules": {"usage": {"first_order_only": True}}, "customer": {**ANN, "orders_count": 3}},
        Reason.FIRST_ORDER_ONLY,
        {},
    ),
    (
        "currency",
        {"basket": {"currency": "EUR"}},
        Reason.CURRENCY_MISMATCH,
        {"currency": "GBP", "basket_currency": "EUR"},
    ),
    (
        "stacking",
        {"basket": {"applied_codes": ["SPRING-7K2Q", "WELCOME"]}},
        Reason.NOT_COMBINABLE,
        {"conflicts_with": "other_codes", "codes": ["WELCOME"]},
    ),
    (
        "no_eligible",
        {"rules": {"basket": {"eligible": {"collection_ids": ["shoes"]}}}},
        Reason.NO_ELIGIBLE_ITEMS,
        {},
    ),
    (
        "min_quantity",
        {"rules": {"basket": {"minimum_quantity": 5}}},
        Reason.MINIMUM_QUANTITY_NOT_MET,
        {"minimum_quantity": 5, "quantity": 2, "missing_quantity": 3},
    ),
    (
        "min_subtotal",
        {"rules": {"basket": {"minimum_subtotal": 7500}}},
        Reason.MINIMUM_SUBTOTAL_NOT_MET,
        {"minimum_subtotal": 7500, "subtotal": 5000, "missing_amount": 2500, "currency": "GBP"},
    ),
    (
        "bundle",
        {"rules": {"discount": {"type": "bundle", "buy_quantity": 2, "get_quantity": 1}}},
        Reason.BUNDLE_NOT_MET,
        {"buy_quantity": 2, "get_quantity": 1, "missing_quantity": 1},
    ),
    (
        "budget_count",
        {"rules": {"budget": {"max_redemptions": 100}}, "campaign": {"redemptions": 100}},
        Reason.BUDGET_EXHAUSTED,
        {"budget": "redemptions"},
    ),
    (
        "budget_money_spent",
        {"rules": {"budget": {"max_discount": 100000}}, "campaign": {"discount_given": 100000}},
        Reason.BUDGET_EXHAUSTED,
        {"budget": "discount"},
    ),
    (
        "budget_money_would_overrun",  # the 5.00 discount does not fit in the 4.99 left
        {"rules": {"budget": {"max_discount": 100000}}, "campaign": {"discount_given": 99501}},
        Reason.BUDGET_EXHAUSTED,
        {"budget": "discount"},
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "reason", "details"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_every_refusal(kwargs: dict[str, Any], reason: Reason, details: dict[str, Any] | None) -> None:
    result = ask(**kwargs)
    assert isinstance(result, Refusal), result
    assert result.reason is reason
    if details is not None:
        assert result.details == details
    assert result.message == render(reason, result.details)
    assert "{" not in result.message


def test_the_tables_cover_every_reason() -> None:
    evaluated = {case[2] for case in REFUSALS}
    decided_by_caller = {Reason.UNKNOWN_CODE, Reason.MISTYPED_CODE}
    assert evaluated | decided_by_caller == set(Reason)


# (id, ask(...) keyword arguments, expected discount)
ACCEPTED: list[tuple[str, dict[str, Any], int]] = [
    ("plain", {}, 500),
    ("bound_email_any_case", {"code": {"bound_email": " Ann@Example.com"}, "customer": {"email": "ANN@example.com "}}, 500),
    (
        "bound_id_decides_over_email",
        {"code": {"bound_customer_id": "cust-1", "bound_email": "old@example.com"}, "customer": ANN},
        500,
    ),
    (
        "bound_both_email_only",
        {"code": {"bound_customer_id": "x", "bound_email": "ann@example.com"}, "customer": {"email": "ann@example.com"}},
        500,
    ),
    (
        "unassigned_code_has_no_relative_expiry",
        {"rules": {"time": {"relative_expiry": {"after": "assignment", "duration": 1, "unit": "hours"}}}},
        500,
    ),
    (
        "multi_use_code_with_uses_left",
        {"rules": {"usage": {"uses_per_code": 3}}, "code": {"uses": 2}},
        500,
    ),
    ("unlimited_code", {"rules": {"usage": {"uses_per_code": None}}, "code": {"uses": 10**6}}, 500),
    ("batch_override_uses", {"code": {"uses": 1, "override": RulesOverride(uses_per_code=2)}}, 500),
    (
        "batch_override_discount",
        {"code": {"override": RulesOverride.model_validate({"discount": {"type": "fixed", "amount": 700}})}},
        700,
    ),
    ("channel_normalised", {"rules": {"allowed_channels": ["pos"]}, "channel": " POS "}, 500),
    ("first_order", {"rules": {"usage": {"first_order_only": True}}, "customer": ANN}, 500),
    ("per_customer_left", {"rules": {"usage": {"uses_per_customer": 2}}, "customer": {**ANN, "campaign_uses": 1}}, 500),
    ("budget_exactly_fits", {"rules": {"budget": {"max_discount": 100000}}, "campaign": {"discount_given": 99500}}, 500),
    ("starts_now", {"rules": {"time": {"starts_at": NOW}}}, 500),
    ("ends_later", {"rules": {"time": {"ends_at": NOW + timedelta(seconds=1)}}}, 500),
]


@pytest.mark.parametrize(
    ("kwargs", "amount"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_accepted(kwargs: dict[str, Any], amount: int) -> None:
    result = ask(**kwargs)
    assert isinstance(result, DiscountResult), result
    assert (result.amount, result.currency) == (amount, "GBP")


def test_checks_run_in_the_documented_order() -> None:
    """Start with everything wrong, fix one thing at a time: the reasons come in stage order."""
    kwargs: dict[str, Any] = {
        "rules": {
            "usage": {"uses_per_customer": 1, "first_order_only": True},
            "time": {"starts_at": "2026-03-05T00:00:00Z"},
            "allowed_channels": ["pos"],
            "basket": {"minimum_quantity": 3, "minimum_subtotal": 9000},
            "budget": {"max_redemptions": 5},
        },
        "code": {
            "voided": True,
            "uses": 1,
            "expires_at": NOW - DAY,
            "held_by_other_checkout": True,
            "bound_customer_id": "cust-2",
        },
        "campaign": {"status": CampaignStatus.PAUSED, "redemptions": 5},
        "customer": {"id": "cust-1", "orders_count": 1, "campaign_uses": 1},
        "basket": {"currency": "EUR", "applied_codes": ["OTHER"]},
    }
    fixes: list[tuple[Reason, Any]] = [
        (Reason.VOIDED, lambda k: k["code"].update(voided=False)),
        (Reason.ALREADY_REDEEMED, lambda k: k["code"].update(uses=0)),
        (Reason.EXPIRED, lambda k: k["code"].update(expires_at=None)),
        (Reason.HELD_BY_OTHER_CHECKOUT, lambda k: k["code"].update(held_by_other_checkout=False)),
        (Reason.CAMPAIGN_PAUSED, lambda k: k["campaign"].update(status=CampaignStatus.ACTIVE)),
        (Reason.NOT_YET_VALID, lambda k: k["rules"].pop("time")),
        (Reason.CHANNEL_NOT_ALLOWED, lambda k: k.update(channel="pos")),
        (Reason.BOUND_TO_OTHER_CUSTOMER, lambda k: k["code"].update(bound_customer_id="cust-1")),
        (Reason.CUSTOMER_LIMIT_REACHED, lambda k: k["customer"].update(campaign_uses=0)),
        (Reason.FIRST_ORDER_ONLY, lambda k: k["customer"].update(orders_count=0)),
        (Reason.CURRENCY_MISMATCH, lambda k: k["basket"].update(currency="GBP")),
        (Reason.NOT_COMBINABLE, lambda k: k["basket"].update(applied_codes=[])),
        (Reason.MINIMUM_QUANTITY_NOT_MET, lambda k: k["rules"]["basket"].pop("minimum_quantity")),
        (Reason.MINIMUM_SUBTOTAL_NOT_MET, lambda k: k["rules"]["basket"].pop("minimum_subtotal")),
        (Reason.BUDGET_EXHAUSTED, lambda k: k["campaign"].update(redemptions=4)),
    ]
    seen = []
    for _reason, fix in fixes:
        result = ask(**kwargs)
        assert isinstance(result, Refusal)
        seen.append(result.reason)
        fix(kwargs)
    assert seen == [reason for reason, _ in fixes]
    assert isinstance(ask(**kwargs), DiscountResult)


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ask(now=datetime(2026, 3, 1, 12))
    # Any time zone is fine: it is the same instant.
    assert isinstance(ask(now=NOW.astimezone(timezone(timedelta(hours=9)))), DiscountResult)


# --- the refusal catalogue -----------------------------------------------------------------


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("reason", list(Reason))
def test_catalogue_is_complete(reason: Reason) -> None:
    info = CATALOGUE[reason]
    for locale, templates in MESSAGES.items():
        names = placeholders(templates[reason])
        assert names <= set(info.detail_keys), (reason, names)
        if names:
            assert not placeholders(PLAIN_MESSAGES[locale][reason])
    assert info.merchant_description


MASKED = {
    Reason.VOIDED,
    Reason.ALREADY_REDEEMED,
    Reason.USAGE_LIMIT_REACHED,
    Reason.EXPIRED,
    Reason.HELD_BY_OTHER_CHECKOUT,
    Reason.CAMPAIGN_DRAFT,
    Reason.CAMPAIGN_PAUSED,
    Reason.CAMPAIGN_ENDED,
    Reason.NOT_YET_VALID,
    Reason.CUSTOMER_REQUIRED,
    Reason.BOUND_TO_OTHER_CUSTOMER,
    Reason.BUDGET_EXHAUSTED,
}


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [(case[1], case[2]) for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_shopper_view(kwargs: dict[str, Any], reason: Reason) -> None:
    refusal = ask(**kwargs)
    assert isinstance(refusal, Refusal)
    assert shopper_view(refusal, detailed=True) == (refusal.message, refusal.details)
    assert public_reason(refusal, detailed=True) is reason
    if reason in MASKED:
        assert shopper_view(refusal, detailed=False) == (generic_message(), {})
        assert public_reason(refusal, detailed=False) is Reason.UNKNOWN_CODE
    else:
        assert shopper_view(refusal, detailed=False) == (refusal.message, refusal.details)
        assert public_reason(refusal, detailed=False) is reason


def test_masked_reasons_are_the_documented_ones() -> None:
    assert {reason for reason, info in CATALOGUE.items() if info.confirms_live_code} == MASKED


def test_generic_message_is_the_unknown_code_message() -> None:
    unknown = refuse(Reason.UNKNOWN_CODE)
    assert unknown.message == generic_message() == "We don't recognise this code. Check it and try again."
    assert shopper_view(unknown, detailed=False) == shopper_view(refuse(Reason.BOUND_TO_OTHER_CUSTOMER), False)


def test_typo_suggestions() -> None:
    unknown = refuse(Reason.UNKNOWN_CODE, suggestion="SPRING-7K2Q")
    assert unknown.message == "We don't recognise this code. Did you mean SPRING-7K2Q?"
    # A suggestion for an unknown code may come from a lookup of live codes: hidden in generic mode.
    assert shopper_view(unknown, detailed=False) == (generic_message(), {})
    mistyped = refuse(Reason.MISTYPED_CODE, suggestion="SPRING-7K2Q")
    assert shopper_view(mistyped, detailed=False) == (
        "This code looks mistyped. Did you mean SPRING-7K2Q?",
        {"suggestion": "SPRING-7K2Q"},
    )
    assert refuse(Reason.MISTYPED_CODE, suggestion=None).message == "This code looks mistyped. Check it and try again."


@pytest.mark.parametrize(
    ("reason", "details", "message"),
    [
        (Reason.EXPIRED, {"expired_at": "2026-03-01T23:30:00Z"}, "This code expired on 1 March 2026."),
        (Reason.EXPIRED, {}, "This code has expired."),
        (Reason.NOT_YET_VALID, {"starts_at": "2026-12-25T00:00:00Z"}, "This code can be used from 25 December 2026."),
        (
            Reason.CHANNEL_NOT_ALLOWED,
            {"channel": "online_store", "allowed_channels": ["pos", "mobile_app", "kiosk"]},
            "This code can't be used here. It's valid for: in-store (point of sale), the mobile app, kiosk.",
        ),
        (
            Reason.MINIMUM_SUBTOTAL_NOT_MET,
            {"minimum_subtotal": 5000, "subtotal": 1234, "missing_amount": 3766, "currency": "GBP"},
            "Spend £37.66 more on eligible items to use this code (minimum £50.00).",
        ),
        (
            Reason.MINIMUM_SUBTOTAL_NOT_MET,
            {"minimum_subtotal": 5000, "subtotal": 1234, "missing_amount": 3766},
            "Spend 3766 more on eligible items to use this code (minimum 5000).",
        ),
        (Reason.USAGE_LIMIT_REACHED, {"limit": 3, "uses": 3}, "This code has been used the maximum number of times (3)."),
        (Reason.EXPIRED, {"expired_at": "not a date"}, "This code has expired."),
    ],
)
def test_render(reason: Reason, details: dict[str, Any], message: str) -> None:
    assert render(reason, details) == message
    assert render(reason, details, locale="xx") == message  # unknown locales fall back to English


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (1250, "GBP", "£12.50"),
        (123456789, "GBP", "£1,234,567.89"),
        (120000, "JPY", "¥120,000"),
        (12345, "kwd", "12.345 KWD"),
        (-5, "EUR", "-€0.05"),
        (100, "CHF", "1.00 CHF"),
        (7, "USD", "$0.07"),
    ],
)
def test_format_money(amount: int, currency: str, shown: str) -> None:
    assert format_money(amount, currency) == shown


# --- exposure ------------------------------------------------------------------------------


def expose(
    rules: dict[str, Any],
    uses: int | None,
    counters: dict[str, int] | None = None,
    status: CampaignStatus = CampaignStatus.ACTIVE,
) -> Exposure:
    state = CampaignState(rules=make_rules(**rules), status=status, **(counters or {}))
    return exposure(state, [OpenUses(state.rules, uses)])


FIXED_500 = {"discount": {"type": "fixed", "amount": 500}}


@pytest.mark.parametrize(
    ("rules", "uses", "campaign", "expected"),
    [
        (FIXED_500, 100, {}, (True, 50000, "open_codes", ())),
        (FIXED_500, 0, {}, (True, 0, "open_codes", ())),
        ({**FIXED_500, "budget": {"max_redemptions": 30}}, 100, {"redemptions": 10}, (True, 10000, "redemption_budget", ())),
        ({**FIXED_500, "budget": {"max_redemptions": 30}}, 100, {"redemptions": 40}, (True, 0, "redemption_budget", ())),
        ({**FIXED_500, "budget": {"max_discount": 20000}}, 100, {"discount_given": 5000}, (True, 15000, "discount_budget", ())),
        ({**FIXED_500, "budget": {"max_discount": 20000}}, 10, {"discount_given": 5000}, (True, 5000, "open_codes", ())),
        (FIXED_500, None, {}, (False, None, None, ("unlimited_code_uses",))),
        ({**FIXED_500, "budget": {"max_redemptions": 50}}, None, {}, (True, 25000, "redemption_budget", ())),
        ({"discount": pct(10)}, 100, {}, (False, None, None, ("uncapped_percentage",))),
        ({"discount": pct(10, max_amount=1000)}, 3, {}, (True, 3000, "open_codes", ())),
        (
            {"discount": pct(10), "budget": {"max_discount": 50000}},
            100,
            {"discount_given": 10000},
            (True, 40000, "discount_budget", ()),
        ),
        ({"discount": pct(10)}, None, {}, (False, None, None, ("unlimited_code_uses", "uncapped_percentage"))),
        ({"discount": {"type": "free_shipping"}}, 5, {}, (False, None, None, ("uncapped_free_shipping",))),
        ({"discount": tiers((5000, 10))}, 5, {}, (False, None, None, ("uncapped_tier",))),
        (
            {"discount": {"type": "bundle", "buy_quantity": 1, "get_quantity": 1}},
            5,
            {},
            (False, None, None, ("uncapped_bundle",)),
        ),
    ],
)
def test_exposure(rules: dict[str, Any], uses: int | None, campaign: dict[str, int], expected: tuple[Any, ...]) -> None:
    result = expose(rules, uses, campaign)
    assert (result.bounded, result.amount, result.limited_by, result.unbounded_because) == expected
    assert result.currency == "GBP"


def test_exposure_of_an_ended_campaign_is_zero() -> None:
    result = expose({"discount": pct(10)}, None, status=CampaignStatus.ENDED)
    assert (result.bounded, result.amount, result.limited_by) == (True, 0, "campaign_ended")
    state = CampaignState(rules=make_rules(**FIXED_500, time={"ends_at": NOW}), status=CampaignStatus.ACTIVE)
    assert exposure(state, [OpenUses(state.rules, 10)], now=NOW).limited_by == "campaign_ended"
    assert exposure(state, [OpenUses(state.rules, 10)], now=NOW - HOUR).amount == 5000


def test_exposure_spends_the_redemption_budget_on_the_dearest_batches_first() -> None:
    campaign_rules = make_rules(**FIXED_500, budget={"max_redemptions": 20})
    state = CampaignState(rules=campaign_rules, status=CampaignStatus.PAUSED, redemptions=12)
    vip = apply_override(campaign_rules, RulesOverride.model_validate({"discount": {"type": "fixed", "amount": 2000}}))
    result = exposure(state, [OpenUses(campaign_rules, 10), OpenUses(vip, 5)])
    assert (result.amount, result.limited_by) == (5 * 2000 + 3 * 500, "redemption_budget")
    result = exposure(dataclasses.replace(state, redemptions=0), [OpenUses(campaign_rules, 10), OpenUses(vip, 5)])
    assert (result.amount, result.limited_by) == (5 * 2000 + 10 * 500, "open_codes")
