"""`POST /webhooks/{platform}`: verify, store, answer, then process.

1. The connector verifies the signature over the raw body, in constant time; a failure is a
   401 problem and nothing is stored.
2. The delivery is stored, deduplicated by (platform, delivery id), and committed.
3. We answer 2xx: platforms time out after a few seconds (Shopify: 5) and count slow
   answers as failures.
4. A background task (after the response, in this process) turns it into redemptions. If the
   process dies between 3 and 4, the delivery stays `received` and the worker's sweep
   processes it a few seconds later: the stored row is its own outbox entry, so the hot path
   costs one write instead of two. Processing is guarded, so the task and a sweep never
   apply one delivery twice.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors import UnknownConnector
from connectors.base import Delivery
from connectors.errors import BadSignature, ConnectorError
from plugin import webhooks
from plugin.db import run, session_scope
from plugin.models import Shop
from plugin.orders import Processor
from plugin.web.problems import problem


def _shop_id(engine: Engine, cache: dict[tuple[str, str], int], platform: str, domain: str) -> int | None:
    key = (platform, domain)
    found = cache.get(key)
    if found is not None:
        return found
    with Session(engine) as session:
        shop_id = session.exec(select(Shop.id).where(col(Shop.platform) == platform, col(Shop.domain) == domain)).first()
    if shop_id is not None:
        cache[key] = shop_id  # only hits: a shop that installs later must be found then
    return shop_id


async def receive(request: Request) -> Response:
    platform = request.path_params["platform"]
    processor: Processor = request.app.state.processor
    engine = processor.engine
    try:
        connector = processor.connector(platform)
    except UnknownConnector:
        return problem(404, "unknown_platform", f"no shop platform named {platform!r}")
    body = await request.body()
    try:
        connector.verify_webhook(request.headers, body)
    except BadSignature as exc:
        return problem(401, "bad_signature", exc.message)

    delivery: Delivery | None = None
    error: str | None = None
    try:
        delivery = connector.parse_webhook(request.headers, body)
    except ConnectorError as exc:
        error = f"could not parse the delivery: {exc}"
    delivery_id = delivery.delivery_id if delivery else "sha256:" + hashlib.sha256(body).hexdigest()
    cache: dict[tuple[str, str], int] = request.app.state.webhook_shops
    shop_id = await run(engine, lambda: _shop_id(engine, cache, platform, delivery.shop)) if delivery else None
    status = "received"
    if error is not None:
        status = "failed"
    elif shop_id is None:
        status, error = "ignored", f"no {platform} shop {delivery.shop if delivery else ''!r} is installed"

    def store() -> tuple[int, bool]:
        with session_scope(engine) as session:
            return webhooks.store_delivery(
                session,
                platform=platform,
                delivery_id=delivery_id,
                topic=delivery.topic if delivery else "",
                shop_id=shop_id,
                payload=body.decode("utf-8", errors="replace"),
                headers=request.headers,
                status=status,
                error=error,
            )

    event_id, created = await run(engine, store)
    answer = delivery.response_status if delivery else 200
    if not created or status != "received":
        return Response(status_code=answer)
    return Response(
        status_code=answer, background=BackgroundTask(processor.process, event_id, delivery=delivery, shop_id=shop_id)
    )


routes = [Route("/webhooks/{platform}", receive, methods=["POST"])]
