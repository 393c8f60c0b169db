"""Shopify: one code discount per campaign, unique redeem codes under it, orders back by webhook.

Everything goes through the Admin GraphQL API of the pinned `API_VERSION`:

    ensure_discount   discountCodeBasicCreate / discountCodeFreeShippingCreate (…Update with an id);
                      a create whose answer was lost is found by its marker (codeDiscountNodeByCode)
    push_codes        discountRedeemCodeBulkAdd, then poll discountRedeemCodeBulkCreation until done,
                      then read its codes: each code's DiscountRedeemCode id (kept as the code's
                      platform id, so removing it later needs no search) or its errors
    deactivate_codes  discountCodeRedeemCodeBulkDelete by redeem-code id (the caller's stored id;
                      a code given without one is searched for first), then poll the job
    list_codes        codeDiscountNode.codeDiscount.codes, cursor by cursor
    fetch_order       order(id), discount allocations summed per code, shipping address
    list_recent_orders  orders(query: "updated_at:>…") by update time; those with a discount code
                      are fetched whole (the poll that fills webhook gaps, e.g. a refused webhook)

Orders carry their shipping address in neutral form: the REST webhook's `shipping_address`
(`address1`, `address2`, `zip`, `country_code`; null without shipping) and GraphQL's
`shippingAddress` (`address1`, `address2`, `zip`, `countryCodeV2`). A public app gets customer
data in order payloads only with Shopify's protected-customer-data approval (research/shopify.md);
without the address fields the order simply has no address and nothing is matched by it.

Shopify rate-limits GraphQL with a leaky bucket of cost points per app and shop. `CostBucket`
(connectors.costbucket) mirrors it from `extensions.cost.throttleStatus` and makes each call wait
until the bucket holds its expected cost, so we do not get throttled on purpose; every connector
of a shop must draw on the same one (plugin.store.ratestate shares it between jobs and workers). A
throttle that happens anyway (`THROTTLED`, often with HTTP 200, or HTTP 429) becomes
`RateLimited`; 5xx and timeouts become `UpstreamError`. Both are retried here a bounded number of
times, then raised for the outbox (a create, which is not idempotent, as `_create_discount` says).

Install (OAuth authorization-code grant, token exchange, session tokens) and webhook checks are
methods too; the app owns the signed `state`, the routes and the secrets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, retry_if_exception_type, stop_after_attempt

from connectors import json_body, throttling
from connectors.base import (
    REMOVAL_UNCONFIRMED,
    CodeSpec,
    CodeUse,
    ConnectorConfig,
    Credentials,
    Delivery,
    DeliveryKind,
    DiscountSpec,
    DiscountState,
    OrderEvent,
    OrderEventKind,
    PushResult,
    Refund,
    ShippingAddress,
    discount_marker,
    retry_after_seconds,
)
from connectors.costbucket import CostBucket
from connectors.errors import AuthError, BadSignature, ConnectorError, NotFound, RateLimited, Rejected, UpstreamError
from connectors.headers import header
from connectors.money import from_minor as _from_minor
from connectors.money import to_minor as _to_minor

T = TypeVar("T")
Json = dict[str, Any]
Wait = Callable[[RetryCallState], float]

# --- GraphQL documents (every one is validated against the pinned schema by the tests) -------

DISCOUNT_BASIC_CREATE = """
mutation CouponryDiscountBasicCreate($discount: DiscountCodeBasicInput!) {
  discountCodeBasicCreate(basicCodeDiscount: $discount) {
    codeDiscountNode { id }
    userErrors { code field message extraInfo }
  }
}"""

DISCOUNT_BASIC_UPDATE = """
mutation CouponryDiscountBasicUpdate($id: ID!, $discount: DiscountCodeBasicInput!) {
  discountCodeBasicUpdate(id: $id, basicCodeDiscount: $discount) {
    codeDiscountNode { id }
    userErrors { code field message extraInfo }
  }
}"""

DISCOUNT_FREE_SHIPPING_CREATE = """
mutation CouponryDiscountFreeShippingCreate($discount: DiscountCodeFreeShippingInput!) {
  discountCodeFreeShippingCreate(freeShippingCodeDiscount: $discount) {
    codeDiscountNode { id }
    userErrors { code field message extraInfo }
  }
}"""

DISCOUNT_FREE_SHIPPING_UPDATE = """
mutation CouponryDiscountFreeShippingUpdate($id: ID!, $discount: DiscountCodeFreeShippingInput!) {
  discountCodeFreeShippingUpdate(id: $id, freeShippingCodeDiscount: $discount) {
    codeDiscountNode { id }
    userErrors { code field message extraInfo }
  }
}"""

# a whole discount on, off or gone, in one call by its id (pause / resume / end of a campaign)
DISCOUNT_ACTIVATE = """
mutation CouponryDiscountActivate($id: ID!) {
  discountCodeActivate(id: $id) {
    codeDiscountNode { id }
    userErrors { code field message extraInfo }
  }
}"""

DISCOUNT_DEACTIVATE = """
mutation CouponryDiscountDeactivate($id: ID!) {
  discountCodeDeactivate(id: $id) {
    codeDiscountNode { id }
    userErrors { code field message extraInfo }
  }
}"""

DISCOUNT_DELETE = """
mutation CouponryDiscountDelete($id: ID!) {
  discountCodeDelete(id: $id) {
    deletedCodeDiscountId
    userErrors { code field message extraInfo }
  }
}"""

BULK_ADD = """
mutation CouponryRedeemCodeBulkAdd($discountId: ID!, $codes: [DiscountRedeemCodeInput!]!) {
  discountRedeemCodeBulkAdd(discountId: $discountId, codes: $codes) {
    bulkCreation { id done codesCount importedCount failedCount }
    userErrors { code field message }
  }
}"""

BULK_CREATION_STATUS = """
query CouponryBulkCreationStatus($id: ID!) {
  discountRedeemCodeBulkCreation(id: $id) { id done codesCount importedCount failedCount }
}"""

BULK_CREATION_CODES = """
query CouponryBulkCreationCodes($id: ID!, $first: Int!, $after: String) {
  discountRedeemCodeBulkCreation(id: $id) {
    codes(first: $first, after: $after) {
      nodes { code errors { code field message } discountRedeemCode { id } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""

# the redeem codes' ids when every code was imported (no errors to read): 2 points a code
BULK_CREATION_IDS = """
query CouponryBulkCreationIds($id: ID!, $first: Int!, $after: String) {
  discountRedeemCodeBulkCreation(id: $id) {
    codes(first: $first, after: $after) {
      nodes { code discountRedeemCode { id } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""

CODE_OWNER = """
query CouponryCodeOwner($code: String!) {
  codeDiscountNodeByCode(code: $code) { id }
}"""

FIND_REDEEM_CODES = """
query CouponryFindRedeemCodes($id: ID!, $query: String!, $first: Int!) {
  codeDiscountNode(id: $id) {
    codeDiscount {
      ... on DiscountCodeBasic { codes(first: $first, query: $query) { nodes { id code } } }
      ... on DiscountCodeFreeShipping { codes(first: $first, query: $query) { nodes { id code } } }
      ... on DiscountCodeBxgy { codes(first: $first, query: $query) { nodes { id code } } }
      ... on DiscountCodeApp { codes(first: $first, query: $query) { nodes { id code } } }
    }
  }
}"""

REDEEM_CODE_BULK_DELETE = """
mutation CouponryRedeemCodeBulkDelete($discountId: ID!, $ids: [ID!]) {
  discountCodeRedeemCodeBulkDelete(discountId: $discountId, ids: $ids) {
    job { id done }
    userErrors { code field message }
  }
}"""

JOB_STATUS = """
query CouponryJobStatus($id: ID!) {
  job(id: $id) { id done }
}"""

LIST_CODES = """
query CouponryListCodes($id: ID!, $first: Int!, $after: String) {
  codeDiscountNode(id: $id) {
    codeDiscount {
      ... on DiscountCodeBasic { codes(first: $first, after: $after) { ...CouponryCodePage } }
      ... on DiscountCodeFreeShipping { codes(first: $first, after: $after) { ...CouponryCodePage } }
      ... on DiscountCodeBxgy { codes(first: $first, after: $after) { ...CouponryCodePage } }
      ... on DiscountCodeApp { codes(first: $first, after: $after) { ...CouponryCodePage } }
    }
  }
}

fragment CouponryCodePage on DiscountRedeemCodeConnection {
  nodes { code }
  pageInfo { hasNextPage endCursor }
}"""

COUNT_CODES = """
query CouponryCountCodes($id: ID!) {
  codeDiscountNode(id: $id) {
    codeDiscount {
      ... on DiscountCodeBasic { codesCount { count precision } }
      ... on DiscountCodeFreeShipping { codesCount { count precision } }
      ... on DiscountCodeBxgy { codesCount { count precision } }
      ... on DiscountCodeApp { codesCount { count precision } }
    }
  }
}"""

ORDER = """
query CouponryOrder($id: ID!) {
  order(id: $id) {
    id legacyResourceId email sourceName processedAt cancelledAt displayFinancialStatus currencyCode discountCodes
    customer { id }
    shippingAddress { address1 address2 zip countryCodeV2 }
    subtotalPriceSet { shopMoney { amount currencyCode } }
    totalPriceSet { shopMoney { amount currencyCode } }
    totalRefundedSet { shopMoney { amount } }
    lineItems(first: 100) {
      nodes {
        discountAllocations {
          allocatedAmountSet { shopMoney { amount } }
          discountApplication { ... on DiscountCodeApplication { code } }
        }
      }
    }
    shippingLines(first: 10) {
      nodes {
        discountAllocations {
          allocatedAmountSet { shopMoney { amount } }
          discountApplication { ... on DiscountCodeApplication { code } }
        }
      }
    }
  }
}"""

# The poll lists cheaply (an order's id, update time and codes: cost ~1 each) and fetches whole only
# the orders that carry a code: a page of whole orders would cost ~340 points each, past the
# 1,000-point ceiling of one query.
RECENT_ORDERS = """
query CouponryRecentOrders($query: String!, $after: String) {
  orders(first: 100, after: $after, query: $query, sortKey: UPDATED_AT) {
    nodes { legacyResourceId updatedAt discountCodes }
    pageInfo { hasNextPage endCursor }
  }
}"""

WEBHOOK_SUBSCRIPTION_CREATE = """
mutation CouponryWebhookSubscriptionCreate($topic: WebhookSubscriptionTopic!, $subscription: WebhookSubscriptionInput!) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $subscription) {
    webhookSubscription { id topic }
    userErrors { field message }
  }
}"""

SHOP = """
query CouponryShop {
  shop { name myshopifyDomain currencyCode ianaTimezone }
}"""

# Cost we expect before Shopify has told us (it answers requestedQueryCost; we learn from that).
# Mutations cost 10; an object 1; a connection 2 plus `first` times its node.
EXPECTED_COST: dict[str, int] = {
    BULK_ADD: 10,
    BULK_CREATION_STATUS: 1,
    BULK_CREATION_CODES: 1 + 2 + 100 * 3,
    BULK_CREATION_IDS: 1 + 2 + 100 * 2,
    CODE_OWNER: 1,
    FIND_REDEEM_CODES: 2 + 2 + 10,
    JOB_STATUS: 1,
    LIST_CODES: 2 + 2 + 250,
    COUNT_CODES: 3,
    ORDER: 1 + 1 + 2 + 2 + 2 + 100 * 3 + 2 + 10 * 3,
    RECENT_ORDERS: 2 + 100 * 1 + 1,
    SHOP: 1,
}
MUTATION_COST = 10


_SHOP_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]\.myshopify\.com$")
_PLAIN_CODE = re.compile(r"^[A-Za-z0-9_]+$")
_DUPLICATE_ERRORS = frozenset({"TAKEN", "DUPLICATE", "IMPLICIT_DUPLICATE"})
UNCONFIRMED = REMOVAL_UNCONFIRMED  # deactivate_codes' error for a code its search did not find

_TOPIC_KINDS: dict[str, DeliveryKind] = {
    "app/uninstalled": "app_uninstalled",
    "customers/redact": "customers_redact",
    "customers/data_request": "customers_data_request",
    "shop/redact": "shop_redact",
}
# topics whose (signed) payload names the shop, and the field that does
_SHOP_IN_BODY: dict[str, str] = {
    "customers/data_request": "shop_domain",
    "customers/redact": "shop_domain",
    "shop/redact": "shop_domain",
    "app/uninstalled": "myshopify_domain",
}
_ORDER_TOPICS: dict[str, OrderEventKind] = {
    "orders/create": "created",
    "orders/paid": "paid",
    "orders/cancelled": "cancelled",
    "orders/updated": "updated",
    "orders/edited": "updated",
    "refunds/create": "refund",  # one refund, whole or partial: Couponry's refund ledger decides
}


class ShopifyAuth(httpx.Auth):
    """Admin API access token in the X-Shopify-Access-Token header."""

    def __init__(self, access_token: str) -> None:
        self._token = access_token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["X-Shopify-Access-Token"] = self._token
        yield request


@dataclass(frozen=True)
class SessionToken:
    """A verified App Bridge session token."""

    shop: str
    user_id: str | None
    session_id: str | None
    expires_at: datetime
    claims: Mapping[str, Any]


class _NotSent(UpstreamError):
    """The request never reached Shopify (connect failure), so even a mutation may be retried."""


def _default_wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, RateLimited):
        return 0.0  # the cost bucket already holds every call back for the right time
    backoff: float = min(30.0, 0.5 * 2.0 ** (state.attempt_number - 1))
    return backoff * (0.5 + secrets.randbelow(1000) / 1000)


@dataclass(frozen=True)
class AppProxyRequest:
    """What a verified App Proxy request says: the shop, and the signed-in customer (None for guests)."""

    shop: str
    customer_id: str | None
    path_prefix: str


class ShopifyConnector:
    name: ClassVar[str] = "shopify"
    API_VERSION: ClassVar[str] = "2025-01"
    DEFAULT_BASE_URL: ClassVar[str] = "https://{shop}/admin/api/{version}/graphql.json"
    # write_app_proxy: the storefront script reaches us through the shop's App Proxy (plugin.web.appproxy)
    SCOPES: ClassVar[tuple[str, ...]] = ("write_discounts", "read_orders", "write_app_proxy")
    WEBHOOK_TOPICS: ClassVar[tuple[str, ...]] = (
        "orders/create",
        "orders/paid",
        "orders/cancelled",
        "refunds/create",
        "app/uninstalled",
        "customers/data_request",
        "customers/redact",
        "shop/redact",
    )
    # Subscribed in the Partner Dashboard / shopify.app.toml only; the Admin API refuses them.
    COMPLIANCE_TOPICS: ClassVar[tuple[str, ...]] = ("customers/data_request", "customers/redact", "shop/redact")
    # deactivate_codes takes a code's DiscountRedeemCode gid (what push_codes answered as its
    # platform_id) in place of the code: deleted by it, no search
    DEACTIVATES_BY_ID: ClassVar[bool] = True
    BATCH_SIZE: ClassVar[int] = 100  # discountRedeemCodeBulkAdd "Maximum: 100 codes" in 2025-01 (250 from 2025-10)
    # Third-party figures, not in Shopify's docs: plan for these, surface EXCEEDED_MAX when hit.
    MAX_CODES_PER_STORE: ClassVar[int] = 20_000_000
    MAX_CODES_PER_DISCOUNT: ClassVar[int] = 10_000_000
    WEBHOOK_SIGNATURE_HEADER: ClassVar[str] = "X-Shopify-Hmac-Sha256"
    OAUTH_MAX_AGE: ClassVar[int] = 24 * 3600  # seconds a signed install/callback query stays valid
    # seconds an App Proxy request's `timestamp` may be from now, either way (our choice: Shopify
    # signs each forwarded request when it forwards it, so only clock skew separates the two)
    APP_PROXY_MAX_SKEW: ClassVar[int] = 300
    SESSION_TOKEN_LEEWAY: ClassVar[int] = 10  # App Bridge sends nbf slightly in the future
    MAX_ATTEMPTS: ClassVar[int] = 5
    RETRY_WAIT: ClassVar[Wait] = staticmethod(_default_wait)
    POLL_INTERVAL: ClassVar[float] = 0.5
    POLL_MAX_INTERVAL: ClassVar[float] = 5.0
    POLL_TIMEOUT: ClassVar[float] = 300.0
    CODES_PAGE: ClassVar[int] = 250
    TIMEOUT: ClassVar[httpx.Timeout] = httpx.Timeout(30.0, connect=10.0)

    def __init__(
        self,
        client: httpx.AsyncClient,
        config: ConnectorConfig,
        credentials: Credentials | None = None,
        *,
        wait: Wait | None = None,
        max_attempts: int | None = None,
        bucket: CostBucket | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        poll_interval: float | None = None,
        poll_timeout: float | None = None,
    ) -> None:
        self._client = client
        self.config = config
        self.credentials = credentials
        self._wait: Wait = wait if wait is not None else type(self).RETRY_WAIT
        self._max_attempts = max_attempts or self.MAX_ATTEMPTS
        self._sleep = sleep
        self.bucket = bucket if bucket is not None else CostBucket(clock, sleep)
        self._poll_interval = self.POLL_INTERVAL if poll_interval is None else poll_interval
        self._poll_timeout = self.POLL_TIMEOUT if poll_timeout is None else poll_timeout
        self._learned_cost: dict[str, float] = {}
        self._auth = ShopifyAuth(credentials.access_token) if credentials else None
        # COUPONRY_SHOPIFY_REDEEM_CODE_IDS=off: a push skips reading its codes' ids (203 points a
        # batch of 100 on top of 11: bench/sync.py); removing a code then searches for it first
        self.keep_ids = config.extra.get("redeem_code_ids", "on").strip().lower() not in ("off", "false", "0", "no")

    # --- install -----------------------------------------------------------------------------

    @staticmethod
    def shop_domain(value: str) -> str | None:
        """The shop's `*.myshopify.com` host from what a merchant or Shopify sent, or None."""
        host = value.strip().lower()
        if "://" in host:
            host = urlsplit(host).hostname or ""
        host = host.split("/", 1)[0]
        return host if _SHOP_DOMAIN.fullmatch(host) else None

    def authorize_url(self, shop: str, *, redirect_uri: str, state: str, online: bool = False) -> str:
        """Where to send the merchant to grant our scopes; `state` is the app's signed nonce."""
        params: list[tuple[str, str]] = [
            ("client_id", self.config.client_id),
            ("scope", ",".join(self.SCOPES)),
            ("redirect_uri", redirect_uri),
            ("state", state),
        ]
        if online:
            params.append(("grant_options[]", "per-user"))
        return f"{self._admin_url(self._require_shop(shop), 'oauth/authorize')}?{urlencode(params)}"

    def oauth_hmac(self, params: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]) -> str:
        """Hex HMAC-SHA256 of a query string as Shopify signs it (the `hmac` parameter left out)."""
        pairs = []
        for key, values in _multi(params).items():
            if key == "hmac":
                continue
            if key.endswith("[]"):
                key, value = key[:-2], json.dumps(values)
            elif len(values) == 1:
                value = values[0]
            else:
                raise BadSignature(f"parameter {key!r} given more than once")
            key = key.replace("%", "%25").replace("=", "%3D")
            pairs.append(f"{key}={value.replace('%', '%25')}".replace("&", "%26"))
        message = "&".join(sorted(pairs))
        return hmac.new(self._client_secret().encode(), message.encode(), hashlib.sha256).hexdigest()

    def verify_oauth_query(
        self,
        params: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]],
        *,
        now: float | None = None,
    ) -> str:
        """Check the `hmac` and age of a query Shopify sent us (install or callback); return the shop."""
        multi = _multi(params)
        given = (multi.get("hmac") or [""])[0]
        if not given or not hmac.compare_digest(self.oauth_hmac(multi).encode(), given.encode()):
            raise BadSignature("Shopify query signature does not match")
        try:
            timestamp = int((multi.get("timestamp") or [""])[0])
        except ValueError:
            raise BadSignature("Shopify query has no valid timestamp") from None
        if timestamp < (time.time() if now is None else now) - self.OAUTH_MAX_AGE:
            raise BadSignature("Shopify query is too old")
        shop = self.shop_domain((multi.get("shop") or [""])[0])
        if shop is None:
            raise BadSignature("Shopify query names no valid shop")
        return shop

    def app_proxy_signature(self, params: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]) -> str:
        """Hex HMAC-SHA256 of an App Proxy query as Shopify signs it ("Authenticate app proxies"):
        every parameter but `signature` as `key=value`, a repeated key's values joined by commas,
        sorted, concatenated with no separator, keyed with the app's client secret."""
        pairs = sorted(f"{key}={','.join(values)}" for key, values in _multi(params).items() if key != "signature")
        return hmac.new(self._client_secret().encode(), "".join(pairs).encode(), hashlib.sha256).hexdigest()

    def verify_app_proxy_query(
        self,
        params: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]],
        *,
        now: float | None = None,
    ) -> AppProxyRequest:
        """Check the `signature` and freshness of a request Shopify forwarded through the app's
        proxy; return the shop and the signed-in customer it names."""
        multi = _multi(params)
        given = multi.get("signature") or [""]
        if (
            len(given) != 1
            or not given[0]
            or not hmac.compare_digest(self.app_proxy_signature(multi).encode(), given[0].encode())
        ):
            raise BadSignature("App Proxy signature does not match")
        try:
            timestamp = int((multi.get("timestamp") or [""])[0])
        except ValueError:
            raise BadSignature("App Proxy query has no valid timestamp") from None
        if abs((time.time() if now is None else now) - timestamp) > self.APP_PROXY_MAX_SKEW:
            raise BadSignature("App Proxy query is stale")
        shop = self.shop_domain((multi.get("shop") or [""])[0])
        if shop is None:
            raise BadSignature("App Proxy query names no valid shop")
        customer = (multi.get("logged_in_customer_id") or [""])[0].strip()
        return AppProxyRequest(shop=shop, customer_id=customer or None, path_prefix=(multi.get("path_prefix") or [""])[0])

    def verify_callback(
        self,
        params: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]],
        *,
        expected_state: str,
        now: float | None = None,
    ) -> tuple[str, str]:
        """Check an OAuth callback (signature, age, shop, our state); return (shop, code)."""
        multi = _multi(params)
        shop = self.verify_oauth_query(multi, now=now)
        state = (multi.get("state") or [""])[0]
        if not expected_state or not hmac.compare_digest(state.encode(), expected_state.encode()):
            raise BadSignature("OAuth state does not match")
        code = (multi.get("code") or [""])[0]
        if not code:
            raise BadSignature("OAuth callback carries no code")
        return shop, code

    async def exchange_code(self, shop: str, code: str) -> Credentials:
        """Trade the callback's authorization code for an offline access token."""
        body = {"client_id": self.config.client_id, "client_secret": self._client_secret(), "code": code}
        return await self._access_token(shop, body)

    async def exchange_session_token(self, shop: str, session_token: str, *, online: bool = False) -> Credentials:
        """Token exchange for embedded apps: an App Bridge session token for an access token."""
        kind = "online" if online else "offline"
        body = {
            "client_id": self.config.client_id,
            "client_secret": self._client_secret(),
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": session_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "requested_token_type": f"urn:shopify:params:oauth:token-type:{kind}-access-token",
        }
        return await self._access_token(shop, body)

    def verify_session_token(self, token: str) -> SessionToken:
        """Verify an App Bridge session token (HS256 with our client secret, `aud` = client id)."""
        token = token.removeprefix("Bearer ").strip()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._client_secret(),
                algorithms=["HS256"],
                audience=self.config.client_id,
                leeway=self.SESSION_TOKEN_LEEWAY,
                options={"require": ["exp", "nbf", "iss", "dest", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise BadSignature(f"session token refused: {exc}") from None
        iss, dest = str(claims["iss"]), str(claims["dest"])
        shop = self.shop_domain(dest)
        if shop is None or urlsplit(iss).hostname != shop or urlsplit(dest).hostname != shop:
            raise BadSignature("session token issuer and destination are not the same shop")
        return SessionToken(
            shop=shop,
            user_id=str(claims["sub"]) if claims.get("sub") is not None else None,
            session_id=str(claims["sid"]) if claims.get("sid") is not None else None,
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
            claims=claims,
        )

    def missing_scopes(self, credentials: Credentials) -> tuple[str, ...]:
        """SCOPES the merchant did not grant (a write scope implies its read scope)."""
        granted = set(credentials.scopes)
        granted |= {"read_" + s.removeprefix("write_") for s in granted if s.startswith("write_")}
        return tuple(s for s in self.SCOPES if s not in granted)

    # --- webhooks ----------------------------------------------------------------------------

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        secret = self.config.webhook_secret or self.config.client_secret
        given = header(headers, self.WEBHOOK_SIGNATURE_HEADER)
        if not secret or not given:
            raise BadSignature("webhook carries no Shopify signature" if secret else "no Shopify webhook secret configured")
        digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
        if not hmac.compare_digest(digest, given.strip().encode()):
            raise BadSignature("Shopify webhook signature does not match")

    def identify_webhook(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        topic, shop, delivery_id = _head(headers, body)
        if not shop or topic in _SHOP_IN_BODY:  # its signed payload names the shop
            return self.parse_webhook(headers, body)
        kind = "order" if topic in _ORDER_TOPICS else _TOPIC_KINDS.get(topic, "other")
        return Delivery(delivery_id=delivery_id, topic=topic, shop=shop, kind=kind)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        topic, shop, delivery_id = _head(headers, body)
        try:
            payload = json_body.loads(body)
        except ValueError:
            raise Rejected("Shopify webhook body is not JSON") from None
        if not isinstance(payload, dict):
            raise Rejected("Shopify webhook body is not a JSON object")
        # The HMAC covers the body, not the headers: where the payload names the shop (privacy
        # topics' shop_domain, app/uninstalled's Shop object), it wins over X-Shopify-Shop-Domain,
        # so a header naming another shop cannot move a redaction or an uninstall onto it.
        signed_shop = payload.get(_SHOP_IN_BODY.get(topic, "shop_domain"))
        shop = str(signed_shop).strip().lower() if isinstance(signed_shop, str) and signed_shop.strip() else shop
        if topic in _ORDER_TOPICS:
            event = self._order_event(_ORDER_TOPICS[topic], payload, shop, delivery_id)
            return Delivery(delivery_id=delivery_id, topic=topic, shop=shop, kind="order", events=(event,))
        kind = _TOPIC_KINDS.get(topic, "other")
        customer = _dict(payload.get("customer"))
        orders = payload.get("orders_to_redact") or payload.get("orders_requested") or []
        return Delivery(
            delivery_id=delivery_id,
            topic=topic,
            shop=shop,
            kind=kind,
            customer_id=_str_or_none(customer.get("id")),
            email=_str_or_none(customer.get("email")),
            order_ids=tuple(str(o) for o in orders if o is not None),
        )

    def _order_event(self, kind: OrderEventKind, payload: Json, shop: str, delivery_id: str) -> OrderEvent:
        if kind == "refund":  # a Refund, not an Order: no codes, only its order's id
            return OrderEvent(
                platform=self.name,
                shop=shop,
                kind=kind,
                order_id=str(payload.get("order_id", "")),
                occurred_at=_datetime(payload.get("processed_at") or payload.get("created_at")),
                delivery_id=delivery_id,
                refunds=tuple(r for r in (_refund(payload, None),) if r is not None),
            )
        currency = str(payload.get("currency") or "USD").upper()
        if kind == "updated" and payload.get("financial_status") == "refunded":
            kind = "refunded"  # the platform says the whole order is refunded
        customer = _dict(payload.get("customer"))
        codes = tuple(
            CodeUse(code=str(d["code"]), amount=_to_minor(d.get("amount"), currency))
            for d in payload.get("discount_codes") or []
            if isinstance(d, dict) and d.get("code")
        )
        when = payload.get("cancelled_at") if kind == "cancelled" else None
        return OrderEvent(
            platform=self.name,
            shop=shop,
            kind=kind,
            order_id=str(payload.get("id", "")),
            codes=codes,
            customer_id=_str_or_none(customer.get("id")),
            email=_str_or_none(payload.get("email") or payload.get("contact_email") or customer.get("email")),
            subtotal=_to_minor(payload.get("subtotal_price"), currency),
            # subtotal_price: "after discounts but before shipping, duties, taxes, and tips"
            net_subtotal=_to_minor(payload.get("subtotal_price"), currency),
            total=_to_minor(payload.get("total_price"), currency),
            currency=currency,
            channel=_str_or_none(payload.get("source_name")),
            occurred_at=_datetime(when or payload.get("processed_at") or payload.get("created_at")),
            delivery_id=delivery_id,
            shipping_address=ShippingAddress.from_fields(
                payload.get("shipping_address"), "address1", "address2", "zip", "country_code"
            ),
            refunds=tuple(r for r in (_refund(_dict(x), currency) for x in payload.get("refunds") or []) if r is not None),
            items=sum(_int(line.get("quantity")) for line in payload.get("line_items") or [] if isinstance(line, dict)),
        )

    async def register_webhooks(self, callback_url: str) -> dict[str, str]:
        """Subscribe every non-compliance topic to `callback_url`; topic -> subscription id ("" if it existed)."""
        registered: dict[str, str] = {}
        for topic in self.WEBHOOK_TOPICS:
            if topic in self.COMPLIANCE_TOPICS:
                continue
            variables = {
                "topic": topic.upper().replace("/", "_"),
                "subscription": {"callbackUrl": callback_url, "format": "JSON"},
            }
            data = await self._graphql(WEBHOOK_SUBSCRIPTION_CREATE, variables)
            payload = data["webhookSubscriptionCreate"]
            errors = payload.get("userErrors") or []
            if errors and not all("taken" in str(e.get("message", "")).lower() for e in errors):
                raise Rejected(f"{topic}: " + _messages(errors))
            registered[topic] = "" if errors else str((payload.get("webhookSubscription") or {}).get("id", ""))
        return registered

    # --- discounts and codes -----------------------------------------------------------------

    async def ensure_discount(self, spec: DiscountSpec) -> str:
        if spec.platform_discount_id is None:
            return await self._create_discount(spec)
        variables: Json = {"discount": self._discount_input(spec, create=False)}
        variables["id"] = _gid("DiscountCodeNode", spec.platform_discount_id)
        document, field = (
            (DISCOUNT_FREE_SHIPPING_UPDATE, "discountCodeFreeShippingUpdate")
            if spec.kind == "free_shipping"
            else (DISCOUNT_BASIC_UPDATE, "discountCodeBasicUpdate")
        )
        data = await self._graphql(document, variables)
        return self._discount_id(data[field], field)

    async def set_discount_status(self, discount_id: str, state: DiscountState) -> None:
        """Activate, deactivate or delete the whole discount by its id: one call, every code."""
        document, field = _STATUS_MUTATIONS[state]
        data = await self._graphql(document, {"id": _gid("DiscountCodeNode", discount_id)})
        errors = data[field].get("userErrors") or []
        if errors and not (state == "deleted" and all(_is_missing(e) for e in errors)):  # deleting twice is done
            raise Rejected(f"{field}: " + _messages(errors))

    async def _create_discount(self, spec: DiscountSpec) -> str:
        """Create the discount with `spec.marker` as its first code, once.

        A create whose answer is lost (5xx, timeout, connection dropped, HTTP 429) may have
        committed. Before trying again we ask Shopify which discount holds the marker
        (codeDiscountNodeByCode) and adopt it; we create again only when none does. Codes are
        unique per shop, so a create racing one that did commit is refused as taken, and a
        create refused so (an earlier run committed) adopts the marker's discount too.
        """
        marker = spec.marker or discount_marker()
        document, field = (
            (DISCOUNT_FREE_SHIPPING_CREATE, "discountCodeFreeShippingCreate")
            if spec.kind == "free_shipping"
            else (DISCOUNT_BASIC_CREATE, "discountCodeBasicCreate")
        )
        variables: Json = {"discount": {**self._discount_input(spec, create=True), "code": marker}}
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            sleep=self._sleep,
            retry=retry_if_exception_type((UpstreamError, RateLimited)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1 and (found := await self._discount_holding(marker)):
                    return found
                data = await self._graphql(document, variables, idempotent=False)
                payload = data[field]
                taken = {e.get("code") for e in payload.get("userErrors") or []} & _DUPLICATE_ERRORS
                if taken and (found := await self._discount_holding(marker)):
                    return found
                return self._discount_id(payload, field)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _discount_holding(self, code: str) -> str | None:
        data = await self._graphql(CODE_OWNER, {"code": code})
        return _str_or_none((data.get("codeDiscountNodeByCode") or {}).get("id"))

    @staticmethod
    def _discount_id(payload: Json, field: str) -> str:
        if payload.get("userErrors"):
            raise Rejected(_messages(payload["userErrors"]))
        node = payload.get("codeDiscountNode") or {}
        if not node.get("id"):
            raise UpstreamError(f"{field} returned no discount")
        return str(node["id"])

    def _discount_input(self, spec: DiscountSpec, *, create: bool) -> Json:
        combines = spec.combines_with_codes or spec.combines_with_automatic
        d: Json = {"title": spec.title, "appliesOncePerCustomer": spec.once_per_customer, "usageLimit": spec.uses_per_code}
        if create:  # (the first code Shopify wants on a discount is the caller's marker)
            d["customerSelection"] = {"all": True}
            d["startsAt"] = _iso(spec.starts_at or datetime.now(UTC))
        elif spec.starts_at is not None:
            d["startsAt"] = _iso(spec.starts_at)
        d["endsAt"] = _iso(spec.ends_at) if spec.ends_at else None
        if spec.minimum_subtotal is not None:  # Shopify takes one of the two; Couponry checks the other
            d["minimumRequirement"] = {
                "subtotal": {"greaterThanOrEqualToSubtotal": _from_minor(spec.minimum_subtotal, spec.currency)}
            }
        elif spec.minimum_quantity is not None:
            d["minimumRequirement"] = {"quantity": {"greaterThanOrEqualToQuantity": str(spec.minimum_quantity)}}
        elif not create:
            d["minimumRequirement"] = {
                "quantity": {"greaterThanOrEqualToQuantity": None},
                "subtotal": {"greaterThanOrEqualToSubtotal": None},
            }
        if spec.kind == "free_shipping":
            d["combinesWith"] = {"productDiscounts": combines, "orderDiscounts": combines}
            d["destination"] = {"all": True}
            return d
        d["combinesWith"] = {"productDiscounts": combines, "orderDiscounts": combines, "shippingDiscounts": combines}
        if spec.kind == "percentage":
            value: Json = {"percentage": round(spec.value / 100, 4)}
        else:
            value = {"discountAmount": {"amount": _from_minor(spec.value, spec.currency), "appliesOnEachItem": False}}
        items: Json = {}
        if spec.product_ids:
            items["products"] = {"productsToAdd": [_gid("Product", p) for p in spec.product_ids]}
        if spec.collection_ids:
            items["collections"] = {"add": [_gid("Collection", c) for c in spec.collection_ids]}
        d["customerGets"] = {"value": value, "items": items or {"all": True}}
        return d

    async def push_codes(self, discount_id: str, codes: Sequence[CodeSpec]) -> list[PushResult]:
        """Add codes (their display form: what shoppers type) under the discount; one result each."""
        results: list[PushResult] = []
        for start in range(0, len(codes), self.BATCH_SIZE):
            results.extend(await self._push_batch(_gid("DiscountCodeNode", discount_id), codes[start : start + self.BATCH_SIZE]))
        return results

    async def _push_batch(self, discount_gid: str, batch: Sequence[CodeSpec], *, resubmit: bool = True) -> list[PushResult]:
        sent = [c.display or c.code for c in batch]
        data = await self._graphql(BULK_ADD, {"discountId": discount_gid, "codes": [{"code": s} for s in sent]})
        payload = data["discountRedeemCodeBulkAdd"]
        results: dict[int, PushResult] = {}
        for error in payload.get("userErrors") or []:
            index = _code_index(error.get("field"))
            if index is None or index >= len(batch):
                if not payload.get("bulkCreation"):
                    raise Rejected(_messages(payload["userErrors"]))
                continue
            results[index] = PushResult(code=batch[index].code, ok=False, error=str(error.get("message") or "refused"))
        creation = payload.get("bulkCreation")
        if not creation:
            rest = [i for i in range(len(batch)) if i not in results]
            if rest and resubmit and results:  # only some codes were bad: send the others again
                again = await self._push_batch(discount_gid, [batch[i] for i in rest], resubmit=False)
                results.update(zip(rest, again, strict=True))
            for i in rest:
                results.setdefault(i, PushResult(code=batch[i].code, ok=False, error="Shopify did not accept the batch"))
            return [results[i] for i in range(len(batch))]
        creation_id = str(creation["id"])
        if not creation.get("done"):
            creation = await self._poll(
                lambda: self._bulk_creation_status(creation_id), lambda c: bool(c.get("done")), "bulk code creation"
            )
        clean = int(creation.get("failedCount") or 0) == 0
        if clean and not self.keep_ids and int(creation.get("importedCount") or 0) >= len(batch) - len(results):
            return [results.get(i) or PushResult(code=c.code, ok=True) for i, c in enumerate(batch)]
        # Every code's outcome is read back, also when all were imported: its redeem-code id is
        # what a later removal deletes by. All imported: the lighter document without errors.
        outcome = await self._bulk_creation_codes(creation_id, BULK_CREATION_IDS if clean else BULK_CREATION_CODES)
        for i, (spec, text) in enumerate(zip(batch, sent, strict=True)):
            if i in results:
                continue
            node = outcome.get(text.casefold())
            if node is None:
                results[i] = PushResult(code=spec.code, ok=False, error="Shopify reported nothing for this code")
                continue
            errors = node.get("errors") or []
            redeem = node.get("discountRedeemCode") or {}
            if not errors:
                results[i] = PushResult(code=spec.code, ok=True, platform_id=_str_or_none(redeem.get("id")))
            elif {e.get("code") for e in errors} & _DUPLICATE_ERRORS and await self._owned_by(text, discount_gid):
                # already ours (an earlier attempt added it): its id by search, when the search finds it
                found = await self._find_redeem_code(discount_gid, text)
                results[i] = PushResult(code=spec.code, ok=True, platform_id=found)
            else:
                results[i] = PushResult(code=spec.code, ok=False, error=_messages(errors))
        return [results[i] for i in range(len(batch))]

    async def _bulk_creation_status(self, creation_id: str) -> Json:
        data = await self._graphql(BULK_CREATION_STATUS, {"id": creation_id})
        creation = data.get("discountRedeemCodeBulkCreation")
        if not creation:
            raise NotFound(f"bulk creation {creation_id} not found")
        return dict(creation)

    async def _bulk_creation_codes(self, creation_id: str, document: str = BULK_CREATION_CODES) -> dict[str, Json]:
        found: dict[str, Json] = {}
        after: str | None = None
        while True:
            variables = {"id": creation_id, "first": self.BATCH_SIZE, "after": after}
            data = await self._graphql(document, variables)
            connection = (data.get("discountRedeemCodeBulkCreation") or {}).get("codes") or {}
            for node in connection.get("nodes") or []:
                found[str(node.get("code", "")).casefold()] = node
            page = connection.get("pageInfo") or {}
            if not page.get("hasNextPage"):
                return found
            after = page.get("endCursor")

    async def _owned_by(self, code: str, discount_gid: str) -> bool:
        return await self._discount_holding(code) == discount_gid

    async def deactivate_codes(self, discount_id: str, codes: Sequence[str]) -> list[PushResult]:
        """Delete redeem codes (by code, or by DiscountRedeemCode gid). Only Shopify's answer to
        the delete counts as done: a code the search does not find fails with `UNCONFIRMED`."""
        discount_gid = _gid("DiscountCodeNode", discount_id)
        ids: dict[int, str] = {}
        results: dict[int, PushResult] = {}
        for i, code in enumerate(codes):
            if code.startswith("gid://shopify/DiscountRedeemCode/"):
                ids[i] = code
            elif (found := await self._find_redeem_code(discount_gid, code)) is not None:
                ids[i] = found
            else:
                # the codes(query:) search is no proof that a code is gone (it is fuzzy and
                # lags the writes): left as it was, for a later attempt or the full listing
                results[i] = PushResult(code=code, ok=False, error=UNCONFIRMED)
        order = list(ids)
        for start in range(0, len(order), self.BATCH_SIZE):
            chunk = order[start : start + self.BATCH_SIZE]
            data = await self._graphql(REDEEM_CODE_BULK_DELETE, {"discountId": discount_gid, "ids": [ids[i] for i in chunk]})
            payload = data["discountCodeRedeemCodeBulkDelete"]
            if payload.get("userErrors"):
                message = _messages(payload["userErrors"])
                results.update({i: PushResult(code=codes[i], ok=False, platform_id=ids[i], error=message) for i in chunk})
                continue
            job = payload.get("job") or {}
            if job.get("id") and not job.get("done"):
                await self._poll(partial(self._job_status, str(job["id"])), lambda j: bool(j.get("done")), "code deletion")
            results.update({i: PushResult(code=codes[i], ok=True, platform_id=ids[i]) for i in chunk})
        return [results[i] for i in range(len(codes))]

    async def _find_redeem_code(self, discount_gid: str, code: str) -> str | None:
        # The codes(query:) search is fuzzy; match exactly (codes are case-insensitive) ourselves.
        query = code if _PLAIN_CODE.fullmatch(code) else '"' + code.replace("\\", "\\\\").replace('"', '\\"') + '"'
        data = await self._graphql(FIND_REDEEM_CODES, {"id": discount_gid, "query": query, "first": 10})
        node = data.get("codeDiscountNode")
        if not node:
            raise NotFound(f"discount {discount_gid} not found")
        for found in ((node.get("codeDiscount") or {}).get("codes") or {}).get("nodes") or []:
            if str(found.get("code", "")).casefold() == code.casefold():
                return str(found["id"])
        return None

    async def _job_status(self, job_id: str) -> Json:
        data = await self._graphql(JOB_STATUS, {"id": job_id})
        return dict(data.get("job") or {"done": True})

    async def list_codes(self, discount_id: str) -> AsyncIterator[str]:
        discount_gid = _gid("DiscountCodeNode", discount_id)
        after: str | None = None
        while True:
            data = await self._graphql(LIST_CODES, {"id": discount_gid, "first": self.CODES_PAGE, "after": after})
            node = data.get("codeDiscountNode")
            if not node:
                raise NotFound(f"discount {discount_gid} not found")
            connection = (node.get("codeDiscount") or {}).get("codes") or {}
            for code in connection.get("nodes") or []:
                yield str(code["code"])
            page = connection.get("pageInfo") or {}
            if not page.get("hasNextPage"):
                return
            after = page.get("endCursor")

    async def count_codes(self, discount_id: str) -> int:
        """How many codes the discount holds (Shopify may answer a lower bound for huge discounts)."""
        data = await self._graphql(COUNT_CODES, {"id": _gid("DiscountCodeNode", discount_id)})
        node = data.get("codeDiscountNode")
        if not node:
            raise NotFound(f"discount {discount_id} not found")
        return int((((node.get("codeDiscount") or {}).get("codesCount")) or {}).get("count") or 0)

    # --- orders and shop ---------------------------------------------------------------------

    async def fetch_order(self, order_id: str) -> OrderEvent:
        data = await self._graphql(ORDER, {"id": _gid("Order", order_id)})
        order = data.get("order")
        if not order:
            raise NotFound(f"order {order_id} not found")
        currency = str(
            ((order.get("totalPriceSet") or {}).get("shopMoney") or {}).get("currencyCode") or order.get("currencyCode") or "USD"
        )
        amounts: dict[str, int] = {}
        for connection in (order.get("lineItems"), order.get("shippingLines")):
            for line in (connection or {}).get("nodes") or []:
                for allocation in line.get("discountAllocations") or []:
                    code = (allocation.get("discountApplication") or {}).get("code")
                    if code:
                        money = ((allocation.get("allocatedAmountSet") or {}).get("shopMoney") or {}).get("amount")
                        amounts[code.casefold()] = amounts.get(code.casefold(), 0) + _to_minor(money, currency)
        status = order.get("displayFinancialStatus")
        kind: OrderEventKind = (
            "cancelled"
            if order.get("cancelledAt")
            else "refunded"
            if status == "REFUNDED"
            else "paid"
            if status in ("PAID", "PARTIALLY_REFUNDED")
            else "created"
        )
        customer = order.get("customer") or {}
        return OrderEvent(
            platform=self.name,
            shop=self._shop(),
            kind=kind,
            order_id=str(order.get("legacyResourceId") or _legacy_id(str(order["id"]))),
            codes=tuple(CodeUse(code=c, amount=amounts.get(c.casefold(), 0)) for c in order.get("discountCodes") or []),
            customer_id=_legacy_id(str(customer["id"])) if customer.get("id") else None,
            email=_str_or_none(order.get("email")),
            subtotal=_to_minor(((order.get("subtotalPriceSet") or {}).get("shopMoney") or {}).get("amount"), currency),
            # subtotalPriceSet: the line items' prices after discounts, before shipping and tax
            net_subtotal=_to_minor(((order.get("subtotalPriceSet") or {}).get("shopMoney") or {}).get("amount"), currency),
            total=_to_minor(((order.get("totalPriceSet") or {}).get("shopMoney") or {}).get("amount"), currency),
            currency=currency,
            channel=_str_or_none(order.get("sourceName")),
            occurred_at=_datetime(order.get("cancelledAt") or order.get("processedAt")),
            # the order's refunded sum so far (a partial refund leaves it PARTIALLY_REFUNDED, "paid")
            refunded_total=_to_minor(((order.get("totalRefundedSet") or {}).get("shopMoney") or {}).get("amount"), currency)
            or None,
            shipping_address=ShippingAddress.from_fields(
                order.get("shippingAddress"), "address1", "address2", "zip", "countryCodeV2"
            ),
        )

    async def list_recent_orders(self, modified_after: datetime) -> AsyncIterator[OrderEvent]:
        """Orders updated after `modified_after`, for the poll that fills webhook gaps (a webhook
        refused for its size, one Shopify stopped retrying). Each comes as its current state,
        stamped with its update time, so a later change is a new polled delivery. Only the last
        60 days of orders are visible with `read_orders`, far more than a poll interval."""
        since = modified_after.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        variables: Json = {"query": f"updated_at:>'{since}'", "after": None}
        while True:
            page = (await self._graphql(RECENT_ORDERS, variables)).get("orders") or {}
            for node in page.get("nodes") or []:
                if node.get("discountCodes"):
                    order = await self.fetch_order(str(node["legacyResourceId"]))
                    yield replace(order, occurred_at=_datetime(node.get("updatedAt")) or order.occurred_at)
            info = page.get("pageInfo") or {}
            if not info.get("hasNextPage") or not info.get("endCursor"):
                return
            variables["after"] = info["endCursor"]

    async def fetch_shop(self) -> Json:
        """The shop's name, myshopify domain, currency and IANA time zone: also a cheap check that
        the token works."""
        data = await self._graphql(SHOP, {})
        return dict(data.get("shop") or {})

    async def store_timezone(self) -> str | None:
        """The shop's IANA time zone (`shop.ianaTimezone`), None when the answer has none."""
        zone = (await self.fetch_shop()).get("ianaTimezone")
        return zone if isinstance(zone, str) and zone else None

    # --- HTTP ----------------------------------------------------------------------------------

    @property
    def graphql_url(self) -> str:
        return self._graphql_url(self._shop())

    def _graphql_url(self, shop: str) -> str:
        return (self.config.base_url or self.DEFAULT_BASE_URL).format(shop=shop, version=self.API_VERSION)

    def _admin_url(self, shop: str, path: str) -> str:
        url = self._graphql_url(shop)
        root = url[: url.index("/admin/")] if "/admin/" in url else "{0.scheme}://{0.netloc}".format(urlsplit(url))
        return f"{root}/admin/{path}"

    def _shop(self) -> str:
        if self.credentials is None or not self.credentials.shop_domain:
            raise AuthError("no Shopify shop credentials")
        return self.credentials.shop_domain

    def _require_shop(self, shop: str) -> str:
        valid = self.shop_domain(shop)
        if valid is None:
            raise Rejected(f"not a myshopify.com shop domain: {shop!r}")
        return valid

    def _client_secret(self) -> str:
        if not self.config.client_secret:
            raise AuthError("no Shopify client secret configured")
        return self.config.client_secret

    async def _access_token(self, shop: str, body: Mapping[str, str]) -> Credentials:
        shop = self._require_shop(shop)
        try:
            response = await self._client.post(
                self._admin_url(shop, "oauth/access_token"),
                json=body,
                headers={"Accept": "application/json"},
                timeout=self.TIMEOUT,
            )
        except httpx.TransportError as exc:
            raise UpstreamError(f"Shopify did not answer: {type(exc).__name__}") from None
        _raise_for_status(response)
        try:
            answer = response.json()
            token = str(answer["access_token"])
        except (ValueError, KeyError, TypeError):
            raise UpstreamError("Shopify's token answer has no access_token") from None
        scopes = tuple(s.strip() for s in str(answer.get("scope") or "").split(",") if s.strip())
        extra = (
            {"associated_user_id": str(answer["associated_user"]["id"])}
            if isinstance(answer.get("associated_user"), dict)
            else {}
        )
        if answer.get("expires_in") is not None:
            extra["expires_in"] = str(answer["expires_in"])
        return Credentials(shop_domain=shop, access_token=token, scopes=scopes, extra=extra)

    async def _graphql(self, document: str, variables: Mapping[str, Any], *, idempotent: bool = True) -> Json:
        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, _NotSent):
                return True
            if isinstance(exc, RateLimited):  # THROTTLED ran nothing; an HTTP 429 may have come late
                return idempotent or exc.status != 429
            return idempotent and isinstance(exc, UpstreamError)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            sleep=self._sleep,
            retry=retry_if_exception(retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._graphql_once(document, variables)
        raise AssertionError("unreachable")  # pragma: no cover

    def _expected_cost(self, document: str) -> float:
        learned = self._learned_cost.get(document)
        if learned is not None:
            return learned
        return EXPECTED_COST.get(document, MUTATION_COST if document.lstrip().startswith("mutation") else 1)

    async def _graphql_once(self, document: str, variables: Mapping[str, Any]) -> Json:
        if self._auth is None:
            raise AuthError("no Shopify access token")
        url = self.graphql_url
        cost = self._expected_cost(document)
        ticket = await self.bucket.acquire(cost)
        try:
            response = await self._client.post(
                url, json={"query": document, "variables": dict(variables)}, auth=self._auth, timeout=self.TIMEOUT
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            await self.bucket.settle(cost, None, charged=False, ticket=ticket)
            raise _NotSent(f"could not reach Shopify: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            await self.bucket.settle(cost, None, ticket=ticket)
            raise UpstreamError(f"Shopify did not answer: {type(exc).__name__}") from None
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        extensions = body.get("extensions") if isinstance(body, dict) else None
        cost_info = extensions.get("cost") if isinstance(extensions, dict) else None
        await self.bucket.settle(cost, cost_info if isinstance(cost_info, Mapping) else None, ticket=ticket)
        if isinstance(cost_info, Mapping) and isinstance(cost_info.get("requestedQueryCost"), int | float):
            self._learned_cost[document] = float(cost_info["requestedQueryCost"])
        if response.status_code == 429:
            retry_after = retry_after_seconds(response.headers, 1.0) or 1.0
            await self.bucket.block(retry_after)
            throttling.throttled(self.name, throttling.RATE_LIMITED, retry_after)
            raise RateLimited("Shopify asked us to slow down", retry_after=retry_after, status=429)
        _raise_for_status(response)
        if not isinstance(body, dict):
            raise UpstreamError("Shopify answered something that is not JSON", status=response.status_code)
        errors = body.get("errors")
        if errors:
            raise self._graphql_error(errors, cost_info if isinstance(cost_info, Mapping) else None)
        data = body.get("data")
        if not isinstance(data, dict):
            raise UpstreamError("Shopify answered no data")
        return data

    def _graphql_error(self, errors: Any, cost: Mapping[str, Any] | None) -> ConnectorError:
        items: list[Any] = errors if isinstance(errors, list) else [{"message": str(errors)}]
        codes = {str(_dict(e.get("extensions")).get("code", "")) for e in items if isinstance(e, dict)}
        message = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in items)[:500]
        if "THROTTLED" in codes:
            retry_after = 1.0
            status = _dict((cost or {}).get("throttleStatus"))
            try:
                deficit = float((cost or {})["requestedQueryCost"]) - float(status["currentlyAvailable"])
                retry_after = max(0.0, deficit) / float(status["restoreRate"])
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                pass
            throttling.throttled("shopify", throttling.RATE_LIMITED, retry_after)
            return RateLimited(f"Shopify throttled the request: {message}", retry_after=retry_after)
        if codes & {"ACCESS_DENIED", "UNAUTHORIZED"}:
            return AuthError(message)
        if codes & {"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"}:
            return UpstreamError(message)
        return Rejected(message)  # MAX_COST_EXCEEDED, invalid documents or variables

    async def _poll(self, fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str) -> T:
        delay, waited = self._poll_interval, 0.0
        while True:
            await self._sleep(delay)
            waited += delay
            result = await fetch()
            if done(result):
                return result
            if waited >= self._poll_timeout:
                raise UpstreamError(f"Shopify's {what} still running after {waited:.0f} s")
            delay = min(max(delay * 2, 0.05), self.POLL_MAX_INTERVAL)


# --- small pure helpers --------------------------------------------------------------------------


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    message = f"Shopify: {_error_text(response)}"
    if status in (401, 403):
        raise AuthError(message, status=status)
    if status == 404:
        raise NotFound(message, status=status)
    if status == 429:
        delay = retry_after_seconds(response.headers, 1.0)
        throttling.throttled("shopify", throttling.RATE_LIMITED, delay or 0.0)
        raise RateLimited(message, retry_after=delay, status=status)
    if status >= 500:
        raise UpstreamError(message, status=status)
    raise Rejected(message, status=status)


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("errors", "error_description", "error", "message"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:300]


def _multi(params: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    multi: dict[str, list[str]] = {}
    multi_items = getattr(params, "multi_items", None)
    if callable(multi_items):  # Starlette's QueryParams keep repeated keys there
        params = multi_items()
    if isinstance(params, Mapping):
        for key, value in params.items():
            multi[str(key)] = [value] if isinstance(value, str) else [str(v) for v in value]
        return multi
    for key, value in params:
        multi.setdefault(str(key), []).append(str(value))
    return multi


def _head(headers: Mapping[str, str], body: bytes) -> tuple[str, str, str]:
    """A delivery's topic, shop domain (when its headers say it) and id."""
    topic = (header(headers, "X-Shopify-Topic") or "").strip()
    shop = (header(headers, "X-Shopify-Shop-Domain") or "").strip().lower()
    delivery_id = (
        header(headers, "X-Shopify-Webhook-Id")
        or header(headers, "X-Shopify-Event-Id")
        or "sha256:" + hashlib.sha256(topic.encode() + b"\n" + body).hexdigest()
    ).strip()
    return topic, shop, delivery_id


def _messages(errors: Iterable[Any]) -> str:
    parts = []
    for error in errors:
        if isinstance(error, dict):
            text = str(error.get("message") or "refused")
            parts.append(f"{text} ({error['code']})" if error.get("code") else text)
        else:
            parts.append(str(error))
    return "; ".join(parts)[:500] or "refused"


def _code_index(field: Any) -> int | None:
    """The index i of a userError whose field is ["codes", "i", ...]."""
    if isinstance(field, list) and len(field) >= 2 and field[0] == "codes":
        try:
            return int(field[1])
        except (TypeError, ValueError):
            return None
    return None


_STATUS_MUTATIONS: Final[dict[DiscountState, tuple[str, str]]] = {
    "active": (DISCOUNT_ACTIVATE, "discountCodeActivate"),
    "paused": (DISCOUNT_DEACTIVATE, "discountCodeDeactivate"),
    "deleted": (DISCOUNT_DELETE, "discountCodeDelete"),
}


def _is_missing(error: Json) -> bool:
    """A user error saying the discount does not exist (a delete whose first answer was lost)."""
    message = str(error.get("message", "")).lower()
    return "does not exist" in message or "not found" in message


def _gid(kind: str, value: str) -> str:
    return value if value.startswith("gid://") else f"gid://shopify/{kind}/{value}"


def _legacy_id(gid: str) -> str:
    return gid.rsplit("/", 1)[-1].split("?", 1)[0] if gid.startswith("gid://") else gid


def _dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _refund(refund: Json, currency: str | None) -> Refund | None:
    """A REST Refund (refunds/create, an order's `refunds[]`) in neutral form: the money its
    successful `refund` transactions returned (each in its own `currency`, else the order's) and
    the units its `refund_line_items` refunded. None without an id."""
    if refund.get("id") is None:
        return None
    amount = 0
    for tx in refund.get("transactions") or []:
        if isinstance(tx, dict) and tx.get("kind") == "refund" and tx.get("status") == "success":
            amount += _to_minor(tx.get("amount"), str(tx.get("currency") or currency or "USD").upper())
    items = sum(_int(line.get("quantity")) for line in refund.get("refund_line_items") or [] if isinstance(line, dict))
    return Refund(refund_id=str(refund["id"]), amount=amount, items=items)


def _str_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _datetime(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
