"""Delivers the sandbox's order webhooks the way real platforms do, and worse when asked.

Each event is signed (`X-Sandbox-Hmac-Sha256`: base64 HMAC-SHA256 of the raw body) and keeps
its delivery id on every retry and duplicate. Only a 2xx within 5 seconds counts; anything
else is retried after 1, 2, 4, ... times `retry_base_seconds`, up to `max_retries` times, then the
delivery is failed (as Shopify does with 8 retries). The knobs add duplicates (sent at the
same moment, to race each other), random order, random delays and failed attempts (dropped,
or sent with the answer lost, so the app sees it again).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
from contextlib import suppress
from datetime import timedelta

import httpx
from sqlalchemy import Engine

from plugin import shared_secrets as keys
from plugin.sandbox import store
from plugin.sandbox.store import DueDelivery, Knobs
from plugin.settings import Settings
from plugin.store.db import run, session_scope
from plugin.store.models import utcnow

log = logging.getLogger("couponry.sandbox")

TIMEOUT = httpx.Timeout(5.0, connect=1.0)


def sign(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


class Deliverer:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        client: httpx.AsyncClient | None = None,
        *,
        concurrency: int = 16,
        poll_interval: float = 0.2,
        lease: timedelta = timedelta(seconds=30),
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.client = client
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease = lease
        self._wake = asyncio.Event()
        self._secret = keys.webhook_secret(settings)

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                sent = await self.deliver_due()
            except Exception:
                log.exception("sandbox deliverer error")
                sent = 0
            if not sent:
                self._wake.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    async def deliver_due(self, limit: int = 200) -> int:
        """Attempt every due delivery once (up to `limit`); return how many were attempted."""
        assert self.client is not None, "the deliverer needs an HTTP client"
        engine = self.engine
        batch = await run(engine, lambda: store.claim_deliveries(engine, now=utcnow(), lease=self.lease, limit=limit))
        if not batch:
            return 0
        knobs = await run(engine, lambda: self._knobs({d.shop for d in batch}))
        if any(knobs[d.shop].reorder for d in batch):
            random.shuffle(batch)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(delivery: DueDelivery) -> None:
            async with gate:
                await self._attempt(delivery, knobs[delivery.shop])

        await asyncio.gather(*(one(d) for d in batch))
        return len(batch)

    def _knobs(self, shops: set[str]) -> dict[str, Knobs]:
        with session_scope(self.engine) as session:
            return {shop: store.get_knobs(session, shop) for shop in shops}

    async def _attempt(self, delivery: DueDelivery, knobs: Knobs) -> None:
        injected = random.random() < knobs.webhook_fail_rate
        copies = 2 if random.random() < knobs.duplicate else 1
        error: str | None
        if injected and random.random() < 0.5:
            ok, sends, error = False, 0, "injected failure: not sent"
        else:
            answers = await asyncio.gather(*(self._send(delivery, knobs) for _ in range(copies)))
            sends = copies
            ok = all(a is None for a in answers)
            error = next((a for a in answers if a is not None), None)
            if injected:
                ok, error = False, "injected failure: answer lost"
        engine = self.engine
        await run(
            engine,
            lambda: store.finish_delivery(engine, delivery, ok=ok, sends=sends, error=error, knobs=knobs, now=utcnow()),
        )

    async def _send(self, delivery: DueDelivery, knobs: Knobs) -> str | None:
        """POST the webhook; None on a 2xx, else what went wrong."""
        assert self.client is not None
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Couponry-Sandbox/1",
            "X-Sandbox-Topic": delivery.topic,
            "X-Sandbox-Shop-Domain": delivery.shop,
            "X-Sandbox-Delivery-Id": delivery.delivery_id,
            "X-Sandbox-Triggered-At": utcnow().isoformat(),
            "X-Sandbox-Hmac-Sha256": sign(self._secret, body),
        }
        url = knobs.webhook_url or keys.webhook_url(self.settings)
        try:
            response = await self.client.post(url, content=body, headers=headers, timeout=TIMEOUT)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:1000]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"
