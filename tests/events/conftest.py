"""Helpers for the outbound-event tests: endpoints made through the service, a worker running
only the event and alert jobs, and making retries due now (a zero wait)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, update
from sqlmodel import col, select

from plugin.events import channels, delivery, endpoints
from plugin.jobs.worker import Worker
from plugin.settings import Settings
from plugin.store import caches, eventlog
from plugin.store.db import session_scope
from plugin.store.jobcontext import JobContext
from plugin.store.models import EventAttempt, EventDelivery, EventEndpoint, EventMessage, Job, utcnow

URL = "https://hooks.example.com/couponry"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    caches.bump()  # another test's database may have had endpoints for the same shop id


def make_endpoint(
    engine: Engine, settings: Settings, shop_id: int, types: Sequence[str] = eventlog.EVENT_TYPES, url: str = URL
) -> tuple[int, str]:
    with session_scope(engine) as session:
        created = endpoints.create(session, settings, shop_id=shop_id, url=url, event_types=types, now=utcnow())
        assert created.endpoint.id is not None
        return created.endpoint.id, created.secret


def emit(engine: Engine, shop_id: int, type: str, **data: Any) -> str | None:
    with session_scope(engine) as session:
        return eventlog.emit(session.connection(), shop_id=shop_id, type=type, data=data, now=utcnow())


def worker(engine: Engine, settings: Settings, http: httpx.AsyncClient) -> Worker:
    return Worker(JobContext(engine, settings, http), handlers={**delivery.HANDLERS, **channels.HANDLERS}, sweeps=())


def make_due(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.execute(update(Job).where(col(Job.status) == "queued").values(run_after=utcnow() - timedelta(seconds=1)))


async def drain(w: Worker, engine: Engine, *, rounds: int = 50) -> int:
    """Run jobs, retries made due at once, until none is left; how many runs."""
    for runs in range(rounds):
        make_due(engine)
        if not await w.run_once():
            return runs
    raise AssertionError("jobs still running after many rounds")


def jobs(engine: Engine, kind: str = eventlog.DELIVER) -> list[Job]:
    with session_scope(engine) as session:
        return list(session.exec(select(Job).where(col(Job.kind) == kind).order_by(col(Job.id))).all())


def deliveries(engine: Engine) -> list[EventDelivery]:
    with session_scope(engine) as session:
        return list(session.exec(select(EventDelivery).order_by(col(EventDelivery.id))).all())


def messages(engine: Engine) -> list[EventMessage]:
    with session_scope(engine) as session:
        return list(session.exec(select(EventMessage).order_by(col(EventMessage.id))).all())


def attempts(engine: Engine) -> list[EventAttempt]:
    with session_scope(engine) as session:
        return list(session.exec(select(EventAttempt).order_by(col(EventAttempt.id))).all())


def endpoint(engine: Engine, endpoint_id: int) -> EventEndpoint:
    with session_scope(engine) as session:
        return session.get_one(EventEndpoint, endpoint_id)
