"""WooCommerce (REST API v3, `wc/v3`): coupons pushed 100 at a time, full orders in signed webhooks.

What is particular to WooCommerce (sources in shared/research/platforms.md, section 1):

- **Auth.** The consumer key and secret go in HTTP Basic auth over HTTPS. Some servers drop the
  `Authorization` header, so a store can set `Credentials.extra["auth"] = "query"` to send the keys
  as query parameters instead. OAuth 1.0a (needed over plain HTTP) is not supported.
  The keys come from the `/wc-auth/v1/authorize` flow (see `authorize_url`,
  `parse_auth_callback`, `credentials`) or from manual entry.
- **No campaign-level discount.** `ensure_discount` makes no API call. It returns a self-describing
  id, `woo1.<base64url JSON>`, that holds the coupon template (type, amount, limits, products,
  expiry). `push_codes` copies those rules onto every coupon and tags each one with the meta key
  `couponry_campaign_id`. The tag tells our coupons apart from the merchant's own coupons.
- **Batches.** `POST coupons/batch` takes at most 100 operations. Errors come back per item inside
  an HTTP 200, so each item is read on its own. A code that already exists
  (`woocommerce_rest_coupon_code_already_exists`) is looked up with `GET coupons?code=`. It counts
  as synced only if it carries our campaign tag.
- **Following the campaign.** A coupon's `status` is writable (REST v2/v3 coupon schema: "draft,
  published, or pending review"), and WooCommerce finds a coupon by code only when it is published
  (`WC_Coupon_Data_Store_CPT::get_ids_by_code`: `post_status = 'publish'`), at checkout as in
  `GET coupons?code=` and in the create's duplicate check. So a pause makes our coupons `draft`
  and a resume `publish` again, with the rules rewritten in the same `update` items
  (`update_codes`), by each coupon's stored id: a draft can't be looked up by its code, so the
  lookup is only for a code whose id we lack. A code already pushed is pushed again by an update
  of its id, never a create (a create would duplicate a draft). A trashed coupon is not held.
- **Case.** Core lowercases every coupon code (`wc_strtolower`), so we send the display form in
  lower case. A store that removed that filter can set `Credentials.extra["code_case"] = "preserve"`.
  `deactivate_codes` expects the display form too, the same string that was pushed.
- **Webhooks.** `X-WC-Webhook-Signature` is base64(HMAC-SHA256(raw body, secret)). The creation
  ping is an unsigned form body `webhook_id=<id>` and needs a 200. Order payloads are the full
  order. WooCommerce never retries a failed delivery, and it disables a hook after more than 5
  failures in a row. So `register_webhooks` re-enables disabled hooks, and `list_recent_orders`
  feeds the periodic poll that fills the gaps.
- **Delivery ids.** `X-WC-Webhook-Delivery-ID` is `wp_hash(webhook_id . time)`, which is not unique
  per event. `Delivery.delivery_id` is therefore `order:<id>:<date_modified_gmt>:<status>`, the
  dedupe key the research recommends. Two deliveries of the same order state collapse into one,
  and two different states never do. The header value is kept in `OrderEvent.delivery_id`.
- **Addresses.** The order's `shipping` object (`address_1`, `address_2`, `postcode`, `country`,
  an ISO alpha-2 code) becomes `OrderEvent.shipping_address`; virtual orders leave it blank.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Literal
from urllib.parse import urlencode

import httpx
from tenacity.wait import wait_base

from connectors import json_body
from connectors.base import (
    CODE_GONE,
    REMOVAL_UNCONFIRMED,
    CodeEnd,
    CodeSpec,
    CodeState,
    CodeUse,
    ConnectorConfig,
    Credentials,
    Delivery,
    DiscountSpec,
    OrderEvent,
    OrderEventKind,
    PushResult,
    Refund,
    ShippingAddress,
)
from connectors.egress import THIRD_PARTY
from connectors.errors import AuthError, BadSignature, ConnectorError, Rejected, UpstreamError
from connectors.headers import header
from connectors.http import NotSent, Wait, raise_for_status, retrying, send, wait_retry_after
from connectors.money import from_minor, to_minor

# Order status -> neutral kind. Usage is counted on processing/completed; WooCommerce itself gives
# the use back on cancelled/failed/trash but not on refunded (wc_update_coupon_usage_counts).
ORDER_STATUS_KINDS: Final[Mapping[str, OrderEventKind]] = {
    "pending": "created",
    "checkout-draft": "created",
    "on-hold": "created",
    "processing": "paid",
    "completed": "paid",
    "cancelled": "cancelled",
    "trash": "cancelled",
    "refunded": "refunded",
    "failed": "failed",
}

CAMPAIGN_META_KEY: Final = "couponry_campaign_id"
DUPLICATE_CODE: Final = "woocommerce_rest_coupon_code_already_exists"
INVALID_ID: Final = "woocommerce_rest_shop_coupon_invalid_id"  # update or delete of an id WooCommerce doesn't hold
POST_STATUS: Final[Mapping[CodeState, str]] = {"active": "publish", "paused": "draft"}
# What a rule edit can take away, sent under the template's fields in every update in place, so a
# removed limit or minimum is cleared rather than left as it was (0 = none for WooCommerce).
_CLEARED: Final[Mapping[str, Any]] = {
    "usage_limit": 0,
    "usage_limit_per_user": 0,
    "minimum_amount": "0",
    "product_ids": [],
    "product_categories": [],
    "free_shipping": False,
    "date_expires_gmt": None,
}
_NOT_OURS: Final = "coupon is not part of this campaign; left alone"
_NOT_FOUND: Final = "no stored coupon id and not found by its code (a draft can't be): left as it was"
_DISCOUNT_PREFIX: Final = "woo1."
_PING = re.compile(rb"webhook_id=\d+")
# the store's host is whatever the merchant typed: a client built by connectors.egress sends
# these requests to public addresses only (checked when connecting)
THIRD_PARTY_HOST: Final = {THIRD_PARTY: True}


@dataclass(frozen=True)
class WooAuthKeys:
    """What WooCommerce POSTs (as JSON) to our callback_url at the end of /wc-auth/v1/authorize."""

    user_id: str  # our own reference for the tenant, echoed back
    consumer_key: str
    consumer_secret: str
    key_permissions: str
    key_id: str = ""


@dataclass(frozen=True)
class WebhookRegistration:
    """The state of one of our webhooks after `register_webhooks`."""

    topic: str
    id: str
    action: Literal["created", "reactivated", "active", "paused"]


class WooCommerceAuth(httpx.Auth):
    """Consumer key/secret: HTTP Basic over HTTPS, or query parameters for servers that drop the header."""

    def __init__(self, consumer_key: str, consumer_secret: str, *, in_query: bool = False) -> None:
        self._key = consumer_key
        self._secret = consumer_secret
        self._in_query = in_query

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._in_query:
            request.url = request.url.copy_merge_params({"consumer_key": self._key, "consumer_secret": self._secret})
        else:
            token = base64.b64encode(f"{self._key}:{self._secret}".encode()).decode()
            request.headers["Authorization"] = f"Basic {token}"
        yield request


class WooCommerceConnector:
    name: ClassVar[str] = "woocommerce"
    API_PATH: ClassVar[str] = "/wp-json/wc/v3/"
    SCOPES: ClassVar[tuple[str, ...]] = ("read_write",)
    WEBHOOK_TOPICS: ClassVar[tuple[str, ...]] = ("order.created", "order.updated", "order.deleted", "order.restored")
    BATCH_SIZE: ClassVar[int] = 100  # create + update + delete together (woocommerce_rest_batch_items_limit)
    PAGE_SIZE: ClassVar[int] = 100  # per_page maximum
    LOOKUP_CONCURRENCY: ClassVar[int] = 5
    TIMEOUT: ClassVar[float] = 30.0
    STORE_INDEX_LIMIT: ClassVar[int] = 1_000_000  # bytes of /wp-json/ read when checking a store
    RETRY_WAIT: ClassVar[wait_base | Wait | None] = None  # None: honour Retry-After, else back off

    def __init__(
        self,
        client: httpx.AsyncClient,
        config: ConnectorConfig,
        credentials: Credentials | None = None,
        *,
        wait: wait_base | None = None,
        max_attempts: int = 4,
    ) -> None:
        self._client = client
        self._config = config
        self._credentials = credentials
        self._wait = wait if wait is not None else (type(self).RETRY_WAIT or wait_retry_after())
        self._max_attempts = max_attempts

    # --- install --------------------------------------------------------------------------

    def authorize_url(
        self, store_url: str, *, app_name: str, user_id: str, return_url: str, callback_url: str, scope: str = "read_write"
    ) -> str:
        """Where to send the merchant to approve our keys (all five parameters are mandatory).

        `user_id` is our own reference for the tenant: make it unguessable (e.g. signed), because
        the callback that carries the keys is not signed by WooCommerce.
        """
        if not callback_url.startswith("https://"):
            raise ValueError("WooCommerce posts the keys only to an HTTPS callback_url")
        query = urlencode(
            {"app_name": app_name, "scope": scope, "user_id": user_id, "return_url": return_url, "callback_url": callback_url}
        )
        return f"{self._store_root(store_url)}/wc-auth/v1/authorize?{query}"

    @staticmethod
    def parse_auth_callback(body: bytes) -> WooAuthKeys:
        """Read the keys WooCommerce POSTs to callback_url (a raw JSON body, not form data)."""
        try:
            data = json.loads(body)
            return WooAuthKeys(
                user_id=str(data["user_id"]),
                consumer_key=str(data["consumer_key"]),
                consumer_secret=str(data["consumer_secret"]),
                key_permissions=str(data.get("key_permissions", "")),
                key_id=str(data.get("key_id", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConnectorError("malformed WooCommerce auth callback") from exc

    @staticmethod
    def credentials(
        store_url: str, keys: WooAuthKeys, *, auth: Literal["basic", "query"] = "basic", webhook_secret: str = ""
    ) -> Credentials:
        """Credentials for a store: the consumer secret is the token to encrypt at rest."""
        extra = {"consumer_key": keys.consumer_key, "auth": auth}
        if webhook_secret:
            extra["webhook_secret"] = webhook_secret
        return Credentials(shop_domain=store_url, access_token=keys.consumer_secret, scopes=(keys.key_permissions,), extra=extra)

    async def verify_store(self, store_url: str) -> None:
        """Check that `store_url` is a WooCommerce store before we send a merchant there: the
        WordPress REST index (`GET /wp-json/`, public, no keys needed) lists the `wc/v3` namespace
        when WooCommerce's REST API is on, which the connector needs anyway. `_fields=namespaces`
        keeps the answer to a few hundred bytes; more than `STORE_INDEX_LIMIT` is refused unread.

        Raises Rejected when the answer is not a WooCommerce index, UpstreamError (NotSent) when
        the store cannot be reached. The messages never quote the store's answer."""
        url = f"{self._store_root(store_url)}/wp-json/"
        try:
            async with self._client.stream(
                "GET",
                url,
                params={"_fields": "namespaces"},
                timeout=self.TIMEOUT,
                follow_redirects=False,
                extensions=THIRD_PARTY_HOST,
            ) as response:
                body = await _read_capped(response, self.STORE_INDEX_LIMIT)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NotSent(f"could not reach {httpx.URL(url).host}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{httpx.URL(url).host} did not answer properly") from exc
        if body is None:
            raise Rejected(f"the store's REST index is larger than {self.STORE_INDEX_LIMIT} bytes")
        if response.status_code != 200:
            raise Rejected(f"the store answered HTTP {response.status_code} at /wp-json/, not its REST index")
        try:
            namespaces = json.loads(body).get("namespaces")
        except (ValueError, AttributeError) as exc:
            raise Rejected("the store's /wp-json/ is not a WordPress REST index") from exc
        if not isinstance(namespaces, list) or "wc/v3" not in namespaces:
            raise Rejected("the store's REST index has no wc/v3 namespace (is WooCommerce active?)")

    async def verify_credentials(self) -> None:
        """One cheap authenticated read; raises AuthError when the keys are wrong or lack rights."""
        await self._request("GET", "coupons", params={"per_page": 1})

    # --- codes out ------------------------------------------------------------------------

    async def ensure_discount(self, spec: DiscountSpec) -> str:
        """WooCommerce has no campaign-level discount: return the coupon template as the id.

        No API call is made, and the same spec always gives the same id. Rules the coupon cannot
        hold (start date, minimum quantity, collections other than categories) are left to Couponry.
        """
        coupon: dict[str, Any] = {"description": f"{spec.title} (Couponry campaign {spec.campaign_id})"}
        if spec.kind == "percentage":
            coupon |= {"discount_type": "percent", "amount": str(spec.value)}
        elif spec.kind == "fixed_amount":
            coupon |= {"discount_type": "fixed_cart", "amount": from_minor(spec.value, spec.currency)}
        else:
            coupon |= {"discount_type": "fixed_cart", "amount": "0", "free_shipping": True}
        coupon["individual_use"] = not spec.combines_with_codes
        if spec.uses_per_code is not None:
            coupon["usage_limit"] = spec.uses_per_code
        if spec.once_per_customer:
            coupon["usage_limit_per_user"] = 1
        if spec.minimum_subtotal:
            coupon["minimum_amount"] = from_minor(spec.minimum_subtotal, spec.currency)
        if spec.product_ids:
            coupon["product_ids"] = _int_ids(spec.product_ids, "product")
        if spec.collection_ids:
            coupon["product_categories"] = _int_ids(spec.collection_ids, "category")
        template = {
            "campaign_id": spec.campaign_id,
            "coupon": coupon,
            "ends_at": _woo_datetime(spec.ends_at) if spec.ends_at else None,
        }
        raw = json.dumps(template, separators=(",", ":"), sort_keys=True).encode()
        return _DISCOUNT_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    async def push_codes(self, discount_id: str, codes: Sequence[CodeSpec]) -> list[PushResult]:
        """Create the coupons; one pushed before (its id stored) is updated by its id instead,
        published with the template's rules, and created only when WooCommerce says the id is gone."""
        template = _Template.decode(discount_id)
        results: dict[int, PushResult] = {}
        known = [index for index, spec in enumerate(codes) if spec.platform_id]
        for start in range(0, len(known), self.BATCH_SIZE):
            chunk = known[start : start + self.BATCH_SIZE]
            ids = {index: int(codes[index].platform_id or 0) for index in chunk}
            results |= await self._update_batch(template, codes, ids, "publish")
        fresh = [index for index in range(len(codes)) if index not in results or results[index].error == CODE_GONE]
        for start in range(0, len(fresh), self.BATCH_SIZE):
            chunk = fresh[start : start + self.BATCH_SIZE]
            created = await self._push_batch(template, [codes[index] for index in chunk])
            results |= dict(zip(chunk, created, strict=True))
        return [results[index] for index in range(len(codes))]

    async def update_codes(self, discount_id: str, codes: Sequence[CodeSpec], state: CodeState) -> list[PushResult]:
        """Rewrite each coupon's rules from the template (its own end included) and set its status
        (`publish`, or `draft`: then no checkout accepts it), by its stored id, 100 per batch."""
        template = _Template.decode(discount_id)
        results: dict[int, PushResult] = {}
        for start in range(0, len(codes), self.BATCH_SIZE):
            chunk = codes[start : start + self.BATCH_SIZE]
            ids, failed = await self._resolve(template, chunk, offset=start, not_found=_NOT_FOUND)
            results |= failed | await self._update_batch(template, codes, ids, POST_STATUS[state])
        return [results[index] for index in range(len(codes))]

    async def delete_codes(self, discount_id: str, codes: Sequence[CodeSpec]) -> list[PushResult]:
        """Delete the coupons by their stored ids (batch delete is forced: they leave the trash
        too). A code without an id is looked up; not found is not gone (REMOVAL_UNCONFIRMED), a
        coupon not tagged with this campaign is left alone. An id WooCommerce no longer knows is gone."""
        template = _Template.decode(discount_id)
        results: dict[int, PushResult] = {}
        for start in range(0, len(codes), self.BATCH_SIZE):
            chunk = codes[start : start + self.BATCH_SIZE]
            ids, failed = await self._resolve(template, chunk, offset=start, not_found=REMOVAL_UNCONFIRMED)
            results |= failed
            if not ids:
                continue
            answers = await self._batch("delete", list(ids.values()))
            for position, (index, coupon_id) in enumerate(ids.items()):
                item = answers[position] if position < len(answers) else None
                error = None if _error_code(item) == INVALID_ID else _item_error(item)
                results[index] = PushResult(code=codes[index].code, ok=error is None, platform_id=str(coupon_id), error=error)
        return [results[index] for index in range(len(codes))]

    async def deactivate_codes(self, discount_id: str, codes: Sequence[str]) -> list[PushResult]:
        """Delete our coupons, found by code (the strings that were pushed: display forms); see
        `delete_codes`, which goes by the stored ids."""
        return await self.delete_codes(discount_id, [CodeSpec(code=code, display=code) for code in codes])

    async def list_codes(self, discount_id: str) -> AsyncIterator[str]:
        """Every live (published) coupon tagged with this campaign, as WooCommerce stores it (lower
        case): a draft, pending or trashed one takes no order."""
        async for code, state in self.list_code_states(discount_id):
            if state == "active":
                yield code

    async def list_code_states(self, discount_id: str) -> AsyncIterator[tuple[str, CodeState]]:
        """Every coupon tagged with this campaign with its state: published is active, any other
        status but trash (draft, pending, private, future) paused; trashed ones are not held."""
        campaign = str(_Template.decode(discount_id).campaign_id)
        async for coupon in self._paginate("coupons", {}):
            status = str(coupon.get("status") or "publish")  # stores older than the field publish only
            if _campaign_of(coupon) == campaign and status != "trash":
                yield str(coupon["code"]), "active" if status == "publish" else "paused"

    # --- codes out: per-code ends (plugin.platforms.expiry) -------------------------------------------

    async def set_code_ends(self, discount_id: str, ends: Sequence[CodeEnd]) -> list[PushResult]:
        """Give coupons we hold a new `date_expires_gmt`: one `coupons/batch` update per
        BATCH_SIZE, by the coupon id the push stored (a code without one is looked up by code
        first). The end sent is the earlier of the code's and the campaign's, as at push. A
        coupon WooCommerce no longer has answers CODE_GONE."""
        template = _Template.decode(discount_id)
        ids = await self._coupon_ids_for_ends(template, ends)
        results: list[PushResult | None] = [None] * len(ends)
        changes: list[tuple[int, dict[str, Any]]] = []  # (index in ends, update item)
        for index, (end, coupon_id) in enumerate(zip(ends, ids, strict=True)):
            if coupon_id is None:
                results[index] = PushResult(code=end.code, ok=False, error=CODE_GONE)
            else:
                changes.append((index, {"id": coupon_id, "date_expires_gmt": _coupon_end(template, end.expires_at)}))
        for start in range(0, len(changes), self.BATCH_SIZE):
            chunk = changes[start : start + self.BATCH_SIZE]
            answers = await self._batch("update", [change for _, change in chunk])
            for position, (index, change) in enumerate(chunk):
                results[index] = _end_result(
                    ends[index].code, change["id"], answers[position] if position < len(answers) else None
                )
        return [result for result in results if result is not None]

    async def _coupon_ids_for_ends(self, template: _Template, ends: Sequence[CodeEnd]) -> list[int | None]:
        """The coupon id of each code: the stored one, else the one a lookup finds tagged with
        this campaign (None: WooCommerce has no such coupon of ours)."""
        ids: list[int | None] = [int(e.platform_id) if e.platform_id and e.platform_id.isdigit() else None for e in ends]
        unknown = [index for index, coupon_id in enumerate(ids) if coupon_id is None]
        found = await self._lookup_many([self._woo_code(ends[index].display or ends[index].code) for index in unknown])
        for index, coupon in zip(unknown, found, strict=True):
            if coupon is not None and _campaign_of(coupon) == str(template.campaign_id):
                ids[index] = int(coupon["id"])
        return ids

    # --- orders in ------------------------------------------------------------------------

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        signature = header(headers, "X-WC-Webhook-Signature")
        if signature is None:
            if _PING.fullmatch(body.strip()):
                return  # the creation ping is unsigned; it carries nothing we act on
            raise BadSignature("missing X-WC-Webhook-Signature header")
        secret = self._webhook_secret()
        if not secret:
            raise BadSignature("no WooCommerce webhook secret configured")
        expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature.strip().encode()):
            raise BadSignature("X-WC-Webhook-Signature does not match the body")

    def identify_webhook(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        return self.parse_webhook(headers, body)  # an order's delivery id comes from its payload

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        shop = self._shop(headers)
        ping = _PING.fullmatch(body.strip())
        if ping:
            hook_id = body.strip().decode().partition("=")[2]
            return Delivery(delivery_id=f"ping:{hook_id}", topic="ping", shop=shop, kind="ping", response_status=200)
        header_id = header(headers, "X-WC-Webhook-Delivery-ID") or ""
        topic = header(headers, "X-WC-Webhook-Topic") or ""
        try:
            payload = json_body.loads(body)
        except ValueError as exc:
            raise ConnectorError("malformed WooCommerce webhook body") from exc
        resource, _, event = topic.partition(".")
        if resource != "order" or not isinstance(payload, dict) or "id" not in payload:
            return Delivery(delivery_id=header_id or _digest(body), topic=topic, shop=shop, kind="other")
        if event == "deleted":  # only {"id": N}: the order went to the trash
            order_id = str(payload["id"])
            order = OrderEvent(platform=self.name, shop=shop, kind="cancelled", order_id=order_id, delivery_id=header_id)
            dedupe = f"order:{order_id}:deleted:{header_id or _digest(body)}"
        else:
            order = self._order_event(payload, shop=shop, delivery_id=header_id)
            modified = payload.get("date_modified_gmt")
            dedupe = f"order:{order.order_id}:{modified}:{payload.get('status')}" if modified else header_id or _digest(body)
        return Delivery(delivery_id=dedupe, topic=topic, shop=shop, kind="order", events=(order,))

    async def fetch_order(self, order_id: str) -> OrderEvent:
        response = await self._request("GET", f"orders/{order_id}")
        return self._order_event(_json_object(response), shop=self._shop({}))

    async def list_recent_orders(self, modified_after: datetime) -> AsyncIterator[OrderEvent]:
        """Orders modified after `modified_after` (UTC), for the poll that fills webhook gaps.

        `modified_after` needs WooCommerce 5.8 or later; older stores ignore it, so the filter is
        applied here too.
        """
        since = modified_after.astimezone(UTC).replace(tzinfo=None) if modified_after.tzinfo else modified_after
        params = {"modified_after": since.isoformat(timespec="seconds"), "dates_are_gmt": "true", "orderby": "id", "order": "asc"}
        shop = self._shop({})
        async for order in self._paginate("orders", params):
            event = self._order_event(order, shop=shop)
            if event.occurred_at is None or event.occurred_at.replace(tzinfo=None) >= since:
                yield event

    async def register_webhooks(self, delivery_url: str, secret: str) -> list[WebhookRegistration]:
        """Create our order hooks, or re-enable the ones WooCommerce disabled after failed deliveries.

        Safe to run again and again (the nightly job does). A hook the merchant paused is left paused
        and reported as such.
        """
        existing = [hook async for hook in self._paginate("webhooks", {})]
        registrations: list[WebhookRegistration] = []
        for topic in self.WEBHOOK_TOPICS:
            hook = next((h for h in existing if h.get("topic") == topic and h.get("delivery_url") == delivery_url), None)
            if hook is None:
                body = {
                    "name": f"Couponry {topic}",
                    "topic": topic,
                    "delivery_url": delivery_url,
                    "secret": secret,
                    "status": "active",
                }
                created = _json_object(await self._request("POST", "webhooks", json=body))
                registrations.append(WebhookRegistration(topic=topic, id=str(created["id"]), action="created"))
            elif hook.get("status") == "paused":
                registrations.append(WebhookRegistration(topic=topic, id=str(hook["id"]), action="paused"))
            elif hook.get("status") != "active" or hook.get("secret", secret) != secret:
                await self._request("PUT", f"webhooks/{hook['id']}", json={"status": "active", "secret": secret})
                registrations.append(WebhookRegistration(topic=topic, id=str(hook["id"]), action="reactivated"))
            else:
                registrations.append(WebhookRegistration(topic=topic, id=str(hook["id"]), action="active"))
        return registrations

    # --- internals: coupons ---------------------------------------------------------------

    def _woo_code(self, code: str) -> str:
        preserve = self._credentials is not None and self._credentials.extra.get("code_case") == "preserve"
        return code if preserve else code.lower()

    def _rules(self, template: _Template, spec: CodeSpec) -> dict[str, Any]:
        """The template's coupon fields, with this code's own end when it comes first."""
        coupon = dict(template.coupon)
        expiries = [template.ends_at] if template.ends_at else []
        if spec.expires_at is not None:
            expiries.append(_woo_datetime(spec.expires_at))
        if expiries:
            coupon["date_expires_gmt"] = min(expiries)  # same format, so the strings sort as times
        return coupon

    def _coupon_body(self, template: _Template, spec: CodeSpec) -> dict[str, Any]:
        coupon = self._rules(template, spec)
        coupon["code"] = self._woo_code(spec.display or spec.code)
        coupon["meta_data"] = [{"key": CAMPAIGN_META_KEY, "value": str(template.campaign_id)}]
        return coupon

    async def _resolve(
        self, template: _Template, specs: Sequence[CodeSpec], *, offset: int, not_found: str
    ) -> tuple[dict[int, int], dict[int, PushResult]]:
        """Each code's coupon id (keyed by its index + offset): the stored one, else looked up by
        code, which finds published coupons only. The codes that can't be resolved, as failures."""
        ids: dict[int, int] = {}
        failed: dict[int, PushResult] = {}
        missing = [index for index, spec in enumerate(specs) if not spec.platform_id]
        for index, spec in enumerate(specs):
            if spec.platform_id:
                ids[offset + index] = int(spec.platform_id)
        found = await self._lookup_many([self._woo_code(specs[index].display or specs[index].code) for index in missing])
        for index, coupon in zip(missing, found, strict=True):
            code = specs[index].code
            if coupon is None:  # not found is not gone (a draft or a trashed coupon can't be found by code)
                failed[offset + index] = PushResult(code=code, ok=False, error=not_found)
            elif _campaign_of(coupon) != str(template.campaign_id):
                failed[offset + index] = PushResult(code=code, ok=False, platform_id=str(coupon["id"]), error=_NOT_OURS)
            else:
                ids[offset + index] = int(coupon["id"])
        return dict(sorted(ids.items())), failed

    async def _update_batch(
        self, template: _Template, specs: Sequence[CodeSpec], ids: Mapping[int, int], status: str
    ) -> dict[int, PushResult]:
        """One `update` batch (at most BATCH_SIZE ids, keyed by the index of their spec): the
        template's rules, clearing what it no longer sets, and the status; per-item answers."""
        if not ids:
            return {}
        items = [
            {"id": coupon_id, **_CLEARED, **self._rules(template, specs[index]), "status": status}
            for index, coupon_id in ids.items()
        ]
        answers = await self._batch("update", items)
        results: dict[int, PushResult] = {}
        for position, (index, coupon_id) in enumerate(ids.items()):
            item = answers[position] if position < len(answers) else None
            error = CODE_GONE if _error_code(item) == INVALID_ID else _item_error(item)
            results[index] = PushResult(code=specs[index].code, ok=error is None, platform_id=str(coupon_id), error=error)
        return results

    async def _push_batch(self, template: _Template, specs: Sequence[CodeSpec]) -> list[PushResult]:
        bodies = [self._coupon_body(template, spec) for spec in specs]
        answers = await self._batch("create", bodies)
        results: list[PushResult | None] = []
        duplicates: list[int] = []
        for index, spec in enumerate(specs):
            item = answers[index] if index < len(answers) else None
            error = item.get("error") if isinstance(item, dict) else {"message": "no answer from WooCommerce"}
            if not error:
                assert isinstance(item, dict)
                results.append(PushResult(code=spec.code, ok=True, platform_id=str(item.get("id"))))
            elif isinstance(error, dict) and error.get("code") == DUPLICATE_CODE:
                results.append(None)
                duplicates.append(index)
            else:
                results.append(PushResult(code=spec.code, ok=False, error=_item_error(item)))
        found = await self._lookup_many([bodies[index]["code"] for index in duplicates])
        stale: list[tuple[int, dict[str, Any]]] = []
        for index, coupon in zip(duplicates, found, strict=True):
            spec = specs[index]
            if coupon is None:
                results[index] = PushResult(code=spec.code, ok=False, error="WooCommerce says the code exists but cannot find it")
            elif _campaign_of(coupon) != str(template.campaign_id):
                results[index] = PushResult(
                    code=spec.code,
                    ok=False,
                    platform_id=str(coupon["id"]),
                    error="code already used by another coupon on the store",
                )
            else:
                results[index] = PushResult(code=spec.code, ok=True, platform_id=str(coupon["id"]))
                wanted = bodies[index].get("date_expires_gmt")
                if (coupon.get("date_expires_gmt") or None) != wanted:
                    stale.append((index, {"id": coupon["id"], "date_expires_gmt": wanted}))
        if stale:
            # a coupon we hold already, pushed again with another end (an extended expiry)
            answers = await self._batch("update", [change for _, change in stale])
            for n, (index, change) in enumerate(stale):
                item = answers[n] if n < len(answers) else None
                error = _item_error(item)
                if error is not None:
                    results[index] = PushResult(code=specs[index].code, ok=False, platform_id=str(change["id"]), error=error)
        return [result for result in results if result is not None]

    async def _batch(self, operation: Literal["create", "update", "delete"], items: list[Any]) -> list[Any]:
        if operation != "delete":
            items = [_wire_dates(item) for item in items]
        response = await self._request("POST", "coupons/batch", json={operation: items})
        answers = _json_object(response).get(operation)
        if not isinstance(answers, list):
            raise UpstreamError(f"WooCommerce batch answer has no {operation!r} list")
        return answers

    async def _lookup(self, code: str) -> dict[str, Any] | None:
        coupons = _json(await self._request("GET", "coupons", params={"code": code}))
        if isinstance(coupons, list):
            for coupon in coupons:
                if isinstance(coupon, dict) and str(coupon.get("code", "")).lower() == code.lower():
                    return coupon
        return None

    async def _lookup_many(self, codes: Sequence[str]) -> list[dict[str, Any] | None]:
        gate = asyncio.Semaphore(self.LOOKUP_CONCURRENCY)

        async def one(code: str) -> dict[str, Any] | None:
            async with gate:
                return await self._lookup(code)

        return list(await asyncio.gather(*(one(code) for code in codes)))

    # --- internals: orders ----------------------------------------------------------------

    def _order_event(self, order: Mapping[str, Any], *, shop: str, delivery_id: str = "") -> OrderEvent:
        currency = str(order.get("currency") or "USD")
        billing = order.get("billing") or {}
        customer = order.get("customer_id")
        return OrderEvent(
            platform=self.name,
            shop=shop,
            kind=ORDER_STATUS_KINDS.get(str(order.get("status", "")), "updated"),
            order_id=str(order["id"]),
            codes=tuple(
                CodeUse(code=str(line["code"]), amount=to_minor(line.get("discount") or "0", currency))
                for line in order.get("coupon_lines") or ()
                if line.get("code")
            ),
            customer_id=str(customer) if customer else None,
            email=billing.get("email") or None,
            subtotal=sum(to_minor(item.get("subtotal") or "0", currency) for item in order.get("line_items") or ()),
            # a line's `total` is its subtotal after discounts (taxes are separate)
            net_subtotal=sum(to_minor(item.get("total") or "0", currency) for item in order.get("line_items") or ()),
            total=to_minor(order.get("total") or "0", currency),
            currency=currency,
            channel=order.get("created_via") or None,
            occurred_at=_parse_gmt(order.get("date_modified_gmt")),
            delivery_id=delivery_id,
            shipping_address=ShippingAddress.from_fields(order.get("shipping"), "address_1", "address_2", "postcode", "country"),
            # Refunds come as order.updated (woocommerce_order_refunded): the order lists each as
            # {id, reason, total}, total negative ("-10.00"); status "refunded" only when whole.
            refunds=tuple(
                Refund(refund_id=str(refund["id"]), amount=abs(to_minor(refund.get("total") or "0", currency)))
                for refund in order.get("refunds") or ()
                if isinstance(refund, Mapping) and refund.get("id") is not None
            ),
        )

    # --- internals: HTTP ------------------------------------------------------------------

    def _shop(self, headers: Mapping[str, str]) -> str:
        if self._credentials is not None:
            return self._credentials.shop_domain
        return header(headers, "X-WC-Webhook-Source") or ""

    def _webhook_secret(self) -> str:
        if self._credentials is not None and self._credentials.extra.get("webhook_secret"):
            return self._credentials.extra["webhook_secret"]
        return self._config.webhook_secret

    @staticmethod
    def _store_root(store_url: str) -> str:
        url = store_url.strip().rstrip("/")
        return url if "://" in url else f"https://{url}"

    def _api_root(self) -> str:
        if self._config.base_url:
            return self._config.base_url.rstrip("/") + self.API_PATH
        if self._credentials is None:
            raise AuthError("no WooCommerce store credentials")
        return self._store_root(self._credentials.shop_domain) + self.API_PATH

    def _auth(self) -> WooCommerceAuth:
        if self._credentials is None or not self._credentials.access_token:
            raise AuthError("no WooCommerce consumer secret")
        key = self._credentials.extra.get("consumer_key", "")
        if not key:
            raise AuthError("no WooCommerce consumer key")
        return WooCommerceAuth(key, self._credentials.access_token, in_query=self._credentials.extra.get("auth") == "query")

    async def _request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> httpx.Response:
        url, auth = self._api_root() + path, self._auth()

        async def attempt() -> httpx.Response:
            response = await send(
                self._client, method, url, params=params, json=json, auth=auth, timeout=self.TIMEOUT, extensions=THIRD_PARTY_HOST
            )
            return raise_for_status(response, platform=self.name, message=_woo_error)

        return await retrying(attempt, attempts=self._max_attempts, wait=self._wait)

    async def _paginate(self, path: str, params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        page = 1
        while True:
            response = await self._request("GET", path, params={**params, "per_page": self.PAGE_SIZE, "page": page})
            items = _json(response)
            if not isinstance(items, list):
                raise UpstreamError(f"WooCommerce {path} did not answer a list")
            for item in items:
                if isinstance(item, dict):
                    yield item
            try:
                total_pages = int(response.headers.get("X-WP-TotalPages", "1"))
            except ValueError:
                total_pages = 1
            if not items or page >= total_pages:
                return
            page += 1


@dataclass(frozen=True)
class _Template:
    campaign_id: int
    coupon: Mapping[str, Any]
    ends_at: str | None

    @classmethod
    def decode(cls, discount_id: str) -> _Template:
        if not discount_id.startswith(_DISCOUNT_PREFIX):
            raise Rejected(f"not a WooCommerce discount id: {discount_id[:40]!r}")
        encoded = discount_id.removeprefix(_DISCOUNT_PREFIX)
        try:
            data = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            return cls(campaign_id=int(data["campaign_id"]), coupon=dict(data["coupon"]), ends_at=data.get("ends_at"))
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise Rejected("malformed WooCommerce discount id") from exc


# --- helpers ----------------------------------------------------------------------------------


def _woo_error(response: httpx.Response) -> str:
    """WooCommerce errors are {"code": ..., "message": ..., "data": {"status": N}}."""
    try:
        body = response.json()
    except ValueError:
        return f"WooCommerce answered HTTP {response.status_code} (not JSON)"  # its body is never quoted
    if isinstance(body, dict) and body.get("message"):
        code = f" [{body['code']}]" if body.get("code") else ""
        return f"{body['message']}{code}"
    return f"WooCommerce answered HTTP {response.status_code}"


async def _read_capped(response: httpx.Response, limit: int) -> bytes | None:
    """The body, or None as soon as it passes `limit` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _item_error(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "no answer from WooCommerce for this item"
    error = item.get("error")
    if not error:
        return None
    if isinstance(error, dict):
        code = f" [{error['code']}]" if error.get("code") else ""
        return f"{error.get('message') or 'rejected'}{code}"
    return str(error)


def _error_code(item: Any) -> str | None:
    error = item.get("error") if isinstance(item, dict) else None
    return str(error.get("code")) if isinstance(error, dict) and error.get("code") else None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise UpstreamError(f"WooCommerce sent a body that is not JSON (HTTP {response.status_code})") from exc


def _json_object(response: httpx.Response) -> dict[str, Any]:
    body = _json(response)
    if not isinstance(body, dict):
        raise UpstreamError("WooCommerce sent an unexpected body")
    return body


def _campaign_of(coupon: Mapping[str, Any]) -> str | None:
    for meta in coupon.get("meta_data") or ():
        if isinstance(meta, dict) and meta.get("key") == CAMPAIGN_META_KEY:
            return str(meta.get("value"))
    return None


def _int_ids(ids: Sequence[str], what: str) -> list[int]:
    try:
        return [int(value) for value in ids]
    except ValueError as exc:
        raise Rejected(f"WooCommerce {what} ids are integers") from exc


def _coupon_end(template: _Template, expires_at: datetime | None) -> str | None:
    """A coupon's `date_expires_gmt`: the earlier of the code's end and the campaign's."""
    ends = [template.ends_at] if template.ends_at else []
    if expires_at is not None:
        ends.append(_woo_datetime(expires_at))
    return min(ends) if ends else None  # same format, so the strings sort as times


def _wire_dates(item: dict[str, Any]) -> dict[str, Any]:
    """Our coupon fields as sent. The end is kept as `date_expires_gmt` (what WooCommerce answers,
    so compared as read) but written as `date_expires` with an explicit `Z`: the REST controller
    sets only fields with a `set_*` method on WC_Coupon, which has `set_date_expires` and no
    `_gmt` setter, and WC_Data::set_date_prop reads an ISO 8601 offset when one is given. An
    empty string clears the end (a null is skipped by the controller)."""
    if "date_expires_gmt" not in item:
        return item
    wired = {k: v for k, v in item.items() if k != "date_expires_gmt"}
    end = item["date_expires_gmt"]
    wired["date_expires"] = f"{end}Z" if end else ""
    return wired


def _end_result(code: str, coupon_id: int, item: Any) -> PushResult:
    """One `coupons/batch` update answer as the outcome of a code's new end."""
    if isinstance(item, dict) and isinstance(item.get("error"), dict) and item["error"].get("code") == INVALID_ID:
        return PushResult(code=code, ok=False, platform_id=str(coupon_id), error=CODE_GONE)
    error = _item_error(item)
    return PushResult(code=code, ok=error is None, platform_id=str(coupon_id), error=error)


def _woo_datetime(moment: datetime) -> str:
    """GMT, without offset, as WooCommerce's *_gmt fields are written."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds")


def _parse_gmt(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
