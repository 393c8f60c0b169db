"""The app factory and its health check."""

from __future__ import annotations

from sqlalchemy import Engine
from starlette.testclient import TestClient

from plugin.settings import Settings
from plugin.web.app import create_app


def test_healthz_reports_the_database(settings: Settings, engine: Engine) -> None:
    with TestClient(create_app(settings, engine=engine)) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == {"ok": True, "dialect": engine.dialect.name}


def test_healthz_says_when_the_database_is_down(settings: Settings, tmp_path: object) -> None:
    from plugin.store.db import make_engine

    broken = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with TestClient(create_app(settings, engine=broken)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"]["ok"] is False
