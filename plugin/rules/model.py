"""The rules a merchant sets on a campaign, as pydantic models.

The same models validate the JSON API's input, are stored as JSON in the database
(`rules.model_dump(mode="json")`, read back with `CampaignRules.model_validate(data)`) and
give the OpenAPI document its schemas. All are frozen and reject unknown fields.

Conventions: money is an integer in minor units of `CampaignRules.currency` (never a float:
`50.0` is refused); percentages are decimals with up to 4 places (`"33.333"`; serialised
as strings so they round-trip exactly); instants are timezone-aware and kept in UTC; ids,
SKUs and collection ids are strings, stored de-duplicated and sorted so the JSON is stable.
"""

import enum
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from itertools import pairwise
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from typing_extensions import TypedDict

__all__ = [
    "KNOWN_CHANNELS",
    "Amount",
    "BasketRules",
    "Budget",
    "BundleDiscount",
    "CampaignRules",
    "CampaignStatus",
    "Channel",
    "Currency",
    "Discount",
    "DistributionRules",
    "FixedDiscount",
    "FreeShippingDiscount",
    "ItemSelector",
    "PercentageDiscount",
    "RelativeExpiry",
    "RulesOverride",
    "StackingRules",
    "Tier",
    "TieredDiscount",
    "TimeRules",
    "UsageRules",
    "apply_override",
]

MAX_MINOR: Final = 10**15  # stays an exact JSON number (< 2**53) everywhere


def _no_number(value: Any) -> Any:
    if isinstance(value, int | float):
        raise ValueError("expected an ISO 8601 date-time string with a time zone, e.g. 2026-03-01T00:00:00Z")
    return value


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _unique_sorted(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


Currency = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z]{3}$"),
    AfterValidator(str.upper),
    Field(description="ISO 4217 currency code, e.g. GBP, EUR, JPY.", examples=["GBP"]),
]
Amount = Annotated[int, Field(strict=True, ge=0, le=MAX_MINOR, description="Money in minor units.")]
PositiveAmount = Annotated[int, Field(strict=True, gt=0, le=MAX_MINOR, description="Money in minor units.")]
Count = Annotated[int, Field(strict=True, gt=0, le=10**9)]
Percent = Annotated[
    Decimal,
    Field(gt=0, le=100, max_digits=7, decimal_places=4, description="Percent, 0 < p <= 100, up to 4 places."),
]
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_no_number), AfterValidator(_to_utc)]
Flag = Annotated[bool, Field(strict=True)]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=255)]
IdSet = Annotated[tuple[Ident, ...], AfterValidator(_unique_sorted), Field(max_length=10_000)]
Channel = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"),
    AfterValidator(str.lower),
    Field(description="A sales channel: a free lower-case string; see KNOWN_CHANNELS."),
]

KNOWN_CHANNELS: Final = {
    "online_store": "The shop's own web storefront (the platform checkout or a custom one).",
    "pos": "Point of sale in a physical store.",
    "mobile_app": "The shop's mobile app.",
    "marketplace": "Third-party marketplaces (Amazon, eBay, ...).",
    "partner": "Partner, affiliate or reseller sites redeeming through the API.",
    "social": "Social commerce (Instagram, TikTok shops, ...).",
    "phone": "Orders taken by phone or by staff (draft orders).",
    "b2b": "Wholesale / B2B checkout.",
}
"""Documented channel names. Channels are free strings: a shop may use others."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CampaignStatus(enum.StrEnum):
    """A campaign's life cycle; only `active` campaigns accept codes."""

    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    ENDED = "ended"


class ItemSelector(_Frozen):
    """Matches a basket line whose product, variant, SKU or any collection is listed."""

    product_ids: IdSet = ()
    variant_ids: IdSet = ()
    skus: IdSet = ()
    collection_ids: IdSet = ()

    def is_empty(self) -> bool:
        return not (self.product_ids or self.variant_ids or self.skus or self.collection_ids)

    @cached_property
    def _sets(self) -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
        return (
            frozenset(self.product_ids),
            frozenset(self.variant_ids),
            frozenset(self.skus),
            frozenset(self.collection_ids),
        )

    def matches(self, product_id: str, variant_id: str | None, sku: str | None, collection_ids: tuple[str, ...]) -> bool:
        products, variants, skus, collections = self._sets
        return (
            product_id in products
            or (variant_id is not None and variant_id in variants)
            or (sku is not None and sku in skus)
            or not collections.isdisjoint(collection_ids)
        )


def _require_items(selector: ItemSelector | None, name: str) -> ItemSelector | None:
    if selector is not None and selector.is_empty():
        raise ValueError(
            f"{name} must list at least one product, variant, SKU or collection (leave it out to mean every eligible item)"
        )
    return selector


# --- discounts ---------------------------------------------------------------------------


class PercentageDiscount(_Frozen):
    """`percent` off the eligible lines, optionally capped at `max_amount` per use."""

    type: Literal["percentage"] = "percentage"
    percent: Percent
    max_amount: PositiveAmount | None = None


class FixedDiscount(_Frozen):
    """`amount` off the eligible lines; never more than their subtotal."""

    type: Literal["fixed"] = "fixed"
    amount: PositiveAmount


class FreeShippingDiscount(_Frozen):
    """The basket's shipping amount off, optionally capped at `max_amount`."""

    type: Literal["free_shipping"] = "free_shipping"
    max_amount: PositiveAmount | None = None


Reward = Annotated[PercentageDiscount | FixedDiscount, Field(discriminator="type")]


class Tier(_Frozen):
    """From an eligible subtotal of `min_subtotal` (inclusive) on, the reward applies."""

    min_subtotal: Amount
    reward: Reward


class TieredDiscount(_Frozen):
    """Spend thresholds with rising rewards; the highest tier reached applies.

    Tiers must be listed with strictly rising `min_subtotal`; consecutive tiers of the same
    kind must not lower the reward. Below the first tier the code is refused with
    `minimum_subtotal_not_met`.
    """

    type: Literal["tiered"] = "tiered"
    tiers: tuple[Tier, ...] = Field(min_length=1, max_length=50)

    @field_validator("tiers")
    @classmethod
    def _rising(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        for number, (low, high) in enumerate(pairwise(tiers), start=2):
            if high.min_subtotal <= low.min_subtotal:
                raise ValueError(
                    f"tier thresholds must rise: tier {number} starts at {high.min_subtotal}, "
                    f"not above tier {number - 1} ({low.min_subtotal})"
                )
            lower, upper = low.reward, high.reward
            if (
                isinstance(lower, PercentageDiscount) and isinstance(upper, PercentageDiscount) and upper.percent < lower.percent
            ) or (isinstance(lower, FixedDiscount) and isinstance(upper, FixedDiscount) and upper.amount < lower.amount):
                raise ValueError(f"tier rewards must not fall: tier {number} gives less than tier {number - 1}")
        return tiers


class BundleDiscount(_Frozen):
    """Buy `buy_quantity` items from `buy`, get `get_quantity` items from `get` at `percent_off`.

    `buy`/`get` narrow the campaign's eligible lines; `buy=None` means any eligible item and
    `get=None` means the same set as `buy`. The offer repeats for every full set in the basket
    (up to `max_applications` per use) and the cheapest qualifying items are the ones
    discounted; `max_amount` caps the discount per use.
    """

    type: Literal["bundle"] = "bundle"
    buy: ItemSelector | None = None
    buy_quantity: Count
    get: ItemSelector | None = None
    get_quantity: Count
    percent_off: Percent = Decimal(100)
    max_applications: Count | None = None
    max_amount: PositiveAmount | None = None

    @field_validator("buy", "get")
    @classmethod
    def _not_empty(cls, value: ItemSelector | None, info: ValidationInfo) -> ItemSelector | None:
        return _require_items(value, str(info.field_name))


Discount = Annotated[
    PercentageDiscount | FixedDiscount | FreeShippingDiscount | TieredDiscount | BundleDiscount,
    Field(discriminator="type"),
]


# --- the other rule groups --------------------------------------------------------------


class RelativeExpiry(_Frozen):
    """Each code expires `duration` `unit`s after it was issued or assigned to a recipient.

    With `after="assignment"` the clock starts when the code is assigned; an unassigned code
    has no relative expiry yet.
    """

    after: Literal["issue", "assignment"]
    duration: Annotated[int, Field(strict=True, gt=0, le=100_000)]
    unit: Literal["hours", "days"]

    def delta(self) -> timedelta:
        return timedelta(hours=self.duration) if self.unit == "hours" else timedelta(days=self.duration)


class TimeRules(_Frozen):
    """The campaign window `[starts_at, ends_at)` and the codes' relative expiry."""

    starts_at: UtcDatetime | None = None
    ends_at: UtcDatetime | None = None
    relative_expiry: RelativeExpiry | None = None

    @model_validator(mode="after")
    def _window(self) -> "TimeRules":
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class UsageRules(_Frozen):
    """How often a code and a customer may be used; `None` means unlimited."""

    uses_per_code: Count | None = 1
    uses_per_customer: Count | None = None
    first_order_only: Flag = False


class BasketRules(_Frozen):
    """Which lines are eligible and what the eligible part of the basket must reach.

    A line is eligible when it matches `eligible` (or `eligible` is left out) and does not
    match `excluded`; exclusion wins. Minimums count eligible lines only.
    """

    minimum_subtotal: PositiveAmount | None = None
    minimum_quantity: Count | None = None
    eligible: ItemSelector | None = None
    excluded: ItemSelector = ItemSelector()

    @field_validator("eligible")
    @classmethod
    def _not_empty(cls, value: ItemSelector | None) -> ItemSelector | None:
        return _require_items(value, "eligible")


class StackingRules(_Frozen):
    """Whether a code of this campaign combines with other codes or automatic discounts."""

    with_other_codes: Flag = False
    with_automatic_discounts: Flag = True


class Budget(_Frozen):
    """Campaign-wide caps: total redemptions and total discount given (minor units)."""

    max_redemptions: Count | None = None
    max_discount: PositiveAmount | None = None


class DistributionRules(_Frozen):
    """What a claim does to the code it hands out.

    `claim`: the code becomes the recipient's alone — their email or customer id is bound to it,
    so validation refuses anyone else and a platform order by anyone else is flagged (a phone
    recipient binds nothing a checkout can check). `shareable` (the default, as before this
    rule existed): the code is a gift the recipient may pass on; whoever enters it may use it.
    `remind_days_before_expiry`: see plugin.distribution.reminders.
    """

    binding: Literal["claim", "shareable"] = "shareable"
    # N days before a recipient's code expires unused, the provider that delivered it is told
    # (plugin.distribution.reminders), so the merchant's own flow can remind them; None: never
    remind_days_before_expiry: Annotated[int, Field(strict=True, ge=1, le=365)] | None = None


def _channels(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("allowed_channels must list at least one channel (leave it out to allow every channel)")
    return _unique_sorted(value)


Channels = Annotated[tuple[Channel, ...] | None, AfterValidator(_channels)]


class CampaignRules(_Frozen):
    """Everything a campaign's codes must satisfy and what they give.

    `currency` may be left out only when the rules hold no money amount (e.g. an uncapped
    percentage), in which case the code works in any currency.
    """

    version: Literal[1] = 1
    currency: Currency | None = None
    discount: Discount
    time: TimeRules = TimeRules()
    usage: UsageRules = UsageRules()
    basket: BasketRules = BasketRules()
    allowed_channels: Channels = None
    stacking: StackingRules = StackingRules()
    budget: Budget = Budget()
    distribution: DistributionRules = DistributionRules()
    # what a cancelled, refunded or failed order does to its code: give the use back,
    # give the same recipient a fresh code, or leave the code consumed
    on_cancel: Literal["restore", "reissue", "keep"] = "restore"

    @model_validator(mode="after")
    def _currency_for_money(self) -> "CampaignRules":
        if self.currency is None and (paths := self.money_paths()):
            raise ValueError(
                f"currency is required because the rules hold money amounts ({', '.join(paths)}); "
                "amounts are in minor units of that currency"
            )
        return self

    def money_paths(self) -> list[str]:
        """Where the rules hold money amounts (which need a currency)."""
        paths: list[str] = []
        d = self.discount
        if isinstance(d, FixedDiscount):
            paths.append("discount.amount")
        if isinstance(d, PercentageDiscount | FreeShippingDiscount | BundleDiscount) and d.max_amount:
            paths.append("discount.max_amount")
        if isinstance(d, TieredDiscount):
            for i, tier in enumerate(d.tiers):
                if tier.min_subtotal:
                    paths.append(f"discount.tiers[{i}].min_subtotal")
                if isinstance(tier.reward, FixedDiscount):
                    paths.append(f"discount.tiers[{i}].reward.amount")
                elif tier.reward.max_amount:
                    paths.append(f"discount.tiers[{i}].reward.max_amount")
        if self.basket.minimum_subtotal:
            paths.append("basket.minimum_subtotal")
        if self.budget.max_discount:
            paths.append("budget.max_discount")
        return paths


class RulesOverrideData(TypedDict, total=False):
    """The serialised form of a RulesOverride: only the fields given."""

    discount: Discount
    relative_expiry: RelativeExpiry | None
    uses_per_code: int | None
    allowed_channels: tuple[str, ...] | None


class RulesOverride(_Frozen):
    """The rules a batch may set differently from its campaign; fields left out inherit.

    Only fields given explicitly override, so `{"uses_per_code": null}` makes the batch's
    codes unlimited while `{}` keeps the campaign's limit. Serialising (`model_dump`,
    `model_dump_json`) writes only the given fields, so the distinction survives the database.
    """

    discount: Discount | None = None
    relative_expiry: RelativeExpiry | None = None
    uses_per_code: Count | None = None
    allowed_channels: Channels = None

    @model_validator(mode="after")
    def _discount_not_null(self) -> "RulesOverride":
        if "discount" in self.model_fields_set and self.discount is None:
            raise ValueError("discount can't be null in an override (leave it out to keep the campaign's)")
        return self

    @model_serializer(mode="plain")
    def _only_given(self) -> RulesOverrideData:
        given = self.model_fields_set
        data: RulesOverrideData = {}
        if "discount" in given and self.discount is not None:
            data["discount"] = self.discount
        if "relative_expiry" in given:
            data["relative_expiry"] = self.relative_expiry
        if "uses_per_code" in given:
            data["uses_per_code"] = self.uses_per_code
        if "allowed_channels" in given:
            data["allowed_channels"] = self.allowed_channels
        return data


def apply_override(rules: CampaignRules, override: RulesOverride | None) -> CampaignRules:
    """The campaign's rules with a batch's override applied, validated as a whole.

    Raises `pydantic.ValidationError` when the combination is invalid (e.g. a fixed amount
    for a campaign without a currency); services should call it when a batch is saved.
    """
    if override is None or not override.model_fields_set:
        return rules
    given = override.model_fields_set
    data = rules.model_dump()
    if "discount" in given:
        data["discount"] = override.discount
    if "relative_expiry" in given:
        data["time"]["relative_expiry"] = override.relative_expiry
    if "uses_per_code" in given:
        data["usage"]["uses_per_code"] = override.uses_per_code
    if "allowed_channels" in given:
        data["allowed_channels"] = override.allowed_channels
    return CampaignRules.model_validate(data)
