"""Request and response bodies of the JSON API (pydantic: validation and the OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, RootModel, StringConstraints

from plugin.formats.codes import CodeFormat
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


class PlatformFollow(BaseModel):
    """The last time the platform discount was made to follow the campaign (pause, resume, end,
    a rule edit; or a replacement after a type change) and what was done."""

    at: datetime
    action: str  # campaign.platform_followed | campaign.platform_replaced
    outcome: dict[str, Any]


class PlatformError(BaseModel):
    """A sync job of the campaign that is failing: queued for a retry, or dead-lettered."""

    job: str  # sync.push | sync.deactivate | sync.follow
    status: str  # queued | running | dead
    attempts: int
    error: str


class CampaignPlatform(BaseModel):
    """Where the campaign stands on the shop's platform."""

    platform: str | None
    discount_id: str | None = Field(description="The platform discount holding the codes; null before the first push.")
    codes: dict[str, int] = Field(description="Codes per sync status: pending, synced, failed, deactivated.")
    last_follow: PlatformFollow | None
    last_error: PlatformError | None = Field(description="Null when no sync job of the campaign is failing.")


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
    guess_probability: float = Field(
        description="Chance that one attacker identity (an address or customer) at the per-shopper limit "
        "finds a live code of this format within a year."
    )
    guess_probability_below_alarm: float = Field(
        description="Chance that guessers spread over any number of identities, staying just under the "
        "shop-wide guessing alert, find a live code of this format within a year."
    )
    exposure: dict[str, Any] | None = None
    platform: CampaignPlatform
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


class Shopper(_In):
    """The shopper a merchant's server calls for, so that failed guesses are counted per shopper
    (their address, and the `customer` when one is given), not against the server's own address
    shared by every shopper of the shop. Only server keys (`checkout`, `admin`) may send it; a
    `storefront` key's shopper is always the address of the connection (403 `shopper_not_allowed`).
    A call that names no shopper (neither `shopper` nor an identified `customer`) is counted
    against the API key itself, under a much higher ceiling shared by all such calls."""

    ip: IPvAnyAddress = Field(description="The shopper's IP address as your server saw it (IPv6 is counted per /64).")


NamedShopper = Annotated[
    Shopper | None, Field(description="Who is checking out, for the failed-guess limits (server keys only).")
]


class ValidateRequest(_In):
    code: TypedCode
    basket: Basket
    customer: Customer | None = None
    channel: Channel | None = None
    checkout_id: Text | None = None
    shopper: NamedShopper = None


class RefusalMode(_In):
    """What shoppers are told when a code is refused: `detailed` everywhere (storefront keys
    too), `generic` everywhere (a voided, used, held or bound code answers like an unknown one;
    basket nudges stay), or `default`: detailed to your servers, generic to storefront keys.
    Your servers always get the exact reason, message and details beside the shopper view."""

    mode: Literal["default", "detailed", "generic"]


class AllowedOrigins(_In):
    """The pages your `storefront` keys may be used from: exact origins, `https://host` or
    `https://host:port` (no wildcards, no paths). A browser request from any other origin is
    refused (`origin_not_allowed`); an empty list allows none. The list is replaced whole."""

    origins: list[str] = Field(max_length=50)


class ShopperView(BaseModel):
    reason: str
    message: str
    details: dict[str, Any]


class Decision(BaseModel):
    """A validation answer. Keys with the `checkout` (or `admin`) scope, for merchant servers,
    get every field; `storefront` keys, for calls from shoppers' browsers, get only `valid`,
    `discount` and `shopper`, never the exact reason, message or details."""

    valid: bool
    code: str | None = Field(default=None, description="The stored form of the code (not for storefront keys).")
    campaign_id: int | None = Field(default=None, description="Not for storefront keys.")
    discount: DiscountResult | None = None
    reason: str | None = Field(default=None, description="The exact refusal reason, for the merchant's systems only.")
    message: str | None = Field(default=None, description="The exact refusal message, for the merchant's systems only.")
    details: dict[str, Any] | None = Field(default=None, description="The exact details, for the merchant's systems only.")
    shopper: ShopperView | None = Field(default=None, description="What to show the shopper, per the shop's setting.")


class RevealedCode(BaseModel):
    """A claim link's code, for the storefront script (never the recipient)."""

    code: str = Field(description="The display form, as the shopper types it.")
    expires_at: datetime | None
    bound: bool = Field(description="Whether checkout accepts it only for the recipient it was given to.")
    binding: str


class ClaimCheckRequest(_In):
    """The shopper's basket, to check a claim link's code against (App Proxy)."""

    basket: Basket


class StorefrontDecision(BaseModel):
    """A validation answer as a shopper's browser gets it."""

    valid: bool
    discount: DiscountResult | None = None
    shopper: ShopperView | None = None


class ReservationRequest(_In):
    code: TypedCode
    checkout_id: Text
    ttl_seconds: Annotated[int, Field(strict=True, ge=30, le=86_400)] = 900
    basket: Basket | None = None
    customer: Customer | None = None
    channel: Channel | None = None
    shopper: NamedShopper = None


class ReservationOut(BaseModel):
    id: int
    code: str
    checkout_id: str
    expires_at: datetime
    released_at: datetime | None
    active: bool


class ShippingAddress(_In):
    """Where an order ships (or where a referrer lives). Couponry keeps only a keyed fingerprint
    of the street lines, postcode and country, never the address: a friend's order to one of a
    referrer's addresses is a self-referral."""

    line1: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)] = Field(
        description="Street address, first line."
    )
    line2: Annotated[str, StringConstraints(max_length=255)] = ""
    postcode: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)] = Field(
        description="Postal or ZIP code."
    )
    country: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")] = Field(description="ISO 3166-1 alpha-2 code.")


class RedemptionRequest(_In):
    code: TypedCode
    order_id: Text
    basket: Basket
    customer: Customer | None = None
    channel: Channel | None = None
    checkout_id: Text | None = None
    shipping_address: ShippingAddress | None = None
    shopper: NamedShopper = None


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
    refunded: int = Field(default=0, description="The part of `subtotal` partial refunds took back, minor units.")
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


# --- distribution ---------------------------------------------------------------------------


class ClaimRequest(_In):
    """Exactly one way to name the recipient; `recipient` guesses which it is."""

    recipient: Annotated[str, StringConstraints(max_length=320)] | None = None
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    phone: Annotated[str, StringConstraints(max_length=40)] | None = None
    customer_id: Annotated[str, StringConstraints(max_length=255)] | None = None
    shipping_address: ShippingAddress | None = Field(
        default=None, description="Referral programs only: the referrer's address, so friends' orders to it are refused."
    )


class PullOut(BaseModel):
    """A recipient's code for a template's merge fields; identical on every call."""

    code: str = Field(description="The display form to print.")
    stored_code: str
    campaign_id: int
    recipient: str
    assigned_at: datetime
    expires_at: datetime | None


class ClaimOut(PullOut):
    created: bool = Field(description="True for the call that assigned the code.")
    claim_url: str
    partner_id: int | None


class PoolOut(BaseModel):
    campaign_id: int
    partner_id: int | None
    total: int
    assigned: int
    free: int


class PullUrlCreate(_In):
    expires_in_days: int = Field(
        default=90, ge=1, le=400, description="How long the URL works; mint a new one before then (at most 400 days)."
    )


class PullUrlOut(BaseModel):
    url: str = Field(description="Append the recipient: <url>?recipient=<url-encoded email, phone or id:customer>.")
    expires_at: datetime = Field(description="After this instant the URL answers 410 `link_expired`.")
    key_prefix: str = Field(description="The API key that minted it: revoking that key revokes the URL (403 `link_revoked`).")


class PartnerCreate(_In):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class PartnerOut(BaseModel):
    id: int
    name: str
    created_at: datetime


class PartnerList(BaseModel):
    data: list[PartnerOut]


class PartnerKeyOut(BaseModel):
    key: str = Field(description="Shown once; scoped to the partner's own codes.")
    prefix: str
    partner_id: int


class AllocationRequest(_In):
    count: Annotated[int, Field(strict=True, ge=1, le=1_000_000)]


class AllocationOut(BaseModel):
    partner_id: int
    campaign_id: int
    allocated: int = Field(description="Codes moved into the partner's block (fewer when the pool ran short).")


class ResultsOut(BaseModel):
    campaign_id: int
    partner_id: int | None
    assigned: int
    redemptions: int
    revenue: int = Field(description="Order subtotals less what partial refunds took back, minor units.")
    discount: int = Field(description="Discount given, minor units.")


class ResultsMoney(BaseModel):
    currency: str = Field(description="ISO 4217: money is totalled per currency, never across them.")
    revenue: int = Field(description="Order subtotals of active redemptions less what refunds took back, minor units.")
    discount: int = Field(description="Discount given by active redemptions, minor units.")
    return_per_discount: float | None = Field(description="revenue / discount (None without discount).")


class ResultsFigures(BaseModel):
    key: dict[str, str | int | None] = Field(
        description='The group\'s values: channel, provider ("" none); partner, batch (0 none); day (YYYY-MM-DD, shop time zone).'
    )
    issued: int | None = Field(description="Codes issued; per campaign and per batch only, without partner or range.")
    assigned: int | None = Field(
        description="Codes assigned to a recipient (in the range: by day of assignment); None by channel."
    )
    redeemed: int = Field(description="Redemptions still active.")
    redemption_rate: float | None = Field(description="redeemed / assigned (None when nothing was assigned).")
    rolled_back: int
    flagged: int = Field(description="Flagged uses (rolled back or not).")
    money: list[ResultsMoney]
    median_wait_seconds: float | None = Field(description="Median time from a code's assignment to its redemption.")


class ResultsReport(BaseModel):
    campaign_id: int
    partner_id: int | None
    timezone: str = Field(description="The shop's IANA time zone: the days' boundaries.")
    group_by: list[str]
    start: str | None = Field(None, alias="from", description="First day, inclusive.")
    end: str | None = Field(None, alias="to", description="Last day, inclusive.")
    totals: ResultsFigures
    groups: list[ResultsFigures]

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ResultsAnswer(RootModel[ResultsOut | ResultsReport]):
    """Totals as partners have always read them, or the grouped report."""


class AlertOut(BaseModel):
    id: int
    kind: str
    campaign_id: int | None
    partner_id: int | None
    message: str
    count: int
    created_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None


class AlertList(BaseModel):
    data: list[AlertOut]


class PushRequest(_In):
    provider: Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=32)]


class PushOut(BaseModel):
    provider: str
    queued: int = Field(description="Recipients newly queued; those already queued or sent are not sent again.")


class DeliveryOut(BaseModel):
    recipient: str
    provider: str
    status: str = Field(
        description="queued, sending (tried, answer lost: looked up before any resend), sent, "
        "accepted (in a provider import job), delivered (the job took it) or failed"
    )
    provider_id: str | None
    error: str | None
    attempts: int
    updated_at: datetime


class DeliveryList(BaseModel):
    data: list[DeliveryOut]
    counts: dict[str, dict[str, int]] = Field(description="provider -> status -> recipients")


class PoolPolicyIn(_In):
    alert_below: Annotated[int, Field(strict=True, ge=0, le=10_000_000)] = 100
    topup_below: Annotated[int, Field(strict=True, ge=1, le=10_000_000)] | None = None
    topup_count: Annotated[int, Field(strict=True, ge=0, le=10_000_000)] = 0


class PoolPolicyOut(BaseModel):
    campaign_id: int
    alert_below: int
    topup_below: int | None
    topup_count: int


class KlaviyoPoolIn(_In):
    campaign_id: Annotated[int, Field(strict=True, ge=1, le=2**31 - 1)]
    coupon_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,64}$")] = Field(
        description="The Klaviyo coupon's id (its external_id); created at Klaviyo if missing. Templates use "
        "`{% coupon_code 'COUPON_ID' %}`."
    )
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    count: Annotated[int, Field(strict=True, ge=0, le=1_000_000)] = Field(
        0, description="Free codes of the campaign to hand to the pool now (0: none yet)."
    )
    batch_id: Annotated[int, Field(strict=True, ge=1, le=2**31 - 1)] | None = Field(None, description="Only this batch's codes.")
    alert_below: Annotated[int, Field(strict=True, ge=0, le=10_000_000)] = 100
    topup_below: Annotated[int, Field(strict=True, ge=1, le=10_000_000)] | None = None
    topup_count: Annotated[int, Field(strict=True, ge=0, le=10_000_000)] = 0


class KlaviyoPoolCodesIn(_In):
    count: Annotated[int, Field(strict=True, ge=1, le=1_000_000)]
    batch_id: Annotated[int, Field(strict=True, ge=1, le=2**31 - 1)] | None = None


class KlaviyoPoolOut(BaseModel):
    id: int
    campaign_id: int
    coupon_id: str
    description: str
    alert_below: int
    topup_below: int | None
    topup_count: int
    unassigned: int | None = Field(description="Klaviyo's unassigned codes at the last check (counted up to the thresholds).")
    checked_at: datetime | None
    counts: dict[str, int] = Field(description="Codes per upload status: queued, sending, submitted, uploaded, failed.")
    added: int = Field(0, description="Codes handed to the pool by this request.")
    binding: str = Field(
        "none", description="Always `none`: Klaviyo picks each code's recipient at send time, so no code here is bound."
    )
    channel: str = Field("klaviyo", description="The channel redemptions of these codes are attributed to.")


class KlaviyoPoolList(BaseModel):
    data: list[KlaviyoPoolOut]


class KlaviyoUploadOut(BaseModel):
    code: str
    status: str
    job_id: str | None
    error: str | None
    attempts: int
    updated_at: datetime


class KlaviyoUploadList(BaseModel):
    data: list[KlaviyoUploadOut]
    counts: dict[str, int]


class RetryOut(BaseModel):
    requeued: int


class ReferralProgramIn(_In):
    campaign_id: Annotated[int, Field(strict=True, ge=1, le=2**31 - 1)]
    reward_campaign_id: Annotated[int, Field(strict=True, ge=1, le=2**31 - 1)]
    provider: Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=32)] | None = None


class ReferralProgramOut(BaseModel):
    campaign_id: int
    reward_campaign_id: int
    provider: str | None


class ReferralOut(BaseModel):
    referrer: str
    friend: str
    order_id: str
    reward_code: str | None
    created_at: datetime


class ReferralList(BaseModel):
    data: list[ReferralOut]


class RedemptionList(BaseModel):
    data: list[RedemptionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last page.")


class WebhookDeliveryOut(BaseModel):
    id: int
    platform: str
    delivery_id: str
    topic: str
    status: str
    error: str | None
    flagged: bool
    campaign_id: int | None
    order_id: str | None
    outcome: dict[str, Any]
    unknown_codes: int
    received_at: datetime
    processed_at: datetime | None
    redacted: bool


class WebhookDeliveryList(BaseModel):
    data: list[WebhookDeliveryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last page.")


# --- per-code operations (plugin.codes.percode) ---------------------------------------------------------


class CodeVoid(_In):
    reason: Annotated[str, StringConstraints(max_length=500)] = ""


class CodeExtend(_In):
    expires_at: datetime = Field(description="The code's new end, in the future, with a timezone (ISO 8601)")


class CodeReassign(_In):
    recipient: Annotated[str, StringConstraints(min_length=1, max_length=320)] = Field(
        description="An email, a phone number (+<country><number>) or id:<customer id>"
    )


class CodePlatform(BaseModel):
    """Where the code stands on the shop's platform: `pending` (a push will carry it),
    `synced`, `failed` (with the platform's message) or `deactivated`."""

    platform: str | None
    sync_status: str
    error: str | None
    platform_id: str | None
    synced_at: datetime | None


class CodeEvent(BaseModel):
    at: datetime
    # issued | assigned | synced | deactivated | delivered | reserved | released | redeemed | flagged |
    # rolled_back | voided | extended | retracted (an old holder's merge fields blanked)
    event: str
    details: dict[str, Any]


class CodeOut(BaseModel):
    code: str  # as stored (normalised)
    display: str  # as shown to shoppers
    typed: str  # as asked for
    campaign_id: int
    status: str  # active | voided
    uses: int
    recipient: str | None
    assigned_at: datetime | None
    expires_at: datetime | None
    platform: CodePlatform
    events: list[CodeEvent]
