"""Campaign rules and their evaluation: pure core (no I/O, no database, no clock).

    model       CampaignRules and its parts (pydantic: API input, DB JSON, OpenAPI schema),
                RulesOverride for batches, apply_override
    context     what evaluation looks at: CodeState, CampaignState, Customer, Basket
    discounts   the arithmetic: compute_discount, max_discount_per_use (rounding documented)
    evaluation  evaluate (the order of checks is documented there), code_expires_at and the
                stage checks the redemption path reuses
    exposure    the most a campaign can still cost

Refusal reasons and their shopper messages live in `plugin.rules.refusals`; `Refusal`,
`Reason` and `shopper_view` are re-exported here for convenience.
"""

from plugin.rules.context import Basket, BasketLine, CampaignState, CodeState, Customer, normalise_email
from plugin.rules.discounts import (
    DiscountResult,
    LineAllocation,
    allocate,
    compute_discount,
    discount_cap,
    eligible_line_indexes,
    max_discount_per_use,
    round_half_up,
)
from plugin.rules.evaluation import (
    budget_refusal,
    campaign_refusal,
    code_expires_at,
    code_refusal,
    customer_refusal,
    evaluate,
)
from plugin.rules.exposure import Exposure, OpenUses, exposure
from plugin.rules.model import (
    KNOWN_CHANNELS,
    BasketRules,
    Budget,
    BundleDiscount,
    CampaignRules,
    CampaignStatus,
    Discount,
    DistributionRules,
    FixedDiscount,
    FreeShippingDiscount,
    ItemSelector,
    PercentageDiscount,
    RelativeExpiry,
    RulesOverride,
    StackingRules,
    Tier,
    TieredDiscount,
    TimeRules,
    UsageRules,
    apply_override,
)
from plugin.rules.refusals import Reason, Refusal, public_reason, shopper_view

__all__ = [
    "KNOWN_CHANNELS",
    "Basket",
    "BasketLine",
    "BasketRules",
    "Budget",
    "BundleDiscount",
    "CampaignRules",
    "CampaignState",
    "CampaignStatus",
    "CodeState",
    "Customer",
    "Discount",
    "DiscountResult",
    "DistributionRules",
    "Exposure",
    "FixedDiscount",
    "FreeShippingDiscount",
    "ItemSelector",
    "LineAllocation",
    "OpenUses",
    "PercentageDiscount",
    "Reason",
    "Refusal",
    "RelativeExpiry",
    "RulesOverride",
    "StackingRules",
    "Tier",
    "TieredDiscount",
    "TimeRules",
    "UsageRules",
    "allocate",
    "apply_override",
    "budget_refusal",
    "campaign_refusal",
    "code_expires_at",
    "code_refusal",
    "compute_discount",
    "customer_refusal",
    "discount_cap",
    "eligible_line_indexes",
    "evaluate",
    "exposure",
    "max_discount_per_use",
    "normalise_email",
    "public_reason",
    "round_half_up",
    "shopper_view",
]
