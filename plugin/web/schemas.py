"""Request and response bodies of the JSON API (pydantic: validation and the OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from plugin.codes import CodeFormat
from plugin.rules import Basket, CampaignRules, Customer, DiscountResult, RulesOverride

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
TypedCode = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Channel = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=64)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CampaignCreate(_In):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$")] = "USD"
    code_format: CodeFormat = CodeFormat()
    rules: CampaignRules | None = None
    status: Literal["draft", "active", "paused"] = "active"


class CampaignUpdate(_In):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = None
    rules: CampaignRules | None = None


class CampaignOut(BaseModel):
    id: int
    name: str
    status: str
    currency: str
    code_format: dict[str, Any]
    rules: dict[str, Any] | None
    codes: int
    redemptions: int
    discount_total: int
    entropy_bits: float
    guess_probability: float = Field(description="Chance an attacker at our rate limit finds a live code within a year.")
    exposure: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


class CampaignList(BaseModel):
    data: list[CampaignOut]
    count: int


class BatchCreate(_In):
    count: Annotated[int, Field(strict=True, ge=1, le=10_000_000)]
    rules_override: RulesOverride | None = None


class BatchOut(BaseModel):
    id: int
    campaign_id: int
    source: str
    status: str
    requested: int
    created: int
    progress: float
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class ValidateRequest(_In):
    code: TypedCode
    basket: Basket
    customer: Customer | None = None
    channel: Channel | None = None
    checkout_id: Text | None = None


class ShopperView(BaseModel):
    reason: str
    message: str
    details: dict[str, Any]


class Decision(BaseModel):
    valid: bool
    code: str | None
    campaign_id: int | None
    discount: DiscountResult | None = None
    reason: str | None = Field(default=None, description="The exact refusal reason, for the merchant's systems.")
    message: str | None = None
    details: dict[str, Any] | None = None
    shopper: ShopperView | None = Field(default=None, description="What to show the shopper, per the shop's setting.")


class ReservationRequest(_In):
    code: TypedCode
    checkout_id: Text
    ttl_seconds: Annotated[int, Field(strict=True, ge=30, le=86_400)] = 900
    basket: Basket | None = None
    customer: Customer | None = None
    channel: Channel | None = None


class ReservationOut(BaseModel):
    id: int
    code: str
    checkout_id: str
    expires_at: datetime
    released_at: datetime | None
    active: bool


class RedemptionRequest(_In):
    code: TypedCode
    order_id: Text
    basket: Basket
    customer: Customer | None = None
    channel: Channel | None = None
    checkout_id: Text | None = None


class RollbackRequest(_In):
    reason: Annotated[str, StringConstraints(max_length=500)] = ""


class RedemptionOut(BaseModel):
    id: int
    code: str
    order_id: str
    campaign_id: int | None
    status: str
    amount: int
    currency: str
    subtotal: int
    customer_id: str | None
    email: str | None
    channel: str | None
    source: str
    flagged_reason: str | None
    duplicate: bool = False
    created_at: datetime
    rolled_back_at: datetime | None


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    reason: str
    details: dict[str, Any] | None = None
