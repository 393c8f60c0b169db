"""An in-memory BigCommerce store behind respx, answering in the documented shapes
(fixtures/bigcommerce: examples from bigcommerce/docs promotions.v3.yml, orders.v2.oas2.yml,
webhooks.v3.yml and the app guides).

    clock = FakeClock()
    fake = FakeBigCommerce(quota=150, clock=clock)      # quota=None: no rate-limit headers at all
    with respx.mock() as router:
        fake.install(router, "code_create")             # only the routes the test uses (all when none given)
        connector = BigCommerceConnector(client, config, fake.credentials(), sleep=clock.sleep, clock=clock)
    fake.routes["code_create"].call_count, fake.max_in_flight, clock.sleeps

The quota works like the documented one. Each API request spends one unit of a window
`window_ms` long. Every answer carries the four X-Rate-Limit-* headers. A request made when
nothing is left gets a 429 until the window resets on the fake clock. The error wording for
duplicate or invalid codes is the fake's own (the spec gives only the `{"errors": [...]}` shape).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections import defaultdict, deque
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import respx

from connectors.base import Credentials

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bigcommerce"
CODE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-")


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def _errors(status: int, title: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"errors": [{"status": status, "title": title}]}, headers=headers)


class FakeClock:
    """A monotonic clock whose sleep only advances time (and records how long it was asked to wait)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds
        await asyncio.sleep(0)


class FakeBigCommerce:
    API_URL = "https://api.bigcommerce.com"
    LOGIN_URL = "https://login.bigcommerce.com"
    ROUTES = (
        "token",
        "promotions",
        "promotion_create",
        "promotion_update",
        "code_create",
        "codes",
        "code_lookup",
        "codes_delete",
        "order",
        "order_coupons",
        "order_shipping_addresses",
        "orders",
        "hooks",
        "hook_create",
        "hook_update",
    )

    def __init__(
        self,
        store_hash: str = "abc123",
        *,
        access_token: str = "tok_fake_0123456789",
        quota: int | None = None,
        window_ms: int = 30_000,
        clock: FakeClock | None = None,
        duplicate_status: int = 422,
    ) -> None:
        self.store_hash = store_hash
        self.access_token = access_token
        self.quota = quota
        self.window_ms = window_ms
        self.clock = clock or FakeClock()
        self.duplicate_status = duplicate_status
        self.promotions: dict[int, dict[str, Any]] = {}
        self.codes: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)  # promotion id -> code id -> code
        self.orders: dict[int, dict[str, Any]] = {}
        self.order_coupons: dict[int, list[dict[str, Any]]] = {}
        self.order_addresses: dict[int, list[dict[str, Any]]] = {}
        self.hooks: dict[int, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.routes: dict[str, respx.Route] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.rate_limited = 0
        self._scripts: dict[str, deque[httpx.Response]] = defaultdict(deque)
        self._next_id = 100
        self._left = quota or 0
        self._window_end = -1.0

    # --- set-up ---------------------------------------------------------------------------------

    def credentials(self, **extra: str) -> Credentials:
        return Credentials(
            shop_domain=self.store_hash, access_token=self.access_token, scopes=("store_v2_marketing",), extra=extra
        )

    def install(self, router: respx.Router, *routes: str) -> None:
        store = f"/stores/{self.store_hash}"
        api = httpx.URL(self.API_URL).host
        handlers: dict[str, tuple[str, str, str, Any]] = {
            "token": ("POST", httpx.URL(self.LOGIN_URL).host, "/oauth2/token", self._token),
            "promotions": ("GET", api, f"{store}/v3/promotions", self._list_promotions),
            "promotion_create": ("POST", api, f"{store}/v3/promotions", self._create_promotion),
            "promotion_update": ("PUT", api, rf"{store}/v3/promotions/(?P<pid>\d+)", self._update_promotion),
            "code_create": ("POST", api, rf"{store}/v3/promotions/(?P<pid>\d+)/codes", self._create_code),
            "codes": ("GET", api, rf"{store}/v3/promotions/(?P<pid>\d+)/codes", self._list_codes),
            "code_lookup": ("GET", api, f"{store}/v3/promotions/codes", self._lookup_code),
            "codes_delete": ("DELETE", api, rf"{store}/v3/promotions/(?P<pid>\d+)/codes", self._delete_codes),
            "order": ("GET", api, rf"{store}/v2/orders/(?P<order_id>\d+)", self._get_order),
            "order_coupons": ("GET", api, rf"{store}/v2/orders/(?P<order_id>\d+)/coupons", self._get_order_coupons),
            "order_shipping_addresses": (
                "GET",
                api,
                rf"{store}/v2/orders/(?P<order_id>\d+)/shipping_addresses",
                self._get_order_addresses,
            ),
            "orders": ("GET", api, f"{store}/v2/orders", self._list_orders),
            "hooks": ("GET", api, f"{store}/v3/hooks", self._list_hooks),
            "hook_create": ("POST", api, f"{store}/v3/hooks", self._create_hook),
            "hook_update": ("PUT", api, rf"{store}/v3/hooks/(?P<hook_id>\d+)", self._update_hook),
        }
        for name in routes or self.ROUTES:
            method, host, path, handler = handlers[name]
            route = router.route(method=method, host=host, path__regex=f"^{path}$", name=f"bigcommerce.{name}")
            self.routes[name] = route.mock(side_effect=self._wrap(name, handler, metered=name != "token"))

    def script(self, route: str, *responses: httpx.Response) -> None:
        """Serve these responses, in order, before the route answers normally again."""
        self._scripts[route].extend(responses)

    def add_promotion(self, **fields: Any) -> dict[str, Any]:
        promotion: dict[str, Any] = copy.deepcopy(fixture("promotion.json")["data"]) | {"id": self._new_id()} | fields
        self.promotions[promotion["id"]] = promotion
        return promotion

    def add_code(self, promotion_id: int, code: str, **fields: Any) -> dict[str, Any]:
        item: dict[str, Any] = fixture("coupon_code.json")["data"] | {"id": self._new_id(), "code": code} | fields
        self.codes[promotion_id][item["id"]] = item
        return item

    def add_order(
        self,
        coupons: list[dict[str, Any]] | None = None,
        addresses: list[dict[str, Any]] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        order: dict[str, Any] = fixture("order.json") | {"id": self._new_id()} | fields
        self.orders[order["id"]] = order
        default = [c | {"order_id": order["id"]} for c in fixture("order_coupons.json")]
        self.order_coupons[order["id"]] = default if coupons is None else coupons
        shipping = [a | {"order_id": order["id"]} for a in fixture("order_shipping_addresses.json")]
        self.order_addresses[order["id"]] = shipping if addresses is None else addresses
        return order

    def add_hook(self, **fields: Any) -> dict[str, Any]:
        hook: dict[str, Any] = fixture("hook.json")["data"] | {"id": self._new_id(), "store_hash": self.store_hash} | fields
        self.hooks[hook["id"]] = hook
        return hook

    def all_codes(self, promotion_id: int) -> list[str]:
        return [c["code"] for c in self.codes[promotion_id].values()]

    # --- plumbing -------------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _quota_headers(self) -> dict[str, str]:
        reset = max(0, round(self._window_end - self.clock.now * 1000))
        return {
            "X-Rate-Limit-Time-Window-Ms": str(self.window_ms),
            "X-Rate-Limit-Time-Reset-Ms": str(reset),
            "X-Rate-Limit-Requests-Quota": str(self.quota),
            "X-Rate-Limit-Requests-Left": str(max(self._left, 0)),
        }

    def _spend(self) -> httpx.Response | None:
        """Spend one unit of the window; a 429 when none is left."""
        if self.quota is None:
            return None
        now_ms = self.clock.now * 1000
        if now_ms >= self._window_end:
            self._left, self._window_end = self.quota, now_ms + self.window_ms
        if self._left <= 0:
            self.rate_limited += 1
            return _errors(429, "Too many requests", **self._quota_headers())
        self._left -= 1
        return None

    def _wrap(self, route: str, handler: Any, *, metered: bool) -> Any:
        async def side_effect(request: httpx.Request, **kwargs: Any) -> httpx.Response:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(0)  # let other requests start, so concurrency is visible
                if metered and request.headers.get("X-Auth-Token") != self.access_token:
                    return _errors(401, "Unauthorized")
                refused = self._spend() if metered else None
                if refused is not None:
                    return refused
                scripted = self._scripts[route]
                response: httpx.Response = scripted.popleft() if scripted else handler(request, **kwargs)
                if metered and self.quota is not None:
                    response.headers.update(self._quota_headers())
                return response
            finally:
                self.in_flight -= 1

        return side_effect

    # --- routes ---------------------------------------------------------------------------------

    def _token(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("code") == "bad-code":
            return httpx.Response(400, json={"error": "invalid_grant", "error_description": "Invalid grant"})
        return httpx.Response(200, json=fixture("token.json") | {"access_token": self.access_token, "context": body["context"]})

    def _list_promotions(self, request: httpx.Request) -> httpx.Response:
        items = list(self.promotions.values())
        if "name" in request.url.params:
            items = [p for p in items if p["name"] == request.url.params["name"]]
        pagination = {"total": len(items), "count": len(items), "per_page": 50, "current_page": 1, "total_pages": 1, "links": {}}
        return httpx.Response(200, json={"data": items, "meta": {"pagination": pagination}})

    def _create_promotion(self, request: httpx.Request) -> httpx.Response:
        promotion = self.add_promotion(**json.loads(request.content))
        return httpx.Response(201, json={"data": promotion, "meta": {}})

    def _update_promotion(self, request: httpx.Request, pid: str) -> httpx.Response:
        if int(pid) not in self.promotions:
            return _errors(404, "The requested resource was not found.")
        self.promotions[int(pid)].update(json.loads(request.content))
        return httpx.Response(200, json={"data": self.promotions[int(pid)], "meta": {}})

    def _create_code(self, request: httpx.Request, pid: str) -> httpx.Response:
        if int(pid) not in self.promotions:
            return _errors(404, "The requested resource was not found.")
        body = json.loads(request.content)
        code = str(body.get("code", ""))
        if not code or len(code) > 50 or not set(code) <= CODE_CHARS:
            return _errors(422, "code: only letters, numbers, white spaces, underscores and hyphens are allowed")
        if any(c["code"].casefold() == code.casefold() for codes in self.codes.values() for c in codes.values()):
            return _errors(self.duplicate_status, "Coupon code already exists")
        item = self.add_code(
            int(pid), code, max_uses=body.get("max_uses", 0), max_uses_per_customer=body.get("max_uses_per_customer", 0)
        )
        return httpx.Response(201, json={"data": item, "meta": {}})

    def _list_codes(self, request: httpx.Request, pid: str) -> httpx.Response:
        items = sorted(self.codes[int(pid)].values(), key=lambda c: c["id"])
        params = request.url.params
        if "code" in params:
            items = [c for c in items if c["code"].casefold() == params["code"].casefold()]
        if "after" in params:
            after = int(json.loads(base64.b64decode(params["after"]))["id"])
            items = [c for c in items if c["id"] > after]
        limit = int(params.get("limit", "50"))
        page, rest = items[:limit], items[limit:]
        cursor: dict[str, Any] = {"count": len(page), "per_page": limit, "links": {}}
        if page:
            cursor["start_cursor"] = base64.b64encode(json.dumps({"id": str(page[0]["id"])}).encode()).decode()
            cursor["end_cursor"] = base64.b64encode(json.dumps({"id": str(page[-1]["id"])}).encode()).decode()
        if rest:
            cursor["links"]["next"] = f"?limit={limit}&after={cursor['end_cursor']}"
        return httpx.Response(200, json={"data": page, "meta": {"cursor_pagination": cursor}})

    def _lookup_code(self, request: httpx.Request) -> httpx.Response:
        wanted = request.url.params["code"].casefold()
        items = [c for codes in self.codes.values() for c in codes.values() if c["code"].casefold() == wanted]
        return httpx.Response(200, json={"data": items, "meta": {}})

    def _delete_codes(self, request: httpx.Request, pid: str) -> httpx.Response:
        raw = dict(part.split("=", 1) for part in request.url.query.decode().split("&") if "=" in part)
        if "id:in" not in raw:
            return httpx.Response(
                422, json={"errors": [{"status": 422, "title": "Parameter id:in is required"}], "meta": {"total": 0}}
            )
        ids = [int(i) for i in raw["id:in"].split(",")]
        if len(ids) > 50:
            return _errors(422, "Batches are limited to 50 coupon codes")
        failed = {f"{n}.id": f"Failed for id={i}. Error: not found." for n, i in enumerate(ids) if i not in self.codes[int(pid)]}
        for i in ids:
            self.codes[int(pid)].pop(i, None)
        if failed:
            meta = {"total": len(ids), "success": len(ids) - len(failed), "failed": len(failed)}
            title = "Errors occurred in bulk delete action."
            return httpx.Response(422, json={"errors": [{"status": 422, "title": title, "errors": failed}], "meta": meta})
        return httpx.Response(204)

    def _get_order(self, request: httpx.Request, order_id: str) -> httpx.Response:
        order = self.orders.get(int(order_id))
        if order is None:
            return httpx.Response(404, json=[{"status": 404, "message": "The requested resource was not found."}])
        return httpx.Response(200, json=order)

    def _get_order_coupons(self, request: httpx.Request, order_id: str) -> httpx.Response:
        coupons = self.order_coupons.get(int(order_id)) or []
        return httpx.Response(200, json=coupons) if coupons else httpx.Response(204)

    def _get_order_addresses(self, request: httpx.Request, order_id: str) -> httpx.Response:
        if int(order_id) not in self.orders:
            return httpx.Response(404, json=[{"status": 404, "message": "The requested resource was not found."}])
        addresses = self.order_addresses.get(int(order_id)) or []
        return httpx.Response(200, json=addresses) if addresses else httpx.Response(204)

    def _list_orders(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        items = list(self.orders.values())
        if "min_date_modified" in params:
            since = datetime.fromisoformat(params["min_date_modified"])
            items = [o for o in items if parsedate_to_datetime(o["date_modified"]) >= since]
        items.sort(key=lambda o: (parsedate_to_datetime(o["date_modified"]), o["id"]))
        limit, page = int(params.get("limit", "50")), int(params.get("page", "1"))
        chunk = items[(page - 1) * limit : page * limit]
        return httpx.Response(200, json=chunk) if chunk else httpx.Response(204)

    def _list_hooks(self, request: httpx.Request) -> httpx.Response:
        items = list(self.hooks.values())
        pagination = {"total": len(items), "count": len(items), "per_page": 250, "current_page": 1, "total_pages": 1}
        return httpx.Response(200, json={"data": items, "meta": {"pagination": pagination}})

    def _create_hook(self, request: httpx.Request) -> httpx.Response:
        hook = self.add_hook(**json.loads(request.content))
        return httpx.Response(200, json={"data": hook, "meta": {}})

    def _update_hook(self, request: httpx.Request, hook_id: str) -> httpx.Response:
        hook = self.hooks.get(int(hook_id))
        if hook is None:
            return _errors(404, "Not found")
        hook.update(json.loads(request.content))
        return httpx.Response(200, json={"data": hook, "meta": {}})
