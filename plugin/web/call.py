"""One authenticated API request (`Call`): its shop, its key, its parsed parameters, and the
transaction its service calls run in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.requests import ClientDisconnect, Request

from plugin.checkout.ratelimit import GuessLimits
from plugin.errors import InvalidInput, NotFound
from plugin.shops import apikeys
from plugin.store.units import in_thread, reading, transaction

M = TypeVar("M", bound=BaseModel)
# The largest id each path parameter's table can hold (INTEGER or BIGINT primary keys); the
# OpenAPI document says so too, and a larger one is simply not found.
MAX_IDS = {
    "campaign_id": 2**31 - 1,
    "batch_id": 2**31 - 1,
    "reservation_id": 2**31 - 1,
    "redemption_id": 2**63 - 1,
    "partner_id": 2**31 - 1,
    "pool_id": 2**31 - 1,
    "endpoint_id": 2**31 - 1,
    "delivery_id": 2**63 - 1,
}


@dataclass
class Call:
    """One authenticated API request: its shop, key and parsed parameters."""

    request: Request
    key: apikeys.KeyInfo
    engine: Engine

    @property
    def shop_id(self) -> int:
        return self.key.shop_id

    @property
    def storefront(self) -> bool:
        """A key used from shoppers' browsers: it only ever gets the shopper's view."""
        return "storefront" in self.key.scopes

    @property
    def limits(self) -> GuessLimits:
        limits: GuessLimits = self.request.app.state.limiter
        return limits

    def path_int(self, name: str) -> int:
        value = self.request.path_params[name]
        assert isinstance(value, int)
        if value > MAX_IDS[name]:  # no row has such an id, and the database can't even compare it
            raise NotFound(f"no {name.removesuffix('_id')} has the id {value}", reason="not_found")
        return value

    async def body(self, model: type[M]) -> M:
        raw = await read_body(self.request)
        if b"\\u0000" in raw:  # PostgreSQL text can't hold NUL; refuse it here with a reason
            raise InvalidInput("text fields must not contain NUL characters", reason="invalid_input")
        return model.model_validate_json(raw or b"{}")

    async def read(self, fn: Callable[[Session], Any]) -> Any:
        """Read-only work: no write lock on SQLite (see `db.read_session`)."""

        def work() -> Any:
            with reading(self.engine) as session:
                return fn(session)

        return await in_thread(self.engine, work)

    async def db(self, fn: Callable[[Session], Any]) -> Any:
        def work() -> Any:
            with transaction(self.engine) as session:
                return fn(session)

        return await in_thread(self.engine, work)


async def read_body(request: Request) -> bytes:
    """`await request.body()`, read straight from the ASGI `receive`: the same bytes, the same
    `ClientDisconnect`, and the body kept on the request for a later `request.body()`.

    Starlette reads it through an async generator (`Request.stream`), whose setup and
    teardown cost more than the one message a checkout call's body comes in."""
    if hasattr(request, "_body") or request._stream_consumed:
        return await request.body()  # read before (or streamed): Starlette's own answer
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            request._is_disconnected = True
            raise ClientDisconnect()
    request._stream_consumed = True
    body: bytes = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body
    return body
