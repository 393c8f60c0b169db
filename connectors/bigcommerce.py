"""BigCommerce: a coupon promotion per campaign, one POST per code, thin order webhooks.

What is particular to BigCommerce (sources in shared/research/platforms.md, section 2, and the
OpenAPI files in bigcommerce/docs: reference/promotions.v3.yml, orders.v2.oas2.yml,
webhooks.v3.yml):

- **App lifecycle.** On install the browser hits our `/auth` with `code`, `scope` and `context`.
  `exchange_code` trades the code at `login.bigcommerce.com/oauth2/token` for a store token. The
  `/load`, `/uninstall` and `/remove_user` callbacks carry a `signed_payload_jwt`.
  `verify_signed_payload` checks it: HS256 with the client secret, `aud` = client id, `iss` = "bc",
  and `exp`/`nbf`/`iat` present and valid.
- **API.** `X-Auth-Token` on `https://api.bigcommerce.com/stores/{store_hash}/v3/...` (and `/v2`).
  `ConnectorConfig.base_url` replaces the API host, and `config.extra["login_url"]` the login host.
- **Discount.** `ensure_discount` creates a `COUPON`/`BULK` promotion. Per-code limits have nowhere
  to live on the promotion, because its own `max_uses` caps every code together. The returned id
  therefore carries them: `<promotion_id>:<max_uses>:<max_uses_per_customer>`. A bare
  `<promotion_id>` means one use per code.
- **Pushing codes.** One `POST /v3/promotions/{id}/codes` per code, with at most `concurrency`
  requests in flight (below the documented 40). Every response carries the 30-second quota headers.
  When `X-Rate-Limit-Requests-Left` reaches 0, every request waits `X-Rate-Limit-Time-Reset-Ms`.
  A 429 raises RateLimited, retried after that reset time. A 409 or 422 on create is looked up with
  `GET /v3/promotions/{id}/codes?code=`, and the code counts as synced only if it belongs to our
  promotion. `GET /v3/promotions/codes?code=` answers with no promotion id, so it only explains
  the failure.
- **Webhooks.** BigCommerce sends thin webhooks (`data.id` only). They are authenticated by a
  secret header we set at registration (`WEBHOOK_HEADER`, value = the webhook secret). Newer HTTPS
  hooks are also signed with Standard Webhooks: the `webhook-signature` header holds
  base64(HMAC-SHA256(client secret, "{webhook-id}.{webhook-timestamp}.{body}")), checked within
  5 minutes. Every proof present must verify, and at least one must be present. `hash` is the
  dedupe id, since duplicates happen. BigCommerce retries for 48 h, then sets `is_active: false`,
  and `register_webhooks` turns such hooks back on.
- **Addresses.** The order holds none: its shipping addresses are their own collection,
  `GET /v2/orders/{id}/shipping_addresses` (`street_1`, `street_2`, `zip`, `country_iso2`; 204
  when empty). Fetching an order asks for it only when the order used a coupon and ships
  (`shipping_address_count` not 0), since an address only matters to a redemption; one request
  more per such order. An order shipping to several addresses is known by its first.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Final, Literal, TypeVar

import httpx
import jwt
from tenacity.wait import wait_base

from connectors import json_body
from connectors.base import (
    REMOVAL_UNCONFIRMED,
    CodeSpec,
    CodeUse,
    ConnectorConfig,
    Credentials,
    Delivery,
    DiscountSpec,
    DiscountState,
    OrderEvent,
    OrderEventKind,
    PushResult,
    ShippingAddress,
    error_message,
    retry_after_seconds,
)
from connectors.errors import AuthError, BadSignature, ConnectorError, NotFound, Rejected, UpstreamError
from connectors.headers import header
from connectors.http import raise_for_status, retrying, send, wait_retry_after
from connectors.money import from_minor, to_minor

# Order status_id -> neutral kind (the table in orders.v2.oas2.yml /order_statuses). The research
# counts a redemption on 2, 3 and 7-11 and reverses it on 4/5/6. A partial refund (14) and a
# dispute (13) leave the order paid; its `refunded_amount` goes to the refund ledger. "Incomplete"
# (0) is a checkout abandoned at the payment page, and store/order/created fires for it too. It
# maps to "failed" so that it never holds a code. A later payment arrives as statusUpdated (for
# example 0 -> 11) and maps to "paid".
ORDER_STATUS_KINDS: Final[Mapping[int, OrderEventKind]] = {
    0: "failed",  # Incomplete
    1: "created",  # Pending
    2: "paid",  # Shipped
    3: "paid",  # Partially Shipped
    4: "refunded",  # Refunded
    5: "cancelled",  # Cancelled
    6: "failed",  # Declined
    7: "paid",  # Awaiting Payment
    8: "paid",  # Awaiting Pickup
    9: "paid",  # Awaiting Shipment
    10: "paid",  # Completed
    11: "paid",  # Awaiting Fulfillment
    12: "created",  # Manual Verification Required
    13: "paid",  # Disputed
    14: "paid",  # Partially Refunded
}

_T = TypeVar("_T")
_R = TypeVar("_R")

SIGNATURE_TOLERANCE: Final = 300.0  # seconds either side, as the Standard Webhooks libraries use


@dataclass(frozen=True)
class SignedPayload:
    """The verified claims of a `signed_payload_jwt` (load, uninstall and remove_user callbacks)."""

    store_hash: str
    user_id: str
    user_email: str
    owner_id: str
    owner_email: str
    locale: str = ""
    url: str = "/"
    channel_id: str | None = None
    jti: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_owner(self) -> bool:
        return self.user_id == self.owner_id


@dataclass(frozen=True)
class Quota:
    """The last rate-limit headers seen (the 30-second window shared by every app on the store)."""

    requests_left: int | None = None
    requests_quota: int | None = None
    reset_ms: int | None = None
    window_ms: int | None = None


@dataclass(frozen=True)
class WebhookRegistration:
    """The state of one of our hooks after `register_webhooks`."""

    topic: str
    id: str
    action: Literal["created", "reactivated", "active"]


@dataclass(frozen=True)
class _DiscountRef:
    promotion_id: str
    max_uses: int = 1
    max_uses_per_customer: int = 0

    @classmethod
    def parse(cls, discount_id: str) -> _DiscountRef:
        parts = discount_id.split(":")
        try:
            if len(parts) == 1 and parts[0].isdigit():
                return cls(parts[0])
            if len(parts) == 3 and parts[0].isdigit():
                return cls(parts[0], int(parts[1]), int(parts[2]))
        except ValueError:
            pass
        raise Rejected(f"not a BigCommerce discount id: {discount_id[:40]!r}")

    def __str__(self) -> str:
        return f"{self.promotion_id}:{self.max_uses}:{self.max_uses_per_customer}"


class BigCommerceAuth(httpx.Auth):
    """The store's access token in `X-Auth-Token` (and our client id in `X-Auth-Client`)."""

    def __init__(self, access_token: str, client_id: str = "") -> None:
        self._token = access_token
        self._client_id = client_id

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["X-Auth-Token"] = self._token
        if self._client_id:
            request.headers["X-Auth-Client"] = self._client_id
        request.headers.setdefault("Accept", "application/json")
        yield request


class BigCommerceConnector:
    name: ClassVar[str] = "bigcommerce"
    API_URL: ClassVar[str] = "https://api.bigcommerce.com"
    LOGIN_URL: ClassVar[str] = "https://login.bigcommerce.com"
    SCOPES: ClassVar[tuple[str, ...]] = ("store_v2_marketing", "store_v2_orders_read_only")
    WEBHOOK_TOPICS: ClassVar[tuple[str, ...]] = ("store/order/created", "store/order/statusUpdated")
    WEBHOOK_HEADER: ClassVar[str] = "X-Couponry-Webhook-Token"
    BATCH_SIZE: ClassVar[int] = 100  # codes per push_codes call; each code is still its own POST
    CONCURRENCY: ClassVar[int] = 20  # requests in flight; the codes endpoints allow 40
    DELETE_BATCH: ClassVar[int] = 50  # "batches are limited to 50 coupon codes" (promotions.v3.yml)
    CODES_PAGE_SIZE: ClassVar[int] = 250  # LimitQuery maximum
    ORDERS_PAGE_SIZE: ClassVar[int] = 50  # the documented default of /v2/orders
    QUOTA_RESERVE: ClassVar[int] = 0  # pause when requests-left falls to this
    JWT_LEEWAY: ClassVar[float] = 60.0
    TIMEOUT: ClassVar[float] = 30.0

    def __init__(
        self,
        client: httpx.AsyncClient,
        config: ConnectorConfig,
        credentials: Credentials | None = None,
        *,
        wait: wait_base | None = None,
        max_attempts: int = 4,
        concurrency: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._config = config
        self._credentials = credentials
        self._wait = wait if wait is not None else wait_retry_after()
        self._max_attempts = max_attempts
        self._concurrency = concurrency or self.CONCURRENCY
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._resume_at = 0.0
        self._pause = asyncio.Lock()
        self.quota = Quota()

    # --- app lifecycle --------------------------------------------------------------------

    async def exchange_code(self, *, code: str, scope: str, context: str, redirect_uri: str) -> Credentials:
        """Trade the auth callback's code for the store's token (before answering the browser).

        Not retried: a code works once.
        """
        granted = scope.split()
        missing = [s for s in self.SCOPES if s not in granted and s.removesuffix("_read_only") not in granted]
        if missing:
            raise AuthError(f"the app was granted {scope!r} but needs {' '.join(missing)}")
        body = {
            "client_id": self._config.client_id,
            "client_secret": self._config.client_secret,
            "code": code,
            "context": context,
            "scope": scope,
            "grant_type": "authorization_code",
            "redirect_uri": redirect_uri,
        }
        url = self._config.extra.get("login_url", self.LOGIN_URL).rstrip("/") + "/oauth2/token"
        response = await send(self._client, "POST", url, json=body, headers={"Accept": "application/json"}, timeout=self.TIMEOUT)
        if response.status_code in (400, 401, 403):
            raise AuthError(f"BigCommerce refused the code: {error_message(response)}", status=response.status_code)
        raise_for_status(response, platform=self.name, message=_bc_error)
        token = _json_object(response)
        if token.get("context", context) != context or not token.get("access_token"):
            raise AuthError("BigCommerce answered a token for another store")
        user, owner = token.get("user") or {}, token.get("owner") or {}
        return Credentials(
            shop_domain=_store_hash(context),
            access_token=str(token["access_token"]),
            scopes=tuple(str(token.get("scope", scope)).split()),
            extra={
                "context": context,
                "user_id": str(user.get("id", "")),
                "user_email": str(user.get("email", "")),
                "owner_id": str(owner.get("id", "")),
                "owner_email": str(owner.get("email", "")),
                "account_uuid": str(token.get("account_uuid", "")),
            },
        )

    def verify_signed_payload(self, signed_payload_jwt: str) -> SignedPayload:
        """Verify the JWT of a load, uninstall or remove_user callback; raise BadSignature otherwise."""
        if not self._config.client_secret or not self._config.client_id:
            raise BadSignature("no BigCommerce client id/secret configured")
        try:
            claims = jwt.decode(
                signed_payload_jwt,
                self._config.client_secret,
                algorithms=["HS256"],
                audience=self._config.client_id,
                issuer="bc",
                leeway=self.JWT_LEEWAY,
                options={"require": ["aud", "iss", "exp", "nbf", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise BadSignature(f"signed_payload_jwt rejected: {exc}") from exc
        sub = str(claims.get("sub", ""))
        if not sub.startswith("stores/"):
            raise BadSignature("signed_payload_jwt has no store")
        user, owner = claims.get("user") or {}, claims.get("owner") or {}
        channel = claims.get("channel_id")
        return SignedPayload(
            store_hash=_store_hash(sub),
            user_id=str(user.get("id", "")),
            user_email=str(user.get("email", "")),
            owner_id=str(owner.get("id", "")),
            owner_email=str(owner.get("email", "")),
            locale=str(user.get("locale", "")),
            url=str(claims.get("url") or "/"),
            channel_id=None if channel is None else str(channel),
            jti=str(claims.get("jti", "")),
            claims=claims,
        )

    def parse_callback(self, query: Mapping[str, str]) -> SignedPayload:
        """The `/load`, `/uninstall` and `/remove_user` callbacks: `?signed_payload_jwt=...`."""
        token = query.get("signed_payload_jwt")
        if not token:
            raise BadSignature("missing signed_payload_jwt")
        return self.verify_signed_payload(token)

    # --- codes out ------------------------------------------------------------------------

    async def ensure_discount(self, spec: DiscountSpec) -> str:
        """Create (or update) the coupon promotion; a promotion of ours with the same name is reused."""
        body = self._promotion_body(spec)
        max_uses = spec.uses_per_code or 0  # 0 = unlimited on BigCommerce
        per_customer = 1 if spec.once_per_customer else 0
        if spec.platform_discount_id:
            ref = _DiscountRef.parse(spec.platform_discount_id)
            await self._request("PUT", f"v3/promotions/{ref.promotion_id}", json=body)
            return str(_DiscountRef(ref.promotion_id, max_uses, per_customer))
        listing = _json_object(await self._request("GET", "v3/promotions", params={"name": body["name"]}))
        for promotion in listing.get("data") or ():
            if promotion.get("name") == body["name"] and promotion.get("redemption_type") == "COUPON":
                await self._request("PUT", f"v3/promotions/{promotion['id']}", json=body)
                return str(_DiscountRef(str(promotion["id"]), max_uses, per_customer))
        created = _json_object(await self._request("POST", "v3/promotions", json=body))
        return str(_DiscountRef(str(created["data"]["id"]), max_uses, per_customer))

    async def set_discount_status(self, discount_id: str, state: DiscountState) -> None:
        """The promotion's `status` (`PUT /v3/promotions/{id}` takes a partial promotion): ENABLED,
        or DISABLED for both a pause and an end. An end keeps the promotion: BigCommerce refuses to
        delete a promotion that still holds coupon codes, and a disabled one takes none."""
        ref = _DiscountRef.parse(discount_id)
        status = "ENABLED" if state == "active" else "DISABLED"
        await self._request("PUT", f"v3/promotions/{ref.promotion_id}", json={"status": status})

    async def push_codes(self, discount_id: str, codes: Sequence[CodeSpec]) -> list[PushResult]:
        """One POST per code, `concurrency` at a time.

        Per-code refusals come back as failed results. A transient error that outlives the retries,
        or an auth error, is raised for the whole call. Re-pushing is safe, because a code that
        already exists in our promotion counts as synced.
        """
        ref = _DiscountRef.parse(discount_id)
        return await self._each(codes, lambda spec: self._create_code(ref, spec))

    async def deactivate_codes(self, discount_id: str, codes: Sequence[str]) -> list[PushResult]:
        """Delete the codes from our promotion (lookups, then `DELETE ...codes?id:in=`, 50 at a time)."""
        ref = _DiscountRef.parse(discount_id)
        found = await self._each(codes, lambda code: self._find_code(ref.promotion_id, code))
        results: dict[int, PushResult] = {}
        to_delete: list[tuple[int, str]] = []
        for index, (code, item) in enumerate(zip(codes, found, strict=True)):
            if item is None:  # a lookup that misses proves nothing: the listing decides
                results[index] = PushResult(code=code, ok=False, error=REMOVAL_UNCONFIRMED)
            else:
                to_delete.append((index, str(item["id"])))
        for start in range(0, len(to_delete), self.DELETE_BATCH):
            chunk = to_delete[start : start + self.DELETE_BATCH]
            ids = ",".join(code_id for _, code_id in chunk)
            response = await self._request("DELETE", f"v3/promotions/{ref.promotion_id}/codes?id:in={ids}", accept=(422,))
            failures = _bulk_failures(response) if response.status_code == 422 else {}
            for position, (index, code_id) in enumerate(chunk):
                error = failures.get(position)
                results[index] = PushResult(code=codes[index], ok=error is None, platform_id=code_id, error=error)
        return [results[index] for index in range(len(codes))]

    async def list_codes(self, discount_id: str) -> AsyncIterator[str]:
        ref = _DiscountRef.parse(discount_id)
        params: dict[str, Any] = {"limit": self.CODES_PAGE_SIZE}
        while True:
            page = _json_object(await self._request("GET", f"v3/promotions/{ref.promotion_id}/codes", params=params))
            data = page.get("data") or []
            for item in data:
                yield str(item["code"])
            cursor = (page.get("meta") or {}).get("cursor_pagination") or {}
            if not data or not (cursor.get("links") or {}).get("next") or not cursor.get("end_cursor"):
                return
            params = {"limit": self.CODES_PAGE_SIZE, "after": cursor["end_cursor"]}

    # --- orders in ------------------------------------------------------------------------

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        token = header(headers, self.WEBHOOK_HEADER)
        signature = header(headers, "webhook-signature")
        if token is None and signature is None:
            raise BadSignature(f"missing {self.WEBHOOK_HEADER} header and webhook-signature")
        if token is not None:
            secret = self._webhook_secret()
            if not secret or not hmac.compare_digest(token.encode(), secret.encode()):
                raise BadSignature(f"{self.WEBHOOK_HEADER} does not match")
        if signature is not None:
            self._verify_standard_signature(headers, body, signature)

    def identify_webhook(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        return self.parse_webhook(headers, body)  # thin: its id and store are all the body holds

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        try:
            payload = json_body.loads(body)
        except ValueError as exc:
            raise ConnectorError("malformed BigCommerce webhook body") from exc
        if not isinstance(payload, dict):
            raise ConnectorError("malformed BigCommerce webhook body")
        scope = str(payload.get("scope", ""))
        producer = str(payload.get("producer", ""))
        shop = _store_hash(producer) if producer.startswith("stores/") else self._store_hash_or_empty()
        delivery_id = str(payload.get("hash") or hashlib.sha256(body).hexdigest())
        data = payload.get("data") or {}
        if not (scope.startswith("store/order/") and isinstance(data, dict) and data.get("type") == "order" and "id" in data):
            return Delivery(delivery_id=delivery_id, topic=scope, shop=shop, kind="other")
        status = data.get("status") or {}
        new_status = status.get("new_status_id") if isinstance(status, dict) else None
        # Only statusUpdated says what happened. For the other scopes, "updated" means: the order
        # has changed, and its fetched status says what it is now.
        kind = _status_kind(new_status) if new_status is not None else "updated"
        created_at = payload.get("created_at")
        event = OrderEvent(
            platform=self.name,
            shop=shop,
            kind=kind,
            order_id=str(data["id"]),
            occurred_at=datetime.fromtimestamp(created_at, UTC) if isinstance(created_at, int | float) else None,
            delivery_id=delivery_id,
            needs_fetch=True,
        )
        return Delivery(delivery_id=delivery_id, topic=scope, shop=shop, kind="order", events=(event,))

    async def store_timezone(self) -> str | None:
        """The store's IANA time zone: `timezone.name` of Get Store Information (`GET /v2/store`),
        None when the answer has none."""
        store = _json_object(await self._request("GET", "v2/store"))
        zone = (store.get("timezone") or {}).get("name") if isinstance(store.get("timezone"), dict) else None
        return zone if isinstance(zone, str) and zone else None

    async def fetch_order(self, order_id: str) -> OrderEvent:
        """`/v2/orders/{id}` and `/v2/orders/{id}/coupons` (and its shipping address), as one complete event."""
        order_response, coupons_response = await asyncio.gather(
            self._request("GET", f"v2/orders/{order_id}"), self._request("GET", f"v2/orders/{order_id}/coupons")
        )
        order, coupons = _json_object(order_response), _json_list(coupons_response)
        return self._order_event(order, coupons, await self._shipping_address(order, coupons))

    async def list_recent_orders(self, modified_after: datetime) -> AsyncIterator[OrderEvent]:
        """Orders modified since `modified_after`, complete with their coupons, for the periodic poll."""
        since = modified_after if modified_after.tzinfo else modified_after.replace(tzinfo=UTC)
        page = 1
        while True:
            params = {
                "min_date_modified": since.astimezone(UTC).isoformat(timespec="seconds"),
                "sort": "date_modified:asc",
                "page": page,
                "limit": self.ORDERS_PAGE_SIZE,
            }
            orders = _json_list(await self._request("GET", "v2/orders", params=params))
            for order in orders:
                coupons = _json_list(await self._request("GET", f"v2/orders/{order['id']}/coupons"))
                yield self._order_event(order, coupons, await self._shipping_address(order, coupons))
            if len(orders) < self.ORDERS_PAGE_SIZE:
                return
            page += 1

    async def register_webhooks(self, delivery_url: str, secret: str) -> list[WebhookRegistration]:
        """Create our hooks with the secret header, or turn back on those BigCommerce deactivated.

        Safe to run again and again (the nightly job does).
        """
        existing: list[dict[str, Any]] = []
        page = 1
        while True:
            listing = _json_object(await self._request("GET", "v3/hooks", params={"page": page, "limit": 250}))
            existing.extend(hook for hook in listing.get("data") or () if isinstance(hook, dict))
            pagination = (listing.get("meta") or {}).get("pagination") or {}
            if page >= int(pagination.get("total_pages") or 1):
                break
            page += 1
        headers = {self.WEBHOOK_HEADER: secret}
        registrations: list[WebhookRegistration] = []
        for topic in self.WEBHOOK_TOPICS:
            hook = next((h for h in existing if h.get("scope") == topic and h.get("destination") == delivery_url), None)
            if hook is None:
                body = {"scope": topic, "destination": delivery_url, "is_active": True, "headers": headers}
                created = _json_object(await self._request("POST", "v3/hooks", json=body))
                registrations.append(WebhookRegistration(topic=topic, id=str(created["data"]["id"]), action="created"))
            elif not hook.get("is_active") or (hook.get("headers") or {}).get(self.WEBHOOK_HEADER) != secret:
                await self._request("PUT", f"v3/hooks/{hook['id']}", json={"is_active": True, "headers": headers})
                registrations.append(WebhookRegistration(topic=topic, id=str(hook["id"]), action="reactivated"))
            else:
                registrations.append(WebhookRegistration(topic=topic, id=str(hook["id"]), action="active"))
        return registrations

    # --- internals: promotion and codes ---------------------------------------------------

    def _promotion_body(self, spec: DiscountSpec) -> dict[str, Any]:
        items: dict[str, Any] | None = None
        products = [{"products": _int_ids(spec.product_ids, "product")}] if spec.product_ids else []
        categories = [{"categories": _int_ids(spec.collection_ids, "category")}] if spec.collection_ids else []
        if products or categories:
            matchers = products + categories
            items = matchers[0] if len(matchers) == 1 else {"or": matchers}
        if spec.kind == "free_shipping":
            action: dict[str, Any] = {"shipping": {"free_shipping": True, "zone_ids": "*"}}
        else:
            if spec.kind == "percentage":
                discount: dict[str, str] = {"percentage_amount": str(spec.value)}
            else:
                discount = {"fixed_amount": from_minor(spec.value, spec.currency)}
            if items is None:
                action = {"cart_value": {"discount": discount}}
            else:
                action = {"cart_items": {"discount": discount, "items": items, "as_total": spec.kind == "fixed_amount"}}
        cart: dict[str, Any] = {}
        if spec.minimum_subtotal:
            cart["minimum_spend"] = from_minor(spec.minimum_subtotal, spec.currency)
        if items is not None and spec.kind == "free_shipping":
            cart["items"] = items  # free shipping only when a matching item is in the cart
            cart["minimum_quantity"] = spec.minimum_quantity or 1
        rule: dict[str, Any] = {"action": action, "apply_once": True, "stop": False}
        if cart:
            rule["condition"] = {"cart": cart}
        body: dict[str, Any] = {
            "name": f"{spec.title[:200]} (Couponry #{spec.campaign_id})",
            "redemption_type": "COUPON",
            "coupon_type": "BULK",
            "rules": [rule],
            "notifications": [],
            "stop": False,
            "status": "ENABLED",
            "currency_code": spec.currency if spec.kind == "fixed_amount" or spec.minimum_subtotal else "*",
            "can_be_used_with_other_promotions": spec.combines_with_codes or spec.combines_with_automatic,
        }
        if spec.starts_at:
            body["start_date"] = spec.starts_at.astimezone(UTC).isoformat(timespec="seconds")
        if spec.ends_at:
            body["end_date"] = spec.ends_at.astimezone(UTC).isoformat(timespec="seconds")
        return body

    async def _create_code(self, ref: _DiscountRef, spec: CodeSpec) -> PushResult:
        code = spec.display or spec.code
        body = {"code": code, "max_uses": ref.max_uses, "max_uses_per_customer": ref.max_uses_per_customer}
        try:
            response = await self._request("POST", f"v3/promotions/{ref.promotion_id}/codes", json=body)
        except Rejected as exc:
            if exc.status not in (409, 422):
                return PushResult(code=spec.code, ok=False, error=str(exc))
            existing = await self._find_code(ref.promotion_id, code)
            if existing is not None:
                return PushResult(code=spec.code, ok=True, platform_id=str(existing["id"]))
            if await self._code_exists_anywhere(code):
                return PushResult(code=spec.code, ok=False, error="code already used by another promotion on the store")
            return PushResult(code=spec.code, ok=False, error=str(exc))
        return PushResult(code=spec.code, ok=True, platform_id=str(_json_object(response)["data"]["id"]))

    async def _find_code(self, promotion_id: str, code: str) -> dict[str, Any] | None:
        page = _json_object(await self._request("GET", f"v3/promotions/{promotion_id}/codes", params={"code": code}))
        return next((item for item in page.get("data") or () if str(item.get("code", "")).casefold() == code.casefold()), None)

    async def _code_exists_anywhere(self, code: str) -> bool:
        page = _json_object(await self._request("GET", "v3/promotions/codes", params={"code": code}))
        return any(str(item.get("code", "")).casefold() == code.casefold() for item in page.get("data") or ())

    async def _each(self, items: Sequence[_T], work: Callable[[_T], Awaitable[_R]]) -> list[_R]:
        """Run `work` on every item, `concurrency` at a time; results in order, first hard error raised."""
        gate = asyncio.Semaphore(self._concurrency)

        async def one(item: _T) -> _R:
            async with gate:
                return await work(item)

        outcomes = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, AuthError | NotFound)), errors[0])
        return [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]

    # --- internals: orders ----------------------------------------------------------------

    async def _shipping_address(self, order: Mapping[str, Any], coupons: Sequence[Mapping[str, Any]]) -> ShippingAddress | None:
        """The order's first shipping address, asked for only when it matters (see the module doc)."""
        if not any(c.get("code") for c in coupons) or order.get("shipping_address_count") == 0:
            return None
        rows = _json_list(await self._request("GET", f"v2/orders/{order['id']}/shipping_addresses"))
        for row in sorted(rows, key=lambda r: int(r.get("id") or 0)):
            address = ShippingAddress.from_fields(row, "street_1", "street_2", "zip", "country_iso2")
            if address is not None:
                return address
        return None

    def _order_event(
        self, order: Mapping[str, Any], coupons: Sequence[Mapping[str, Any]], shipping_address: ShippingAddress | None = None
    ) -> OrderEvent:
        currency = str(order.get("default_currency_code") or order.get("currency_code") or "USD")
        billing = order.get("billing_address") or {}
        customer = order.get("customer_id")
        channel = order.get("channel_id")
        try:
            occurred_at: datetime | None = parsedate_to_datetime(str(order.get("date_modified"))).astimezone(UTC)
        except (TypeError, ValueError):
            occurred_at = None
        return OrderEvent(
            platform=self.name,
            shop=self._store_hash_or_empty(),
            kind=_status_kind(order.get("status_id")),
            order_id=str(order["id"]),
            codes=tuple(
                CodeUse(code=str(coupon["code"]), amount=to_minor(coupon.get("discount") or 0, currency))
                for coupon in coupons
                if coupon.get("code")
            ),
            customer_id=str(customer) if customer else None,
            email=billing.get("email") or None,
            subtotal=to_minor(order.get("subtotal_ex_tax") or 0, currency),
            total=to_minor(order.get("total_inc_tax") or 0, currency),
            currency=currency,
            channel=None if channel is None else str(channel),
            occurred_at=occurred_at,
            shipping_address=shipping_address,
            # the order's refunded sum so far: a partial refund (status 14) leaves it "paid"
            refunded_total=to_minor(order.get("refunded_amount") or 0, currency) or None,
        )

    # --- internals: webhooks --------------------------------------------------------------

    def _webhook_secret(self) -> str:
        if self._credentials is not None and self._credentials.extra.get("webhook_secret"):
            return self._credentials.extra["webhook_secret"]
        return self._config.webhook_secret

    def _verify_standard_signature(self, headers: Mapping[str, str], body: bytes, signature: str) -> None:
        """Standard Webhooks: v1,base64(HMAC-SHA256(client secret, "{id}.{timestamp}.{body}"))."""
        message_id = header(headers, "webhook-id")
        timestamp = header(headers, "webhook-timestamp")
        if not message_id or not timestamp or not self._config.client_secret:
            raise BadSignature("incomplete webhook signature headers")
        try:
            sent_at = float(timestamp)
        except ValueError as exc:
            raise BadSignature("malformed webhook-timestamp") from exc
        if abs(self._wall_clock() - sent_at) > SIGNATURE_TOLERANCE:
            raise BadSignature("webhook-timestamp outside the tolerance (replay?)")
        signed = message_id.encode() + b"." + timestamp.encode() + b"." + body
        expected = base64.b64encode(hmac.new(self._config.client_secret.encode(), signed, hashlib.sha256).digest())
        for candidate in signature.split():
            version, _, value = candidate.partition(",")
            if version == "v1" and hmac.compare_digest(expected, value.encode()):
                return
        raise BadSignature("webhook-signature does not match the body")

    # --- internals: HTTP ------------------------------------------------------------------

    def _store_hash_or_empty(self) -> str:
        return self._credentials.shop_domain if self._credentials is not None else ""

    def _auth(self) -> BigCommerceAuth:
        if self._credentials is None or not self._credentials.access_token:
            raise AuthError("no BigCommerce store token")
        return BigCommerceAuth(self._credentials.access_token, self._config.client_id)

    def _api_root(self) -> str:
        store_hash = self._store_hash_or_empty()
        if not store_hash:
            raise AuthError("no BigCommerce store hash")
        return f"{(self._config.base_url or self.API_URL).rstrip('/')}/stores/{store_hash}/"

    async def _await_quota(self) -> None:
        """Hold every request while the store's quota window is spent (one sleeper at a time)."""
        async with self._pause:
            while (delay := self._resume_at - self._clock()) > 0:
                await self._sleep(delay)

    def _note_quota(self, response: httpx.Response) -> None:
        quota = Quota(
            requests_left=_int_header(response, "X-Rate-Limit-Requests-Left"),
            requests_quota=_int_header(response, "X-Rate-Limit-Requests-Quota"),
            reset_ms=_int_header(response, "X-Rate-Limit-Time-Reset-Ms"),
            window_ms=_int_header(response, "X-Rate-Limit-Time-Window-Ms"),
        )
        if quota.reset_ms is None:
            return
        self.quota = quota
        spent = quota.requests_left is not None and quota.requests_left <= self.QUOTA_RESERVE
        if spent or response.status_code == 429:
            self._resume_at = max(self._resume_at, self._clock() + quota.reset_ms / 1000)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        url, auth = self._api_root() + path, self._auth()

        async def attempt() -> httpx.Response:
            await self._await_quota()
            response = await send(self._client, method, url, params=params, json=json, auth=auth, timeout=self.TIMEOUT)
            self._note_quota(response)
            if response.status_code in accept:
                return response
            return raise_for_status(response, platform=self.name, message=_bc_error, retry_after=_reset_seconds)

        return await retrying(attempt, attempts=self._max_attempts, wait=self._wait)


# --- helpers ----------------------------------------------------------------------------------


def _reset_seconds(response: httpx.Response) -> float | None:
    """How long a 429 asks us to wait: X-Rate-Limit-Time-Reset-Ms, else a Retry-After."""
    reset = _int_header(response, "X-Rate-Limit-Time-Reset-Ms")
    return reset / 1000 if reset is not None else retry_after_seconds(response.headers)


def _bc_error(response: httpx.Response) -> str:
    """Either {"errors": [{"status", "title"}]}, {status, title, type, detail} or [{"status", "message"}]."""
    return f"BigCommerce: {_bc_detail(response)}"


def _bc_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        first = body["errors"][0]
        if isinstance(first, dict):
            return str(first.get("title") or first.get("detail") or first)
    if isinstance(body, dict) and (body.get("title") or body.get("detail")):
        return " - ".join(str(body[key]) for key in ("title", "detail") if body.get(key))
    if isinstance(body, list) and body and isinstance(body[0], dict) and body[0].get("message"):
        return str(body[0]["message"])
    return error_message(response)


def _bulk_failures(response: httpx.Response) -> dict[int, str]:
    """Per-item failures of a bulk delete: errors[].errors = {"<index>.<field>": "message"}."""
    failures: dict[int, str] = {}
    try:
        body = response.json()
    except ValueError:
        body = {}
    for error in body.get("errors") or () if isinstance(body, dict) else ():
        for key, message in (error.get("errors") or {}).items() if isinstance(error, dict) else ():
            index = str(key).partition(".")[0]
            if index.isdigit():
                failures[int(index)] = str(message)
    return failures


def _json(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise UpstreamError(f"BigCommerce sent a body that is not JSON (HTTP {response.status_code})") from exc


def _json_object(response: httpx.Response) -> dict[str, Any]:
    body = _json(response)
    if not isinstance(body, dict):
        raise UpstreamError("BigCommerce sent an unexpected body")
    return body


def _json_list(response: httpx.Response) -> list[dict[str, Any]]:
    """v2 collections: a JSON array, or 204 No Content when empty."""
    body = _json(response)
    if body is None:
        return []
    if not isinstance(body, list):
        raise UpstreamError("BigCommerce sent an unexpected body")
    return [item for item in body if isinstance(item, dict)]


def _status_kind(status_id: object) -> OrderEventKind:
    try:
        return ORDER_STATUS_KINDS.get(int(str(status_id)), "updated")
    except ValueError:
        return "updated"


def _int_header(response: httpx.Response, name: str) -> int | None:
    try:
        return int(response.headers[name])
    except (KeyError, ValueError):
        return None


def _int_ids(ids: Sequence[str], what: str) -> list[int]:
    try:
        return [int(value) for value in ids]
    except ValueError as exc:
        raise Rejected(f"BigCommerce {what} ids are integers") from exc


def _store_hash(context: str) -> str:
    return context.removeprefix("stores/").strip("/")
