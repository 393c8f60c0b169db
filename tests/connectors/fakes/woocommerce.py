"""An in-memory WooCommerce store behind respx, answering in the documented REST v3 shapes
(fixtures/woocommerce: woocommerce-rest-api-docs examples; batch semantics from
WC_REST_Controller::batch_items and check_batch_limit).

    fake = FakeWooCommerce()
    with respx.mock() as router:
        fake.install(router, "batch", "coupons")    # only the routes the test uses (all when none given)
        connector = WooCommerceConnector(client, ConnectorConfig(), fake.credentials())
    fake.routes["batch"].call_count
    fake.script("batch", httpx.Response(503))       # served (or raised) before the route's normal answer
    fake.fail_codes["bad-code"] = ("woocommerce_rest_invalid_coupon", "Invalid coupon.")
    fake.lose("batch")                              # the next batch is applied, its answer lost
    fake.checkout("code", "80.00")                  # what a shopper's cart gets for the code

Like WooCommerce core, a coupon has a post `status` (publish unless the request says otherwise),
and only a published coupon is found by its code (WC_Coupon_Data_Store_CPT::get_ids_by_code): at
the checkout, by `GET coupons?code=` and by the create's duplicate check, so a code held by a draft
can be created again. The listing (v3's default `status=all`) shows every status.

Like WooCommerce core, coupon codes are stored lower-cased (wc_strtolower) unless
`lowercase=False`, a batch takes at most `batch_limit` operations (413 beyond), failures inside a
batch are per-item errors inside a 200, and a batch delete is forced. Requests without the store's
keys (HTTP Basic, or consumer_key/consumer_secret in the query) get a 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import defaultdict, deque
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import respx

from connectors.base import Credentials

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "woocommerce"
API_PATH = "/wp-json/wc/v3"


# A coupon created without these fields has WC_Coupon's defaults, not the documented example's
# restrictions (its minimum of 100.00, no sale items)
CREATED: dict[str, Any] = {
    "status": "publish",
    "amount": "0",
    "minimum_amount": "0.00",
    "maximum_amount": "0.00",
    "exclude_sale_items": False,
    "individual_use": False,
    "usage_limit": None,
    "usage_limit_per_user": None,
}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def sign(body: bytes, secret: str) -> str:
    """X-WC-Webhook-Signature: base64(HMAC-SHA256(raw body, secret))."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def _error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "data": {"status": status}})


class FakeWooCommerce:
    STORE_URL = "https://shop.example"
    ROUTES = ("batch", "coupons", "order", "orders", "webhooks", "webhook_create", "webhook_update")

    def __init__(
        self,
        store_url: str = STORE_URL,
        *,
        consumer_key: str = "ck_fake_0123456789",
        consumer_secret: str = "cs_fake_0123456789",
        batch_limit: int = 100,
        lowercase: bool = True,
    ) -> None:
        self.store_url = store_url
        self.host = httpx.URL(store_url).host
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.batch_limit = batch_limit
        self.lowercase = lowercase
        self.coupons: dict[int, dict[str, Any]] = {}
        self.orders: dict[int, dict[str, Any]] = {}
        self.webhooks: dict[int, dict[str, Any]] = {}
        self.fail_codes: dict[str, tuple[str, str]] = {}
        self.fail_updates: dict[int, tuple[str, str]] = {}  # coupon id -> (error code, message) for an update item
        self.requests: list[httpx.Request] = []
        self.routes: dict[str, respx.Route] = {}
        self._scripts: dict[str, deque[httpx.Response | Exception]] = defaultdict(deque)
        self._lost: dict[str, int] = defaultdict(int)
        self._next_id = 1000

    # --- set-up ---------------------------------------------------------------------------------

    def credentials(self, **extra: str) -> Credentials:
        return Credentials(
            shop_domain=self.store_url,
            access_token=self.consumer_secret,
            scopes=("read_write",),
            extra={"consumer_key": self.consumer_key, **extra},
        )

    def install(self, router: respx.Router, *routes: str) -> None:
        handlers = {
            "batch": ("POST", f"{API_PATH}/coupons/batch", self._batch),
            "coupons": ("GET", f"{API_PATH}/coupons", self._list_coupons),
            "order": ("GET", rf"{API_PATH}/orders/(?P<order_id>\d+)", self._get_order),
            "orders": ("GET", f"{API_PATH}/orders", self._list_orders),
            "webhooks": ("GET", f"{API_PATH}/webhooks", self._list_webhooks),
            "webhook_create": ("POST", f"{API_PATH}/webhooks", self._create_webhook),
            "webhook_update": ("PUT", rf"{API_PATH}/webhooks/(?P<hook_id>\d+)", self._update_webhook),
        }
        if "index" in routes:  # the public REST index (no keys): what an install checks first
            self.routes["index"] = router.route(method="GET", host=self.host, path="/wp-json/", name="woocommerce.index").mock(
                side_effect=self._index
            )
        for name in [r for r in routes if r != "index"] or ([] if routes else self.ROUTES):
            method, path, handler = handlers[name]
            route = router.route(method=method, host=self.host, path__regex=f"^{path}$", name=f"woocommerce.{name}")
            self.routes[name] = route.mock(side_effect=self._wrap(name, handler))

    def script(self, route: str, *responses: httpx.Response | Exception) -> None:
        """Serve these responses (or raise these errors, e.g. httpx.ReadTimeout), in order, before the
        route answers normally again."""
        self._scripts[route].extend(responses)

    def lose(self, route: str, times: int = 1) -> None:
        """The next `times` requests to the route are carried out, then their answer is lost (a
        read timeout after the store committed)."""
        self._lost[route] += times

    def checkout(self, code: str, subtotal: str, *, email: str = "shopper@example.com") -> dict[str, Any]:
        """What WooCommerce's cart does with `code` on a cart of `subtotal` (WC_Discounts'
        checks, the ones our fields drive): {"ok": True, "discount": "8.00"} or {"ok": False,
        "reason": ...}. A use is counted when it is accepted."""
        coupon = self.coupon_by_code(code)
        if coupon is None:
            return {"ok": False, "reason": "does_not_exist"}  # drafts included: not found by code
        expires = coupon.get("date_expires_gmt")
        if expires and datetime.fromisoformat(expires) <= datetime.now(UTC).replace(tzinfo=None):
            return {"ok": False, "reason": "expired"}
        if coupon.get("usage_limit") and coupon.get("usage_count", 0) >= coupon["usage_limit"]:
            return {"ok": False, "reason": "usage_limit_reached"}
        if coupon.get("usage_limit_per_user") and coupon.get("used_by", []).count(email) >= coupon["usage_limit_per_user"]:
            return {"ok": False, "reason": "usage_limit_per_user_reached"}
        total = Decimal(subtotal)
        if Decimal(coupon.get("minimum_amount") or "0") > total:
            return {"ok": False, "reason": "minimum_amount"}
        amount = Decimal(coupon.get("amount") or "0")
        discount = total * amount / 100 if coupon.get("discount_type") == "percent" else min(amount, total)
        coupon["usage_count"] = coupon.get("usage_count", 0) + 1
        coupon["used_by"] = [*coupon.get("used_by", []), email]
        return {"ok": True, "discount": f"{discount.quantize(Decimal('0.01'))}"}

    def format_code(self, code: str) -> str:
        return code.lower() if self.lowercase else code

    def add_coupon(self, code: str, *, campaign_id: int | None = None, **fields: Any) -> dict[str, Any]:
        coupon: dict[str, Any] = {"status": "publish"} | fixture("coupon.json") | fields
        coupon |= {"id": self._new_id(), "code": self.format_code(code)}
        if campaign_id is not None:
            coupon["meta_data"] = [{"id": self._new_id(), "key": "couponry_campaign_id", "value": str(campaign_id)}]
        self.coupons[coupon["id"]] = coupon
        return coupon

    def add_order(self, **fields: Any) -> dict[str, Any]:
        order: dict[str, Any] = fixture("order.json") | {"id": self._new_id()} | fields
        self.orders[order["id"]] = order
        return order

    def add_webhook(self, **fields: Any) -> dict[str, Any]:
        hook: dict[str, Any] = fixture("webhook.json") | {"id": self._new_id()} | fields
        self.webhooks[hook["id"]] = hook
        return hook

    def coupon_by_code(self, code: str) -> dict[str, Any] | None:
        """The published coupon with this code, as WooCommerce finds one by code."""
        wanted = self.format_code(code)
        return next((c for c in self.coupons.values() if c["code"] == wanted and c.get("status") == "publish"), None)

    def coupons_with_code(self, code: str) -> list[dict[str, Any]]:
        """Every coupon holding the code, whatever its status (duplicates show up here)."""
        wanted = self.format_code(code)
        return [c for c in self.coupons.values() if c["code"] == wanted]

    def delivery(
        self, payload: Any, secret: str, *, topic: str = "order.updated", delivery_id: str = "d1"
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body of a webhook delivery as WC_Webhook::deliver() sends it."""
        body = json.dumps(payload).encode()
        resource, _, event = topic.partition(".")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "WooCommerce/9.9.0 Hookshot (WordPress/6.8)",
            "X-WC-Webhook-Source": self.store_url + "/",
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Signature": sign(body, secret),
            "X-WC-Webhook-ID": "142",
            "X-WC-Webhook-Delivery-ID": delivery_id,
        }
        return headers, body

    # --- plumbing -------------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    NAMESPACES = ("oembed/1.0", "wc/store/v1", "wc/v1", "wc/v2", "wc/v3", "wc-admin", "wp/v2")

    def _index(self, request: httpx.Request) -> httpx.Response:
        """WordPress's REST index (`GET /wp-json/`); `_fields=namespaces` keeps only that field."""
        self.requests.append(request)
        index = {"name": "Shop", "url": self.store_url, "namespaces": list(self.NAMESPACES), "routes": {}}
        if request.url.params.get("_fields") == "namespaces":
            index = {"namespaces": index["namespaces"]}
        return httpx.Response(200, json=index)

    def _wrap(self, route: str, handler: Any) -> Any:
        def side_effect(request: httpx.Request, **kwargs: Any) -> httpx.Response:
            self.requests.append(request)
            if not self._authorised(request):
                return _error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
            if self._scripts[route]:
                scripted = self._scripts[route].popleft()
                if isinstance(scripted, Exception):
                    raise scripted
                return scripted
            response: httpx.Response = handler(request, **kwargs)
            if self._lost[route]:
                self._lost[route] -= 1
                raise httpx.ReadTimeout("the answer was lost after the store committed", request=request)
            return response

        return side_effect

    def _authorised(self, request: httpx.Request) -> bool:
        params = request.url.params
        if params.get("consumer_key") == self.consumer_key and params.get("consumer_secret") == self.consumer_secret:
            return True
        expected = base64.b64encode(f"{self.consumer_key}:{self.consumer_secret}".encode()).decode()
        return bool(request.headers.get("Authorization") == f"Basic {expected}")

    @staticmethod
    def _page(request: httpx.Request, items: list[dict[str, Any]]) -> httpx.Response:
        per_page = int(request.url.params.get("per_page", "10"))
        page = int(request.url.params.get("page", "1"))
        total_pages = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        return httpx.Response(200, json=chunk, headers={"X-WP-Total": str(len(items)), "X-WP-TotalPages": str(total_pages)})

    # --- routes ---------------------------------------------------------------------------------

    def _batch(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        total = sum(len(body.get(key) or ()) for key in ("create", "update", "delete"))
        if total > self.batch_limit:
            return _error(
                413,
                "woocommerce_rest_request_entity_too_large",
                f"Unable to accept more than {self.batch_limit} items for this request.",
            )
        answer: dict[str, list[Any]] = {}
        for item in body.get("create") or ():
            answer.setdefault("create", []).append(self._create_coupon(item))
        for change in body.get("update") or ():
            found = self.coupons.get(int(change.get("id", 0)))
            if found is not None and found["id"] in self.fail_updates:
                code, message = self.fail_updates[found["id"]]
                error = {"code": code, "message": message, "data": {"status": 400}}
                answer.setdefault("update", []).append({"id": found["id"], "error": error})
            elif found is None:
                error = {"code": "woocommerce_rest_shop_coupon_invalid_id", "message": "Invalid ID.", "data": {"status": 404}}
                answer.setdefault("update", []).append({"id": change.get("id"), "error": error})
            else:
                found.update({k: v for k, v in _as_stored(change).items() if k != "id"})
                answer.setdefault("update", []).append(found)
        for coupon_id in body.get("delete") or ():
            coupon = self.coupons.pop(int(coupon_id), None)
            if coupon is None:
                item = {
                    "id": coupon_id,
                    "error": {
                        "code": "woocommerce_rest_shop_coupon_invalid_id",
                        "message": "Invalid ID.",
                        "data": {"status": 404},
                    },
                }
                answer.setdefault("delete", []).append(item)
            else:
                answer.setdefault("delete", []).append(coupon)
        return httpx.Response(200, json=answer)

    def _create_coupon(self, item: dict[str, Any]) -> dict[str, Any]:
        code = self.format_code(str(item.get("code", "")))
        if code in self.fail_codes:
            error_code, message = self.fail_codes[code]
            return {"id": 0, "error": {"code": error_code, "message": message, "data": {"status": 400}}}
        if self.coupon_by_code(code) is not None:
            return fixture("batch_item_error.json")  # type: ignore[no-any-return]
        meta = [{"id": self._new_id(), **m} for m in item.get("meta_data") or ()]
        coupon: dict[str, Any] = fixture("coupon.json") | CREATED | _as_stored(item)
        coupon |= {"id": self._new_id(), "code": code, "meta_data": meta}
        self.coupons[coupon["id"]] = coupon
        return coupon

    def _list_coupons(self, request: httpx.Request) -> httpx.Response:
        items = sorted(self.coupons.values(), key=lambda c: c["id"])
        if "code" in request.url.params:  # v3: post__in the id wc_get_coupon_id_by_code finds (published only)
            found = self.coupon_by_code(request.url.params["code"])
            items = [found] if found is not None else []
        status = request.url.params.get("status", "all")
        if status not in ("all", "any"):
            items = [c for c in items if c.get("status") == status]
        return self._page(request, items)

    def _get_order(self, request: httpx.Request, order_id: str) -> httpx.Response:
        order = self.orders.get(int(order_id))
        if order is None:
            return _error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        return httpx.Response(200, json=order)

    def _list_orders(self, request: httpx.Request) -> httpx.Response:
        items = sorted(self.orders.values(), key=lambda o: o["id"])
        if "modified_after" in request.url.params:
            since = datetime.fromisoformat(request.url.params["modified_after"])
            items = [o for o in items if datetime.fromisoformat(o["date_modified_gmt"]) > since]
        return self._page(request, items)

    def _list_webhooks(self, request: httpx.Request) -> httpx.Response:
        return self._page(request, sorted(self.webhooks.values(), key=lambda h: h["id"]))

    def _create_webhook(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        resource, _, event = body["topic"].partition(".")
        hook = self.add_webhook(**body, resource=resource, event=event)
        return httpx.Response(201, json={k: v for k, v in hook.items() if k != "secret"})

    def _update_webhook(self, request: httpx.Request, hook_id: str) -> httpx.Response:
        hook = self.webhooks.get(int(hook_id))
        if hook is None:
            return _error(404, "woocommerce_rest_webhook_invalid_id", "Invalid ID.")
        hook.update(json.loads(request.content))
        return httpx.Response(200, json={k: v for k, v in hook.items() if k != "secret"})


def _as_stored(item: dict[str, Any]) -> dict[str, Any]:
    """What the REST controller writes of a coupon body: only fields with a WC_Coupon setter, so
    `date_expires_gmt` is ignored; `date_expires` goes through WC_Data::set_date_prop (an ISO 8601
    string with `Z` or an offset is read in that zone; "" clears it). The fake's site is on UTC,
    so both date fields answer the same."""
    stored = {k: v for k, v in item.items() if k not in ("date_expires", "date_expires_gmt")}
    if "date_expires" in item:
        value = item["date_expires"]
        if value:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC).replace(tzinfo=None)
            stored["date_expires"] = stored["date_expires_gmt"] = moment.isoformat(timespec="seconds")
        else:
            stored["date_expires"] = stored["date_expires_gmt"] = None
    return stored
