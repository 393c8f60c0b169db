"""The app factory, its liveness (`/healthz`) and readiness (`/readyz`) checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from plugin.settings import Settings
from plugin.store import migrate
from plugin.store.db import make_engine
from plugin.web.app import create_app

UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/none"


def test_healthz_answers_ok(settings: Settings, engine: Engine) -> None:
    with TestClient(create_app(settings, engine=engine)) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_healthz_stays_ok_when_the_database_is_unreachable(settings: Settings) -> None:
    """A database outage must not get every web process restarted by its liveness probe."""
    broken = make_engine(UNREACHABLE)
    with TestClient(create_app(settings, engine=broken)) as client:
        response = client.get("/healthz")
        ready = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert ready.status_code == 503  # the database really is unreachable: readiness says so
    broken.dispose()


def test_readyz_is_ready_on_a_migrated_database(settings: Settings, engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        migrate.stamp(engine)  # the fixture built the schema with create_all (PostgreSQL's is stamped)
    with TestClient(create_app(settings, engine=engine)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["failed"] == []
    assert body["checks"]["database"] == {"ok": True, "dialect": engine.dialect.name}
    assert "redis" not in body["checks"]  # no REDIS_URL: nothing to check


def test_readyz_names_the_database_when_it_is_unreachable(settings: Settings) -> None:
    broken = make_engine(UNREACHABLE)
    with TestClient(create_app(settings, engine=broken)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["database"]
    assert body["checks"]["database"]["ok"] is False
    assert "does not answer" in body["checks"]["database"]["problem"]
    broken.dispose()


def test_readyz_refuses_a_database_behind_this_version(settings: Settings, engine: Engine) -> None:
    migrate.stamp(engine)
    with engine.begin() as conn:  # as if the release had not run the newest migration
        conn.execute(text("UPDATE alembic_version SET version_num = '09809a451254'"))
    with TestClient(create_app(settings, engine=engine)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["database"]
    assert "behind this couponry" in body["checks"]["database"]["problem"]
    migrate.stamp(engine)  # PostgreSQL's database is shared by the session


def test_readyz_checks_redis_when_configured(settings: Settings, engine: Engine) -> None:
    migrate.stamp(engine)
    down = replace(settings, redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    with TestClient(create_app(down, engine=engine)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["redis"]
    assert body["checks"]["database"]["ok"] is True
    assert "redis://" not in response.text  # never the URL: it may hold a password


@pytest.mark.skipif(not __import__("os").environ.get("COUPONRY_TEST_REDIS_URL"), reason="needs COUPONRY_TEST_REDIS_URL")
def test_readyz_is_ready_with_redis_answering(settings: Settings, engine: Engine) -> None:
    import os

    migrate.stamp(engine)
    with TestClient(create_app(replace(settings, redis_url=os.environ["COUPONRY_TEST_REDIS_URL"]), engine=engine)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["redis"] == {"ok": True}
