"""`POST /webhooks/{platform}`: verify, store, answer, then process.

1. The connector verifies the signature over the raw body, in constant time; a failure is a
   401 problem and nothing is stored.
2. The delivery is stored, deduplicated by (platform, delivery id), and committed: through
   `plugin.orders.ingest`, which commits every delivery queued meanwhile in one transaction (group
   commit), so concurrent requests share one write and one fsync.
3. We answer 2xx once that commit is done: platforms time out after a few seconds
   (Shopify: 5) and count slow answers as failures.
4. In this process, an order that only redeems is recorded in the same transaction as its
   batch (so it is processed when answered), and other deliveries by the ingest processor in
   batches; with `webhook_processing = "worker"`, the workers' intake does it all
   (`plugin.orders.ingest.intake`).
   If the process dies between 3 and 4, the delivery stays `received` and the worker's sweep
   processes it a few seconds later: the stored row is its own outbox entry, so the hot path
   costs one write instead of two. Processing is guarded, so the batch and a sweep never
   apply one delivery twice.

Nothing unsigned is stored: WooCommerce's creation ping (`webhook_id=…`, unsigned) is answered
200 so the hook activates, and forgotten. A delivery larger than the body limit
(`COUPONRY_WEBHOOK_BODY_LIMIT`, plugin/web/limits.py) is refused 413 unread, but never silently
lost: `refused` logs it, and for a known shop raises one alert per shop and platform naming it
(topic, delivery id, size: from its headers); reconciliation then polls the order, on the
platforms that can be polled (all of them but the sandbox).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from connectors import UnknownConnector
from connectors.base import Delivery, ShopConnector
from connectors.errors import BadSignature, ConnectorError
from plugin import logs
from plugin.errors import PluginError
from plugin.metrics import WEBHOOKS
from plugin.orders import webhooks
from plugin.orders.ingest import Ingest
from plugin.orders.orders import Processor
from plugin.platforms.connections import shop_connector, webhook_headline, webhook_shop_hint
from plugin.shops.shops import shop_on_platform
from plugin.store.models import utcnow
from plugin.store.units import in_thread, transaction
from plugin.web.limits import declared_length
from plugin.web.problems import problem

log = logging.getLogger(__name__)
PREFIX = "/webhooks/"


def _shop_id(engine: Engine, cache: dict[tuple[str, str], int], platform: str, domain: str) -> int | None:
    key = (platform, domain)
    found = cache.get(key)
    if found is not None:
        return found
    with Session(engine) as session:
        shop = shop_on_platform(session, platform, domain)
    shop_id = shop.id if shop is not None else None
    if shop_id is not None:
        cache[key] = shop_id  # only hits: a shop that installs later must be found then
    return shop_id


def _shop_connector(processor: Processor, platform: str, domain: str) -> ShopConnector | None:
    with Session(processor.engine) as session:
        shop = shop_on_platform(session, platform, domain)
    if shop is None:
        return None
    try:
        return shop_connector(processor.settings, processor.http, shop)
    except (ConnectorError, PluginError):  # uninstalled, or credentials unreadable: nothing verifies
        return None


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers as a plain dict, names in lower case as the ASGI server gives them,
    the first of a repeated name kept (as `request.headers.get` would): read once, where each
    lookup in Starlette's `Headers` scans and decodes the whole list again."""
    found: dict[str, str] = {}
    for name, value in raw:
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found


async def receive(request: Request) -> Response:
    platform = request.path_params["platform"]
    processor: Processor = request.app.state.processor
    engine = processor.engine
    try:
        connector = processor.connector(platform)
    except UnknownConnector:
        WEBHOOKS.labels("unknown", "unknown_platform").inc()  # a label per stranger's path would grow forever
        return problem(404, "unknown_platform", f"no shop platform named {platform!r}")
    body = await request.body()
    headers = _headers(request.scope["headers"])
    hint = webhook_shop_hint(platform, headers, body)
    if hint is not None:  # signed with that shop's own secret: its connector verifies
        own = await in_thread(engine, lambda: _shop_connector(processor, platform, hint))
        connector = own if own is not None else connector
    try:
        connector.verify_webhook(headers, body)
    except BadSignature as exc:
        WEBHOOKS.labels(platform, "bad_signature").inc()
        return problem(401, "bad_signature", exc.message)

    delivery: Delivery | None = None
    error: str | None = None
    ingest: Ingest = request.app.state.background.ingest
    try:
        # processed here: parsed whole now; by the workers: they parse the stored payload
        read = connector.parse_webhook if ingest.process_here else connector.identify_webhook
        delivery = read(headers, body)
    except ConnectorError as exc:
        error = f"could not parse the delivery: {exc}"
    if delivery is not None and delivery.kind == "ping":  # unsigned, and says nothing we act on
        WEBHOOKS.labels(platform, "ping").inc()
        return Response(status_code=delivery.response_status)
    delivery_id = delivery.delivery_id if delivery else "sha256:" + hashlib.sha256(body).hexdigest()
    cache: dict[tuple[str, str], int] = request.app.state.webhook_shops
    shop_id: int | None = None
    if delivery is not None:
        shop_id = cache.get((platform, delivery.shop))
        if shop_id is None:
            shop_id = await in_thread(engine, lambda: _shop_id(engine, cache, platform, delivery.shop))
    logs.bind_shop(shop_id)
    status = "received"
    if error is not None:
        status = "failed"
    elif shop_id is None:
        status, error = "ignored", f"no {platform} shop {delivery.shop if delivery else ''!r} is installed"

    row = webhooks.delivery_values(
        platform=platform,
        delivery_id=delivery_id,
        topic=delivery.topic if delivery else "",
        shop_id=shop_id,
        payload=body.decode("utf-8", errors="replace"),
        headers=headers,
        status=status,
        error=error,
    )
    # committed (with its batch, and processed in it if it only redeems) before we answer
    stored = await ingest.store(row, delivery if status == "received" else None)
    WEBHOOKS.labels(platform, status if stored.created else "duplicate").inc()
    answer = delivery.response_status if delivery else 200
    if not stored.created or stored.taken or status != "received" or delivery is None or shop_id is None:
        return Response(status_code=answer)  # nothing to do, or the pipeline (or the workers) did it
    # no pipeline running (or it is full): process it after the answer, one by one
    return Response(
        status_code=answer,
        background=BackgroundTask(processor.process, stored.event_id, delivery=delivery, shop_id=shop_id),
    )


@dataclass
class _Waiting:
    count: int = 0
    recent: list[dict[str, Any]] = field(default_factory=list)  # newest first


class Refusals:
    """Refusals for size waiting to be recorded, per (shop id, platform): written together
    `linger` seconds after the first of them, so a flood costs at most one write per shop and
    platform per `linger` (on SQLite a write holds the event loop). `drain` writes them now."""

    linger = 1.0

    def __init__(self) -> None:
        self._waiting: dict[tuple[int, str], _Waiting] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._now = asyncio.Event()

    def add(self, key: tuple[int, str], refusal: dict[str, Any], write: Callable[[_Waiting], Awaitable[None]]) -> None:
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = _Waiting()
            task = asyncio.create_task(self._write(key, write))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        waiting.count += 1
        waiting.recent = [refusal, *waiting.recent][: webhooks.RECENT_REFUSALS]

    async def _write(self, key: tuple[int, str], write: Callable[[_Waiting], Awaitable[None]]) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._now.wait(), self.linger)
        batch = self._waiting.pop(key)
        try:
            await write(batch)
        except Exception:  # each refusal was logged when it came
            log.exception("recording %s refused %s webhook deliveries failed", batch.count, key[1])

    async def drain(self) -> None:
        self._now.set()
        while self._tasks:
            await asyncio.gather(*self._tasks)
        self._now.clear()


async def refused(scope: Scope, size: int, limit: int) -> None:
    """A delivery refused for its size (`limits.BodyLimits.on_refused`): logged, and for a known
    shop, recorded in its alert. Only its headers are read, and none of it is stored but them."""
    platform = scope["path"][len(PREFIX) :]
    state = scope["app"].state
    processor: Processor = state.processor
    try:
        connector = processor.connector(platform)
    except UnknownConnector:
        return
    WEBHOOKS.labels(platform, "too_large").inc()
    shop, topic, delivery_id = webhook_headline(platform, _headers(scope["headers"]))
    declared = declared_length(scope) is not None
    log.warning(
        "refused a %s webhook of %s%s bytes (limit %s): topic %r, delivery %r, shop %r",
        platform, "" if declared else "over ", size, limit, topic, delivery_id, shop,
    )  # fmt: skip
    if shop is None:
        return
    engine = processor.engine
    cache: dict[tuple[str, str], int] = state.webhook_shops
    shop_id = cache.get((platform, shop))
    if shop_id is None:
        shop_id = await in_thread(engine, lambda: _shop_id(engine, cache, platform, shop))
    if shop_id is None:
        return
    polled = hasattr(connector, "list_recent_orders") and processor.settings.reconcile_interval_hours > 0
    refusal = {"topic": topic, "delivery_id": delivery_id, "size": size, "declared": declared, "at": utcnow().isoformat()}

    def record(batch: _Waiting) -> None:
        with transaction(engine) as session:
            webhooks.record_refused(
                session, shop_id, platform=platform, refusals=batch.recent, count=batch.count, limit=limit,
                fetched_later=polled,
            )  # fmt: skip

    async def write(batch: _Waiting) -> None:
        await in_thread(engine, lambda: record(batch))

    refusals: Refusals = state.webhook_refusals
    refusals.add((shop_id, platform), refusal, write)


routes = [Route("/webhooks/{platform}", receive, methods=["POST"])]
