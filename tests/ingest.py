"""Helpers for the ingestion, outbox and sandbox tests: campaigns with codes, an app with its
lifespan running, and an HTTP client that reaches the app in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import col, select
from starlette.applications import Starlette

from plugin.campaigns.campaigns import create_campaign
from plugin.campaigns.issuing import generate_codes
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.models import Code
from plugin.web.app import create_app

SHOP = "local.couponry.test"
RULES: dict[str, Any] = {"discount": {"type": "percentage", "percent": "10"}}


def make_campaign(
    engine: Engine, shop_id: int, *, count: int = 0, rules: dict[str, Any] | None = None, name: str = "Test"
) -> int:
    with session_scope(engine) as session:
        campaign = create_campaign(session, shop_id=shop_id, name=name, code_format={"length": 10}, rules=rules or RULES)
        assert campaign.id is not None
        campaign_id = campaign.id
    if count:
        generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=count)
    return campaign_id


def campaign_codes(engine: Engine, campaign_id: int) -> list[Code]:
    with session_scope(engine) as session:
        return list(session.exec(select(Code).where(col(Code.campaign_id) == campaign_id).order_by(col(Code.id))).all())


def sandbox_settings(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, sandbox_enabled=True, run_worker_in_process=False, public_url="http://app.test", **changes)


@asynccontextmanager
async def running_app(settings: Settings, engine: Engine) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app with its lifespan running, and a client whose every request goes into it (the
    app's own outbound calls too: its sandbox connector and deliverer reach the mounted store)."""
    app = create_app(settings, engine=engine)
    transport = httpx.ASGITransport(app=app)

    async def settle(response: httpx.Response) -> None:
        # A webhook is answered once stored; its processing follows in the app's ingest
        # pipeline. Tests look at the outcome right after sending, so wait for it here.
        if response.request.url.path.startswith("/webhooks/"):
            await app.state.background.ingest.drain()

    async with (
        httpx.AsyncClient(transport=transport, base_url=settings.public_url, event_hooks={"response": [settle]}) as client,
        app.router.lifespan_context(app),
    ):
        # Point the app's shared client at itself: no sockets in these tests.
        background = app.state.background
        background.processor.http = client
        if background.deliverer is not None:
            background.deliverer.client = client
        app.state.http = client
        yield app, client
