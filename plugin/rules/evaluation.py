"""Evaluating a code against its campaign's rules: one deterministic answer.

`evaluate` runs the stages below in this order and returns the first refusal, or the
discount (`DiscountResult`). Within a stage, checks run in the order listed.

1. Code (`code_refusal`): voided → per-code uses (`already_redeemed` when the limit is 1,
   else `usage_limit_reached`) → expired (the earliest of the code's explicit expiry, its
   relative expiry and the campaign's `ends_at`; a code is expired from that instant on) →
   `held_by_other_checkout`.
2. Campaign (`campaign_refusal`): status (`campaign_draft`, `campaign_paused`,
   `campaign_ended`) → `not_yet_valid` (before `starts_at`) → `channel_not_allowed` (an
   unknown channel is refused when the campaign restricts channels).
3. Customer (`customer_refusal`): binding → per-customer limit → first order. A bound code
   is decided by the customer id when the code is bound to an id and the checkout sent one,
   else by the normalised email; with neither comparable, `customer_required`. The same
   refusal comes when a per-customer limit or first-order rule needs a customer the checkout
   did not identify (or whose order history is unknown).
4. Basket (`compute_discount`): currency → stacking → eligible items → minimum quantity →
   minimum subtotal → lowest tier / complete bundle.
5. Budget (`budget_refusal`): redemption count, then money. Advisory: the database enforces
   both atomically on redemption (`redemptions < max_redemptions` and
   `discount_given + amount <= max_discount` in one conditional update). A discount that
   would exceed the money left is refused, not shrunk.

`unknown_code` and `mistyped_code` are decided by the caller before evaluation.
"""

from datetime import datetime

from plugin.rules.context import Basket, CampaignState, CodeState, Customer, normalise_email
from plugin.rules.discounts import DiscountResult, compute_discount
from plugin.rules.model import CampaignRules, CampaignStatus, apply_override
from plugin.rules.refusals import Reason, Refusal, iso_utc, refuse

__all__ = [
    "budget_refusal",
    "campaign_refusal",
    "code_expires_at",
    "code_refusal",
    "customer_refusal",
    "evaluate",
]

_STATUS_REASONS = {
    CampaignStatus.DRAFT: Reason.CAMPAIGN_DRAFT,
    CampaignStatus.PAUSED: Reason.CAMPAIGN_PAUSED,
    CampaignStatus.ENDED: Reason.CAMPAIGN_ENDED,
}


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (UTC)")


def code_expires_at(
    rules: CampaignRules, issued_at: datetime, assigned_at: datetime | None, explicit: datetime | None
) -> datetime | None:
    """When a code stops working: the earliest of its explicit expiry, its relative expiry
    (from issue, or from assignment once assigned) and the campaign's `ends_at`; None if none.

    `rules` are the code's effective rules (batch override applied).
    """
    candidates = [moment for moment in (explicit, rules.time.ends_at) if moment is not None]
    relative = rules.time.relative_expiry
    if relative is not None:
        anchor = issued_at if relative.after == "issue" else assigned_at
        if anchor is not None:
            candidates.append(anchor + relative.delta())
    return min(candidates) if candidates else None


def code_refusal(code: CodeState, rules: CampaignRules, now: datetime) -> Refusal | None:
    """Stage 1: the code itself (voided, used up, expired, held)."""
    if code.voided:
        return refuse(Reason.VOIDED)
    limit = rules.usage.uses_per_code
    if limit is not None and code.uses >= limit:
        if limit == 1:
            return refuse(Reason.ALREADY_REDEEMED)
        return refuse(Reason.USAGE_LIMIT_REACHED, limit=limit, uses=code.uses)
    expires_at = code_expires_at(rules, code.issued_at, code.assigned_at, code.expires_at)
    if expires_at is not None and now >= expires_at:
        return refuse(Reason.EXPIRED, expired_at=iso_utc(expires_at))
    if code.held_by_other_checkout:
        return refuse(Reason.HELD_BY_OTHER_CHECKOUT)
    return None


def campaign_refusal(status: CampaignStatus, rules: CampaignRules, channel: str | None, now: datetime) -> Refusal | None:
    """Stage 2: campaign status, start, and channel."""
    if status in _STATUS_REASONS:
        return refuse(_STATUS_REASONS[status])
    starts_at = rules.time.starts_at
    if starts_at is not None and now < starts_at:
        return refuse(Reason.NOT_YET_VALID, starts_at=iso_utc(starts_at))
    allowed = rules.allowed_channels
    if allowed is not None:
        normalised = channel.strip().lower() if channel else None
        if normalised not in allowed:
            return refuse(Reason.CHANNEL_NOT_ALLOWED, channel=normalised, allowed_channels=list(allowed))
    return None


def customer_refusal(code: CodeState, rules: CampaignRules, customer: Customer | None) -> Refusal | None:
    """Stage 3: binding, per-customer limit, first order."""
    who = customer or Customer()
    bound_email = normalise_email(code.bound_email)
    if code.bound_customer_id is not None and who.id is not None:
        if who.id != code.bound_customer_id:
            return refuse(Reason.BOUND_TO_OTHER_CUSTOMER)
    elif bound_email is not None and who.email is not None:
        if who.email != bound_email:
            return refuse(Reason.BOUND_TO_OTHER_CUSTOMER)
    elif code.bound_customer_id is not None or bound_email is not None:
        requires = "customer_id" if bound_email is None else "email" if code.bound_customer_id is None else "customer"
        return refuse(Reason.CUSTOMER_REQUIRED, requires=requires, because="bound")

    usage = rules.usage
    if usage.uses_per_customer is not None:
        if not who.is_identified:
            return refuse(Reason.CUSTOMER_REQUIRED, requires="customer", because="uses_per_customer")
        if who.campaign_uses >= usage.uses_per_customer:
            return refuse(Reason.CUSTOMER_LIMIT_REACHED, limit=usage.uses_per_customer, uses=who.campaign_uses)
    if usage.first_order_only:
        if who.is_first_order is None:
            return refuse(Reason.CUSTOMER_REQUIRED, requires="customer", because="first_order_only")
        if not who.is_first_order:
            return refuse(Reason.FIRST_ORDER_ONLY)
    return None


def budget_refusal(rules: CampaignRules, redemptions: int, discount_given: int, amount: int) -> Refusal | None:
    """Stage 5: would one more redemption of `amount` stay within the campaign's budget?"""
    budget = rules.budget
    if budget.max_redemptions is not None and redemptions >= budget.max_redemptions:
        return refuse(Reason.BUDGET_EXHAUSTED, budget="redemptions")
    if budget.max_discount is not None and discount_given + amount > budget.max_discount:
        return refuse(Reason.BUDGET_EXHAUSTED, budget="discount")
    return None


def evaluate(
    *,
    code: CodeState,
    campaign: CampaignState,
    customer: Customer | None,
    basket: Basket,
    channel: str | None,
    now: datetime,
) -> DiscountResult | Refusal:
    """Evaluate a known code for a checkout: the discount it gives, or why it can't be used.

    The code's batch override (`code.override`) is applied to the campaign's rules first.
    `now` must be timezone-aware. Pure: no I/O, no clock.
    """
    _require_aware(now)
    rules = apply_override(campaign.rules, code.override)
    refusal = (
        code_refusal(code, rules, now)
        or campaign_refusal(campaign.status, rules, channel, now)
        or customer_refusal(code, rules, customer)
    )
    if refusal is not None:
        return refusal
    result = compute_discount(rules, basket, this_code=code.code)
    if isinstance(result, Refusal):
        return result
    return budget_refusal(rules, campaign.redemptions, campaign.discount_given, result.amount) or result
