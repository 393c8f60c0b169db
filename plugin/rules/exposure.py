"""Exposure: the most a campaign can still cost, shown in the admin next to its budget.

    exposure = min(open uses * the most one use can give,   # summed per batch ("open_codes")
                   remaining money budget)                   # ("discount_budget")

where the open uses are capped by the remaining redemption budget, spent on the most
expensive uses first ("redemption_budget"). "Open uses" are the uses the caller counts on
live codes: not voided, not expired, `uses_per_code - uses` each (None for codes without a
per-code limit). An ended campaign costs nothing more: status `ended`, or, when `now` is
given, a campaign whose `ends_at` has passed.

When no bound applies the answer is `bounded=False` with the causes in `unbounded_because`:
`uncapped_percentage`, `uncapped_free_shipping`, `uncapped_bundle`, `uncapped_tier` (a
discount that grows with the basket and has no `max_amount`) and `unlimited_code_uses`
(codes without a per-code limit and no redemption budget).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from plugin.rules.context import CampaignState
from plugin.rules.discounts import discount_cap
from plugin.rules.model import CampaignRules, CampaignStatus, Discount

__all__ = ["Exposure", "OpenUses", "exposure"]

LimitedBy = Literal["open_codes", "redemption_budget", "discount_budget", "campaign_ended"]


@dataclass(frozen=True, slots=True)
class OpenUses:
    """Uses still open on live codes that share the same effective rules (one per batch).

    `rules` are the batch's effective rules (`apply_override`); `uses` the sum over its live
    codes of uses left, or None when some live code has no per-code limit.
    """

    rules: CampaignRules
    uses: int | None


class Exposure(BaseModel):
    """The most the campaign can still cost (`amount`, minor units of `currency`), or why not."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bounded: bool
    amount: int | None
    currency: str | None
    limited_by: LimitedBy | None = None
    unbounded_because: tuple[str, ...] = ()


def _uncapped(discount: Discount) -> str:
    return f"uncapped_{'tier' if discount.type == 'tiered' else discount.type}"


def exposure(campaign: CampaignState, open_uses: Sequence[OpenUses], *, now: datetime | None = None) -> Exposure:
    """The maximum discount `campaign` can still give through its open code uses."""
    rules = campaign.rules
    currency = rules.currency
    ends_at = rules.time.ends_at
    if campaign.status is CampaignStatus.ENDED or (now is not None and ends_at is not None and now >= ends_at):
        return Exposure(bounded=True, amount=0, currency=currency, limited_by="campaign_ended")

    budget = rules.budget
    money_left = None if budget.max_discount is None else max(budget.max_discount - campaign.discount_given, 0)
    uses_left = None if budget.max_redemptions is None else max(budget.max_redemptions - campaign.redemptions, 0)

    # Most expensive uses first; None (no cap) sorts first.
    groups = [(discount_cap(group.rules.discount), group) for group in open_uses if group.uses != 0]
    groups.sort(key=lambda pair: -1 if pair[0] is None else -pair[0])
    causes: list[str] = []
    from_codes = 0
    budget_cut = False
    remaining = uses_left
    for cap, group in groups:
        if remaining == 0:
            budget_cut = True
            break
        uses = group.uses if remaining is None else remaining if group.uses is None else min(group.uses, remaining)
        if remaining is not None and (group.uses is None or group.uses > remaining):
            budget_cut = True
        if uses is None:
            causes.append("unlimited_code_uses")
        if cap is None:
            causes.append(_uncapped(group.rules.discount))
        if uses is not None and cap is not None:
            from_codes += uses * cap
        if remaining is not None and uses is not None:
            remaining -= uses

    if causes:
        if money_left is not None:
            return Exposure(bounded=True, amount=money_left, currency=currency, limited_by="discount_budget")
        return Exposure(bounded=False, amount=None, currency=currency, unbounded_because=tuple(dict.fromkeys(causes)))
    if money_left is not None and money_left < from_codes:
        return Exposure(bounded=True, amount=money_left, currency=currency, limited_by="discount_budget")
    limited_by: LimitedBy = "redemption_budget" if budget_cut else "open_codes"
    return Exposure(bounded=True, amount=from_codes, currency=currency, limited_by=limited_by)
