"""The sandbox store (Couponry's built-in test platform), spoken to over HTTP like any other.

Its API is documented in `plugin/sandbox/README.md`. What is particular to it:

- **Auth.** `X-Sandbox-Shop` names the shop and `X-Sandbox-Access-Token` carries its token.
- **Base URL.** `ConnectorConfig.base_url`, by default `{public_url}/sandbox/api` of the app.
- **Per-code ends.** A code's end changed after its push goes by `PATCH /discounts/{id}/codes`.
- **Batches.** At most 250 codes per `POST /discounts/{id}/codes`; each code gets its own
  result inside a 200. A code the discount already holds comes back `ok` (`existing: true`),
  so a push repeated after a crash is harmless; a deactivated one is made active again.
- **Limits.** A leaky bucket (40 requests/s by default) answers 429 with `Retry-After`.
- **Money.** Orders carry decimal strings ("80.00"); we turn them into minor units.
- **Addresses.** An order's `shipping_address` (`address1`, `address2`, `zip`, `country_code`, as
  Shopify names them; null without one) becomes `OrderEvent.shipping_address`.
- **Webhooks.** `X-Sandbox-Hmac-Sha256` is base64(HMAC-SHA256(secret, raw body)); the delivery
  id (`X-Sandbox-Delivery-Id`) is the same on every retry and duplicate of one event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Final

import httpx

from connectors import json_body
from connectors.base import (
    CODE_GONE,
    CodeEnd,
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
)
from connectors.errors import BadSignature, ConnectorError, Rejected
from connectors.headers import header
from connectors.http import Wait, raise_for_status, retrying, send
from connectors.money import to_minor

TOPIC_KINDS: Final[dict[str, OrderEventKind]] = {
    "orders/create": "created",
    "orders/paid": "paid",
    "orders/cancelled": "cancelled",
    "orders/refunded": "refunded",
    "orders/failed": "failed",
}


class SandboxAuth(httpx.Auth):
    def __init__(self, shop: str, token: str) -> None:
        self._shop = shop
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["X-Sandbox-Shop"] = self._shop
        request.headers["X-Sandbox-Access-Token"] = self._token
        yield request


class SandboxConnector:
    name: ClassVar[str] = "sandbox"
    SCOPES: ClassVar[tuple[str, ...]] = ("discounts", "orders")
    WEBHOOK_TOPICS: ClassVar[tuple[str, ...]] = tuple(TOPIC_KINDS)
    BATCH_SIZE: ClassVar[int] = 250
    SIGNATURE_HEADER: ClassVar[str] = "X-Sandbox-Hmac-Sha256"
    MAX_ATTEMPTS: ClassVar[int] = 4
    PAGE_SIZE: ClassVar[int] = 1000
    TIMEOUT: ClassVar[httpx.Timeout] = httpx.Timeout(10.0, connect=5.0)

    def __init__(
        self,
        client: httpx.AsyncClient,
        config: ConnectorConfig,
        credentials: Credentials | None = None,
        *,
        wait: Wait | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self._client = client
        self.config = config
        self.credentials = credentials
        self._wait = wait
        self._max_attempts = max_attempts or self.MAX_ATTEMPTS
        self._auth = SandboxAuth(credentials.shop_domain, credentials.access_token) if credentials else None

    # --- webhooks ----------------------------------------------------------------------------

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        secret = self.config.webhook_secret or self.config.client_secret
        if not secret:
            raise BadSignature("no webhook secret is configured for the sandbox")
        given = header(headers, self.SIGNATURE_HEADER)
        if not given:
            raise BadSignature("missing X-Sandbox-Hmac-Sha256 header")
        expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected.encode(), given.strip().encode()):
            raise BadSignature("webhook signature does not match")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        # the head is read as identify_webhook reads it, without building its Delivery first
        topic, shop, delivery_id = _head(headers)
        kind = TOPIC_KINDS.get(topic)
        if kind is None:
            return Delivery(delivery_id=delivery_id, topic=topic, shop=shop, kind="other")
        try:
            order = json_body.loads(body)
        except ValueError as exc:
            raise Rejected(f"webhook body is not JSON: {exc}") from exc
        event = _order_event(order, kind=kind, shop=shop, delivery_id=delivery_id)
        return Delivery(delivery_id=delivery_id, topic=topic, shop=shop, kind="order", events=(event,))

    def identify_webhook(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        topic, shop, delivery_id = _head(headers)
        return Delivery(delivery_id=delivery_id, topic=topic, shop=shop, kind="order" if topic in TOPIC_KINDS else "other")

    # --- codes out ---------------------------------------------------------------------------

    async def ensure_discount(self, spec: DiscountSpec) -> str:
        body = {
            "title": spec.title,
            "kind": spec.kind,
            "value": spec.value,
            "currency": spec.currency,
            "uses_per_code": spec.uses_per_code,
            "ends_at": spec.ends_at.isoformat() if spec.ends_at else None,
            # the sandbox answers the same discount for the same reference, so a create that
            # timed out and is tried again never leaves a second discount behind
            # (a replacement discount, drawn with a new marker, is a new reference)
            "reference": f"campaign:{spec.campaign_id}" + (f":{spec.marker}" if spec.marker else ""),
        }
        if spec.platform_discount_id:
            data = await self._call("PUT", f"/discounts/{spec.platform_discount_id}", json=body)
        else:
            data = await self._call("POST", "/discounts", json=body)
        return str(data["id"])

    async def set_discount_status(self, discount_id: str, state: DiscountState) -> None:
        await self._call("PUT", f"/discounts/{discount_id}/status", json={"status": state})

    async def push_codes(self, discount_id: str, codes: Sequence[CodeSpec]) -> list[PushResult]:
        results: list[PushResult] = []
        for start in range(0, len(codes), self.BATCH_SIZE):
            chunk = codes[start : start + self.BATCH_SIZE]
            body = {
                "codes": [
                    {"code": c.display or c.code, "expires_at": c.expires_at.isoformat() if c.expires_at else None} for c in chunk
                ]
            }
            data = await self._call("POST", f"/discounts/{discount_id}/codes", json=body)
            results.extend(_results(chunk, data.get("results", [])))
        return results

    async def deactivate_codes(self, discount_id: str, codes: Sequence[str]) -> list[PushResult]:
        results: list[PushResult] = []
        for start in range(0, len(codes), self.BATCH_SIZE):
            chunk = list(codes[start : start + self.BATCH_SIZE])
            data = await self._call("DELETE", f"/discounts/{discount_id}/codes", json={"codes": chunk})
            by_code = {str(r.get("code", "")).upper(): r for r in data.get("results", [])}
            for code in chunk:
                r = by_code.get(code.upper(), {})
                results.append(PushResult(code=code, ok=bool(r.get("ok")), platform_id=_str(r.get("id")), error=r.get("error")))
        return results

    async def set_code_ends(self, discount_id: str, ends: Sequence[CodeEnd]) -> list[PushResult]:
        """New ends for codes the discount holds (`PATCH /discounts/{id}/codes`), never a
        reactivation; a code it does not hold answers CODE_GONE."""
        results: list[PushResult] = []
        for start in range(0, len(ends), self.BATCH_SIZE):
            chunk = ends[start : start + self.BATCH_SIZE]
            body = {
                "codes": [
                    {"code": e.display or e.code, "expires_at": e.expires_at.isoformat() if e.expires_at else None} for e in chunk
                ]
            }
            data = await self._call("PATCH", f"/discounts/{discount_id}/codes", json=body)
            by_code = {str(r.get("code", "")).upper(): r for r in data.get("results", [])}
            for end in chunk:
                r = by_code.get((end.display or end.code).upper())
                if r is None:
                    results.append(PushResult(code=end.code, ok=False, error="the sandbox did not answer for this code"))
                    continue
                error = CODE_GONE if r.get("error") == "not_found" else r.get("error")
                results.append(PushResult(code=end.code, ok=bool(r.get("ok")), platform_id=_str(r.get("id")), error=error))
        return results

    async def list_codes(self, discount_id: str) -> AsyncIterator[str]:
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": self.PAGE_SIZE}
            if after:
                params["after"] = after
            data = await self._call("GET", f"/discounts/{discount_id}/codes", params=params)
            for item in data.get("codes", []):
                if item.get("active", True):  # a deactivated code is kept but refused at checkout
                    yield str(item["code"])
            after = data.get("next")
            if not after:
                return

    async def fetch_order(self, order_id: str) -> OrderEvent:
        data = await self._call("GET", f"/orders/{order_id}")
        kind: OrderEventKind = _STATUS_KINDS.get(str(data.get("status")), "updated")
        shop = self.credentials.shop_domain if self.credentials else ""
        return _order_event(data, kind=kind, shop=shop, delivery_id="")

    # --- plumbing ----------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        if not self.config.base_url:
            raise ConnectorError("the sandbox connector needs a base_url (the app's /sandbox/api)")
        return self.config.base_url.rstrip("/") + path

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            response = await send(self._client, method, self._url(path), auth=self._auth, timeout=self.TIMEOUT, **kwargs)
            raise_for_status(response, platform=self.name)
            data: dict[str, Any] = response.json()
            return data

        return await retrying(once, attempts=self._max_attempts, wait=self._wait)


_STATUS_KINDS: Final[dict[str, OrderEventKind]] = {
    "paid": "paid",
    "pending": "created",
    "cancelled": "cancelled",
    "refunded": "refunded",
    "failed": "failed",
}


def _head(headers: Mapping[str, str]) -> tuple[str, str, str]:
    """A delivery's topic, shop and id, from its headers."""
    topic = header(headers, "X-Sandbox-Topic") or ""
    shop = header(headers, "X-Sandbox-Shop-Domain") or ""
    delivery_id = header(headers, "X-Sandbox-Delivery-Id") or ""
    if not delivery_id:
        raise Rejected("missing X-Sandbox-Delivery-Id header")
    return topic, shop, delivery_id


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _results(chunk: Sequence[CodeSpec], answers: Sequence[Mapping[str, Any]]) -> list[PushResult]:
    by_code = {str(a.get("code", "")).upper(): a for a in answers}
    out: list[PushResult] = []
    for spec in chunk:
        a = by_code.get((spec.display or spec.code).upper())
        if a is None:
            out.append(PushResult(code=spec.code, ok=False, error="the sandbox did not answer for this code"))
        else:
            out.append(PushResult(code=spec.code, ok=bool(a.get("ok")), platform_id=_str(a.get("id")), error=a.get("error")))
    return out


def _order_event(order: Mapping[str, Any], *, kind: OrderEventKind, shop: str, delivery_id: str) -> OrderEvent:
    try:
        currency = str(order.get("currency") or "USD").upper()
        uses = tuple(
            CodeUse(code=str(d["code"]), amount=to_minor(d.get("amount", "0"), currency)) for d in order.get("discount_codes", [])
        )
        occurred = order.get("updated_at") or order.get("created_at")
        return OrderEvent(
            platform="sandbox",
            shop=shop or str(order.get("shop") or ""),
            kind=kind,
            order_id=str(order["id"]),
            codes=uses,
            customer_id=_str(order.get("customer_id")),
            email=order.get("email"),
            subtotal=to_minor(order.get("subtotal", "0"), currency),
            total=to_minor(order.get("total", "0"), currency),
            net_subtotal=to_minor(order.get("total", "0"), currency),  # the sandbox charges no shipping or tax
            currency=currency,
            channel=order.get("channel"),
            occurred_at=datetime.fromisoformat(occurred) if occurred else None,
            delivery_id=delivery_id,
            shipping_address=ShippingAddress.from_fields(
                order.get("shipping_address"), "address1", "address2", "zip", "country_code"
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Rejected(f"malformed sandbox order: {exc}") from exc
