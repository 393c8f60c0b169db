"""The sandbox store's REST API (documented in README.md), mounted by the app at /sandbox.

Every request names its shop (`X-Sandbox-Shop`) and carries that shop's token
(`X-Sandbox-Access-Token`). A leaky bucket per shop answers 429 with Retry-After, and the
shop's knobs can make requests fail (503) or hang, as real platforms sometimes do.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugin import shared_secrets as keys
from plugin.sandbox import store
from plugin.sandbox.deliverer import Deliverer
from plugin.sandbox.store import Knobs, SandboxError
from plugin.settings import Settings
from plugin.store.db import run, session_scope
from plugin.store.sandbox_models import SandboxDelivery

Endpoint = Callable[[Request, str], Awaitable[Response]]


class LeakyBucket:
    """`rate` requests per second with a burst of the same size; refuses with the wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._level: dict[str, tuple[float, float]] = {}  # shop -> (level, stamp)

    def take(self, shop: str, rate: float) -> float | None:
        now = self._clock()
        level, stamp = self._level.get(shop, (0.0, now))
        level = max(0.0, level - (now - stamp) * rate)
        if level + 1 > rate:
            self._level[shop] = (level, now)
            return (level + 1 - rate) / rate
        self._level[shop] = (level + 1, now)
        return None


class SandboxApi:
    def __init__(self, engine: Engine, settings: Settings, deliverer: Deliverer | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.deliverer = deliverer
        self.bucket = LeakyBucket()
        self._knobs: dict[str, tuple[float, Knobs]] = {}

    def knobs(self, shop: str) -> Knobs:
        cached = self._knobs.get(shop)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        with session_scope(self.engine) as session:
            knobs = store.get_knobs(session, shop)
        self._knobs[shop] = (time.monotonic() + 1.0, knobs)
        return knobs

    def endpoint(self, fn: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            shop = request.headers.get("x-sandbox-shop", "")
            token = request.headers.get("x-sandbox-access-token", "")
            if not shop or not hmac.compare_digest(token.encode(), keys.access_token(self.settings, shop).encode()):
                return _error(401, "missing or invalid X-Sandbox-Shop / X-Sandbox-Access-Token")
            knobs = await run(self.engine, lambda: self.knobs(shop))
            wait = self.bucket.take(shop, knobs.rate_limit)
            if wait is not None:
                return _error(429, "rate limit exceeded", headers={"Retry-After": f"{wait:.3f}"})
            if knobs.api_timeout_rate and random.random() < knobs.api_timeout_rate:
                await asyncio.sleep(knobs.slow_seconds)
            if knobs.api_fail_rate and random.random() < knobs.api_fail_rate:
                return _error(503, "injected failure: service unavailable")
            try:
                return await fn(request, shop)
            except SandboxError as exc:
                return _error(exc.status, exc.message)

        return wrapped

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError as exc:
            raise SandboxError(400, "the body must be JSON") from exc
        if not isinstance(data, dict):
            raise SandboxError(400, "the body must be a JSON object")
        return data

    def _tx(self, fn: Callable[[Session], Any]) -> Awaitable[Any]:
        def work() -> Any:
            with session_scope(self.engine) as session:
                return fn(session)

        return run(self.engine, work)

    # --- discounts and codes -------------------------------------------------------------------

    async def create_discount(self, request: Request, shop: str) -> Response:
        data = await self._body(request)
        discount, created = await self._tx(lambda s: store.save_discount(s, shop, data))
        return JSONResponse(store.discount_json(discount), status_code=201 if created else 200)

    async def update_discount(self, request: Request, shop: str) -> Response:
        data = await self._body(request)
        discount_id = int(request.path_params["id"])
        discount, _ = await self._tx(lambda s: store.save_discount(s, shop, data, discount_id))
        return JSONResponse(store.discount_json(discount))

    async def set_discount_status(self, request: Request, shop: str) -> Response:
        data = await self._body(request)
        discount_id = int(request.path_params["id"])
        status = str(data.get("status", ""))
        discount = await self._tx(lambda s: store.set_discount_status(s, shop, discount_id, status))
        return JSONResponse(store.discount_json(discount))

    async def get_discount(self, request: Request, shop: str) -> Response:
        discount_id = int(request.path_params["id"])
        discount = await self._tx(lambda s: store.get_discount(s, shop, discount_id))
        return JSONResponse(store.discount_json(discount))

    async def add_codes(self, request: Request, shop: str) -> Response:
        data = await self._body(request)
        items = data.get("codes")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise SandboxError(422, "codes must be a list of objects with a code")
        limit = self.knobs(shop).batch_limit
        discount_id = int(request.path_params["id"])
        results = await self._tx(lambda s: store.add_codes(s, shop, discount_id, items, limit))
        return JSONResponse({"results": results})

    async def remove_codes(self, request: Request, shop: str) -> Response:
        data = await self._body(request)
        codes = data.get("codes")
        if not isinstance(codes, list):
            raise SandboxError(422, "codes must be a list of strings")
        limit = self.knobs(shop).batch_limit
        discount_id = int(request.path_params["id"])
        results = await self._tx(lambda s: store.remove_codes(s, shop, discount_id, [str(c) for c in codes], limit))
        return JSONResponse({"results": results})

    async def set_code_ends(self, request: Request, shop: str) -> Response:
        data = await self._body(request)
        items = data.get("codes")
        if not isinstance(items, list) or not all(isinstance(i, dict) and "expires_at" in i for i in items):
            raise SandboxError(422, "codes must be a list of objects with a code and an expires_at")
        limit = self.knobs(shop).batch_limit
        discount_id = int(request.path_params["id"])
        results = await self._tx(lambda s: store.set_code_ends(s, shop, discount_id, items, limit))
        return JSONResponse({"results": results})

    async def list_codes(self, request: Request, shop: str) -> Response:
        discount_id = int(request.path_params["id"])
        try:
            after = int(request.query_params.get("after") or 0)
            limit = int(request.query_params.get("limit") or 1000)
        except ValueError as exc:
            raise SandboxError(422, "after and limit must be integers") from exc
        rows, next_after = await self._tx(lambda s: store.list_codes(s, shop, discount_id, after=after, limit=limit))
        codes = [{"id": r.id, "code": r.code, "active": r.active, "usage_count": r.usage_count} for r in rows]
        return JSONResponse({"codes": codes, "next": str(next_after) if next_after else None})

    # --- orders ------------------------------------------------------------------------------

    async def place_order(self, request: Request, shop: str) -> Response:
        data = await self._body(request)
        codes = data.get("codes") or []
        if not isinstance(codes, list):
            raise SandboxError(422, "codes must be a list of strings")
        currency = str(data.get("currency") or "USD").upper()
        subtotal = store.to_minor(data.get("subtotal", "0"), currency)
        order = await self._tx(
            lambda s: store.place_order(
                s,
                shop,
                codes=[str(c) for c in codes],
                subtotal=subtotal,
                currency=currency,
                email=data.get("email"),
                customer_id=None if data.get("customer_id") is None else str(data["customer_id"]),
                channel=data.get("channel", "web"),
                force=bool(data.get("force")),
                shipping_address=data.get("shipping_address"),
            )
        )
        self._wake()
        return JSONResponse(store.order_json(order), status_code=201)

    async def get_order(self, request: Request, shop: str) -> Response:
        order_id = int(request.path_params["id"])
        order = await self._tx(lambda s: store.get_order(s, shop, order_id))
        return JSONResponse(store.order_json(order))

    async def change_order(self, request: Request, shop: str) -> Response:
        action = request.path_params["action"]
        if action not in ("cancel", "refund", "fail"):
            raise SandboxError(404, f"unknown order action {action!r}")
        order_id = int(request.path_params["id"])
        order = await self._tx(lambda s: store.change_order(s, shop, order_id, action))
        self._wake()
        return JSONResponse(store.order_json(order))

    # --- knobs and deliveries ------------------------------------------------------------------

    async def get_config(self, request: Request, shop: str) -> Response:
        knobs = await self._tx(lambda s: store.get_knobs(s, shop))
        return JSONResponse(knobs.__dict__)

    async def put_config(self, request: Request, shop: str) -> Response:
        data = await self._body(request)
        knobs = await self._tx(lambda s: store.set_knobs(s, shop, data))
        self._knobs.pop(shop, None)
        return JSONResponse(knobs.__dict__)

    async def list_deliveries(self, request: Request, shop: str) -> Response:
        status = request.query_params.get("status")

        def query(session: Session) -> list[dict[str, Any]]:
            stmt = (
                select(SandboxDelivery)
                .where(col(SandboxDelivery.shop) == shop)
                .order_by(col(SandboxDelivery.id).desc())
                .limit(200)
            )
            if status:
                stmt = stmt.where(col(SandboxDelivery.status) == status)
            return [
                {
                    "delivery_id": d.delivery_id,
                    "topic": d.topic,
                    "order_id": d.order_id,
                    "status": d.status,
                    "attempts": d.attempts,
                    "sends": d.sends,
                    "last_error": d.last_error,
                }
                for d in session.exec(stmt).all()
            ]

        return JSONResponse({"deliveries": await self._tx(query)})

    async def resend(self, request: Request, shop: str) -> Response:
        delivery_id = request.path_params["delivery_id"]
        await self._tx(lambda s: store.redeliver(s, shop, delivery_id))
        self._wake()
        return JSONResponse({"delivery_id": delivery_id, "status": "pending"}, status_code=202)

    def _wake(self) -> None:
        if self.deliverer is not None:
            self.deliverer.wake()

    def app(self) -> Starlette:
        e = self.endpoint
        routes = [
            Route("/api/discounts", e(self.create_discount), methods=["POST"]),
            Route("/api/discounts/{id:int}", e(self.get_discount), methods=["GET"]),
            Route("/api/discounts/{id:int}", e(self.update_discount), methods=["PUT"]),
            Route("/api/discounts/{id:int}/status", e(self.set_discount_status), methods=["PUT"]),
            Route("/api/discounts/{id:int}/codes", e(self.add_codes), methods=["POST"]),
            Route("/api/discounts/{id:int}/codes", e(self.remove_codes), methods=["DELETE"]),
            Route("/api/discounts/{id:int}/codes", e(self.list_codes), methods=["GET"]),
            Route("/api/discounts/{id:int}/codes", e(self.set_code_ends), methods=["PATCH"]),
            Route("/api/orders", e(self.place_order), methods=["POST"]),
            Route("/api/orders/{id:int}", e(self.get_order), methods=["GET"]),
            Route("/api/orders/{id:int}/{action:str}", e(self.change_order), methods=["POST"]),
            Route("/api/config", e(self.get_config), methods=["GET"]),
            Route("/api/config", e(self.put_config), methods=["PUT"]),
            Route("/api/deliveries", e(self.list_deliveries), methods=["GET"]),
            Route("/api/deliveries/{delivery_id:str}/resend", e(self.resend), methods=["POST"]),
        ]
        return Starlette(routes=routes)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_sandbox_app(engine: Engine, settings: Settings, deliverer: Deliverer | None = None) -> Starlette:
    return SandboxApi(engine, settings, deliverer).app()
