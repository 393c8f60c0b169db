"""What evaluation looks at besides the rules: the code, the campaign, the customer, the basket.

`Basket`, `BasketLine` and `Customer` are pydantic models because checkouts send them through
the JSON API; `CodeState` and `CampaignState` are plain dataclasses that services build from
database rows, on every validation: not frozen, as a frozen dataclass's __init__ costs ~5x a
plain one's, but evaluation never changes them.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from plugin.rules.model import Amount, CampaignRules, CampaignStatus, Currency, Flag, Ident, RulesOverride

__all__ = ["Basket", "BasketLine", "CampaignState", "CodeState", "Customer", "normalise_email"]


def normalise_email(email: str | None) -> str | None:
    """Emails compare stripped and lower-cased; an empty one is no email."""
    if email is None:
        return None
    email = email.strip().lower()
    return email or None


def _email(value: Any) -> Any:
    return normalise_email(value) if isinstance(value, str) else value


Email = Annotated[Annotated[str, StringConstraints(max_length=320)] | None, BeforeValidator(_email)]
Quantity = Annotated[int, Field(strict=True, gt=0, le=10**9)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BasketLine(_Frozen):
    """One basket line: `quantity` units at `unit_price` (minor units, before this discount)."""

    line_id: Annotated[str, StringConstraints(max_length=255)] | None = None
    product_id: Ident
    variant_id: Ident | None = None
    sku: Ident | None = None
    collection_ids: tuple[Ident, ...] = ()
    quantity: Quantity
    unit_price: Amount

    @property
    def total(self) -> int:
        return self.quantity * self.unit_price


class Basket(_Frozen):
    """A checkout's basket as the checkout sends it.

    `applied_codes` are the other codes already on the basket, normalised (the code being
    evaluated may be among them; it is ignored). `has_automatic_discounts` says whether the
    shop's automatic discounts apply to this basket.
    """

    currency: Currency
    lines: tuple[BasketLine, ...] = Field(default=(), max_length=1000)
    shipping_amount: Amount = 0
    applied_codes: tuple[Ident, ...] = Field(default=(), max_length=100)
    has_automatic_discounts: Flag = False


class Customer(_Frozen):
    """Who is checking out, as far as the caller knows.

    `orders_count` counts the customer's earlier orders (None: unknown, e.g. a guest whose
    history was not looked up). `campaign_uses` counts this customer's redemptions in the
    campaign so far (by id, or by normalised email for guests).
    """

    id: Ident | None = None
    email: Email = None
    orders_count: Annotated[int, Field(strict=True, ge=0)] | None = None
    campaign_uses: Annotated[int, Field(strict=True, ge=0)] = 0

    @property
    def is_first_order(self) -> bool | None:
        return None if self.orders_count is None else self.orders_count == 0

    @property
    def is_identified(self) -> bool:
        return self.id is not None or self.email is not None


@dataclass(slots=True)
class CodeState:
    """A code as stored: its batch override, uses, binding, times and hold.

    `code` is the normalised code. `expires_at` is an explicit per-code expiry, if any.
    `held_by_other_checkout` is true when another checkout holds an unexpired reservation.
    """

    code: str
    issued_at: datetime
    uses: int = 0
    voided: bool = False
    bound_customer_id: str | None = None
    bound_email: str | None = None
    assigned_at: datetime | None = None
    expires_at: datetime | None = None
    held_by_other_checkout: bool = False
    override: RulesOverride | None = None


@dataclass(slots=True)
class CampaignState:
    """A campaign as stored: its rules, status and counters (redemptions, discount given)."""

    rules: CampaignRules
    status: CampaignStatus
    redemptions: int = 0
    discount_given: int = 0
