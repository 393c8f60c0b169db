"""The two narrow protocols every connector implements, and the neutral data they exchange.

Connectors know nothing of Couponry's database: the services hand them neutral requests
(`DiscountSpec`, `CodeSpec`, `Recipient`) and get neutral answers back (`PushResult`,
`OrderEvent`, `Delivery`). Each platform's quirks (auth, batch sizes, pagination, rate-limit
signals, signature schemes, payload parsing) stay inside its own module.

Every connector takes an injected `httpx.AsyncClient` and a `ConnectorConfig` whose
`base_url` can point it at a local server (tests, the sandbox store).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import httpx

# "refunded": the platform says the whole order is refunded. "refund": money returned on the order
# (Shopify's refunds/create), whole or partial: Couponry's refund ledger decides (plugin.checkout.refunds).
OrderEventKind = Literal["created", "paid", "cancelled", "refunded", "refund", "failed", "updated"]
DeliveryKind = Literal["order", "app_uninstalled", "customers_redact", "shop_redact", "customers_data_request", "ping", "other"]


@dataclass(frozen=True)
class ConnectorConfig:
    """App-level settings of one connector (the same for every shop)."""

    base_url: str | None = None
    client_id: str = ""
    client_secret: str = ""
    webhook_secret: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Credentials:
    """What one shop granted us: its domain or id on the platform and its access token."""

    shop_domain: str
    access_token: str = ""
    scopes: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)


# --- shop platforms: codes out ---------------------------------------------------------------


@dataclass(frozen=True)
class DiscountSpec:
    """The rules a platform can express natively, mapped from a campaign.

    Money is integer minor units in `currency`. Anything a platform cannot express is
    enforced by Couponry and detected at the webhook; connectors ignore fields they lack.
    """

    campaign_id: int
    title: str
    kind: Literal["percentage", "fixed_amount", "free_shipping"]
    value: int = 0  # percent (0-100) for percentage, minor units for fixed_amount
    currency: str = "USD"
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    uses_per_code: int | None = 1  # None = unlimited
    once_per_customer: bool = False
    minimum_subtotal: int | None = None
    minimum_quantity: int | None = None
    product_ids: tuple[str, ...] = ()
    collection_ids: tuple[str, ...] = ()
    combines_with_codes: bool = False
    combines_with_automatic: bool = False
    platform_discount_id: str | None = None  # set when updating an existing platform discount
    # the discount's first code, chosen and stored by the caller before the first create
    # (`discount_marker`): the same on every retry, so a create whose answer was lost is found
    # again by it instead of being made twice (platforms whose discounts need no code ignore it)
    marker: str | None = None


@dataclass(frozen=True)
class CodeSpec:
    """One code to create on the platform: the stored (normalised) form and the display form."""

    code: str
    display: str
    expires_at: datetime | None = None
    # the platform's id for a code already pushed (stored from its PushResult): per-code work
    # goes by it, and looks the code up only when it is missing
    platform_id: str | None = None


@dataclass(frozen=True)
class PushResult:
    """The platform's answer for one code: synced, or failed with the platform's message."""

    code: str
    ok: bool
    platform_id: str | None = None
    error: str | None = None


# --- shop platforms: orders in ---------------------------------------------------------------


@dataclass(frozen=True)
class CodeUse:
    """A discount code applied to an order, and the discount it gave (minor units)."""

    code: str
    amount: int = 0


@dataclass(frozen=True)
class ShippingAddress:
    """Where an order ships, only as much as telling two addresses apart needs: the street lines,
    the postcode and the ISO 3166-1 alpha-2 country code, as the platform gave them. Names,
    company, city, phone stay out: Couponry keeps a keyed fingerprint of this, never the address
    (plugin.orders.addresses)."""

    line1: str = ""
    line2: str = ""
    postcode: str = ""
    country: str = ""

    @classmethod
    def from_fields(cls, value: Any, line1: str, line2: str, postcode: str, country: str) -> ShippingAddress | None:
        """A platform's address object read by its own field names; None when it is absent or
        blank (no shipping: a digital order, a pickup)."""
        if not isinstance(value, Mapping):
            return None
        text = [str(value.get(name) or "") for name in (line1, line2, postcode, country)]
        return cls(*text) if any(text) else None


@dataclass(frozen=True)
class Refund:
    """One refund of an order, as the platform reports it.

    `refund_id` is the platform's own id of the refund, so that the same refund delivered twice
    (a refunds/create and the order's `refunds[]`, a retried webhook) counts once. `amount` is
    the money this refund returned, minor units of the order's currency; `items` the units of
    the order's lines it refunded (0 when the platform does not say)."""

    refund_id: str
    amount: int = 0
    items: int = 0


@dataclass(frozen=True)
class OrderEvent:
    """A platform order event in neutral form.

    No field says whether this is the customer's first order in the shop: no platform's order
    webhook says so reliably (Shopify dropped `customer.orders_count` from orders in 2022-07,
    WooCommerce and BigCommerce orders never carried it), so none is invented here.
    """

    platform: str
    shop: str
    kind: OrderEventKind
    order_id: str
    codes: tuple[CodeUse, ...] = ()
    customer_id: str | None = None
    email: str | None = None
    subtotal: int = 0
    total: int = 0
    # the order's subtotal after all its discounts, before shipping and tax (what results count as
    # revenue); None where the platform's payload doesn't state it
    net_subtotal: int | None = None
    currency: str = "USD"
    channel: str | None = None
    occurred_at: datetime | None = None
    delivery_id: str = ""
    shipping_address: ShippingAddress | None = None  # None: no shipping (digital, pickup) or not given
    # thin webhooks (BigCommerce) carry only ids: the service fetches the order to fill them in
    needs_fetch: bool = False
    # What the event says of refunds, in neutral form. `refunds`: the refunds it reports, each
    # with its own id (Shopify's refunds/create: one; an order's `refunds[]`: all so far).
    # `refunded_total`: the money refunded on the order so far, when the platform states only
    # that sum (BigCommerce's `refunded_amount`); None when it does not. `items`: the units of
    # the order's lines (the sum of their quantities; 0 when unknown), so that "every line
    # refunded" can be told from the refunds' `items`.
    refunds: tuple[Refund, ...] = ()
    refunded_total: int | None = None
    items: int = 0

    @property
    def reports_refunds(self) -> bool:
        """Whether this event says anything of refunds (the refund ledger must look at it)."""
        return bool(self.refunds) or bool(self.refunded_total) or self.kind == "refund"


@dataclass(frozen=True)
class Delivery:
    """A verified webhook delivery: its id for deduplication, its topic and what it says."""

    delivery_id: str
    topic: str
    shop: str
    kind: DeliveryKind
    events: tuple[OrderEvent, ...] = ()
    # compliance topics: customer identifiers to redact or report, orders concerned
    customer_id: str | None = None
    email: str | None = None
    order_ids: tuple[str, ...] = ()
    # some platforms (WooCommerce's creation ping) want a particular answer
    response_status: int = 200


@runtime_checkable
class ShopConnector(Protocol):
    """A shop platform: installs, holds the platform's discount, and tells us about orders."""

    name: ClassVar[str]
    SCOPES: ClassVar[tuple[str, ...]]
    WEBHOOK_TOPICS: ClassVar[tuple[str, ...]]
    BATCH_SIZE: ClassVar[int]  # codes per push_codes call

    def __init__(self, client: httpx.AsyncClient, config: ConnectorConfig, credentials: Credentials | None = None) -> None: ...

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise BadSignature unless the raw body is signed with our secret (constant time)."""

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        """Turn a verified delivery into neutral form."""

    def identify_webhook(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        """What storing a verified delivery needs, as `parse_webhook` would say it: its id, topic,
        shop, kind and the answer it wants; its events may be left out, and so may errors in
        them (whoever processes the delivery parses the stored payload whole). Platforms whose
        delivery id or shop is only in the body parse it whole here too."""

    async def ensure_discount(self, spec: DiscountSpec) -> str:
        """Create (or update, when spec.platform_discount_id is set) the platform discount; return its id."""

    async def push_codes(self, discount_id: str, codes: Sequence[CodeSpec]) -> list[PushResult]:
        """Create up to BATCH_SIZE codes under the discount; one result per code, in order."""

    async def deactivate_codes(self, discount_id: str, codes: Sequence[str]) -> list[PushResult]:
        """Remove or disable codes so the platform's checkout refuses them; `ok` only when the
        platform confirmed it (a code a lookup did not find fails with REMOVAL_UNCONFIRMED)."""

    async def fetch_order(self, order_id: str) -> OrderEvent:
        """Fetch an order whose webhook was thin, or for reconciliation."""

    def list_codes(self, discount_id: str) -> AsyncIterator[str]:
        """Every code the platform holds under the discount, for reconciliation."""


@dataclass(frozen=True)
class CodeEnd:
    """A code the platform already holds, and the end it must carry from now on (None: no end
    of its own). `platform_id` is the platform's id of the code, when a push stored one."""

    code: str
    display: str
    expires_at: datetime | None
    platform_id: str | None = None


# set_code_ends' error for a code the platform no longer holds (deleted on the platform): the
# caller pushes it again, which creates it with its end


@runtime_checkable
class CodeEndControl(Protocol):
    """A platform that holds an end per code (WooCommerce's `date_expires` per coupon, the
    sandbox): a code's end that changes after it was pushed (a claim starting a relative expiry,
    an extension) is sent to it. Platforms without it (Shopify, BigCommerce: one end per
    discount) get expired codes taken off by a scheduled sweep instead (plugin.platforms.expiry)."""

    async def set_code_ends(self, discount_id: str, ends: Sequence[CodeEnd]) -> list[PushResult]:
        """Give each code its new end; one result per code, in order. `ok` only when the
        platform confirmed it; a code it no longer holds fails with CODE_GONE. Raises when
        the platform refused or did not answer as a whole (the caller's job is retried)."""


# What a merchant's pause / resume / end makes of the platform discount itself.
DiscountState = Literal["active", "paused", "deleted"]


@runtime_checkable
class DiscountStatusControl(Protocol):
    """A platform that switches a whole discount on or off, or deletes it, in one call (Shopify,
    the sandbox). Connectors without it are followed code by code (an ended campaign's codes are
    deactivated one by one)."""

    async def set_discount_status(self, discount_id: str, state: DiscountState) -> None:
        """Put the discount in `state`; a discount already gone counts as deleted. Raises when the
        platform refused or did not answer (the caller's job is retried)."""


# What a code's own platform object is told to be (platforms without a discount-level switch).
CodeState = Literal["active", "paused"]


@runtime_checkable
class CodeStatusControl(Protocol):
    """A platform with no campaign-level discount, where every code is its own object carrying the
    campaign's rules and an on/off state (WooCommerce coupons). It is followed code by code, in
    batches, by each code's stored platform id (`CodeSpec.platform_id`), looking a code up only
    when its id is missing. Results come one per code, in order, under the code's stored form."""

    async def update_codes(self, discount_id: str, codes: Sequence[CodeSpec], state: CodeState) -> list[PushResult]:
        """Rewrite each code's rules from the discount (its own end included) and put it in
        `state`, in place. A code the platform no longer holds fails with CODE_GONE."""

    async def delete_codes(self, discount_id: str, codes: Sequence[CodeSpec]) -> list[PushResult]:
        """Remove the codes; `ok` when the platform removed them or says their id is gone."""

    def list_code_states(self, discount_id: str) -> AsyncIterator[tuple[str, CodeState]]:
        """Every code the platform holds under the discount, with its state (trashed ones are not held)."""


@dataclass(frozen=True)
class Recipient:
    """A person to push a code to, with the merge fields the provider should store."""

    key: str  # our normalised recipient key (email, phone in E.164, or customer id)
    email: str | None = None
    phone: str | None = None
    external_id: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)  # e.g. coupon_code, coupon_expires_at, claim_url
    # When an earlier attempt began whose outcome is unknown (it may have reached the provider): a
    # provider whose sends are not idempotent (Twilio) looks for that message before sending again.
    attempted_at: datetime | None = None


@dataclass(frozen=True)
class RecipientResult:
    """The provider's answer for one recipient."""

    key: str
    ok: bool
    provider_id: str | None = None
    error: str | None = None
    # Not settled yet (ok is False): "unsent" = provably nothing reached the provider, try again
    # later; "unknown" = the provider may have it, so look before trying again. None = final.
    pending: Literal["unsent", "unknown"] | None = None
    retry_after: float | None = None  # seconds the provider asked us to wait before trying again


@runtime_checkable
class MessagingConnector(Protocol):
    """An email/SMS provider that receives recipients' codes as profile or merge fields."""

    name: ClassVar[str]
    BATCH_SIZE: ClassVar[int]  # recipients per push_recipients call

    def __init__(self, client: httpx.AsyncClient, config: ConnectorConfig, credentials: Credentials | None = None) -> None: ...

    async def push_recipients(self, recipients: Sequence[Recipient]) -> list[RecipientResult]:
        """Store each recipient's fields with the provider; one result per recipient, in order."""


# deactivate_codes' error for a code the platform's lookup did not find: a lookup that misses is
# no proof that the code is gone (a search can be fuzzy, lag the writes, or skip some states),
# so the code is left as it was; reconciliation's full listing is what confirms a removal
REMOVAL_UNCONFIRMED = "not found by the platform's lookup: removal unconfirmed, the code is left as it was"


# update_codes' error for a code whose stored id the platform no longer knows (deleted behind our
# back): it is pushed again, not counted as updated
CODE_GONE = "no longer on the platform (deleted there?): pushed again"


def discount_marker() -> str:
    """A first code for a platform discount that nobody can guess (25 letters and digits)."""
    return "CPNRY" + secrets.token_hex(10).upper()


def retry_after_seconds(headers: Mapping[str, str], default: float | None = None) -> float | None:
    """Read a Retry-After header given in seconds (the HTTP-date form is rare for APIs)."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


def error_message(response: httpx.Response) -> str:
    """A readable message from the usual error keys of a JSON error body."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("message", "error_description", "error", "errors", "detail", "title"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else str(value)[:300]
    return str(body)[:300]
