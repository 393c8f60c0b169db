"""Shared fixtures: a real database per test (a SQLite file, or PostgreSQL when
COUPONRY_TEST_DATABASE_URL is set), the settings, the app and a local shop."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import SQLModel

import plugin.store.models  # noqa: F401  (registers tables)
from plugin.settings import Secret, Settings, _normalise_database_url
from plugin.shops.shops import ensure_local_shop
from plugin.store import migrate
from plugin.store.db import make_engine, session_scope

POSTGRES_URL = os.environ.get("COUPONRY_TEST_DATABASE_URL")


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` (pyproject's addopts): no workers on PostgreSQL, whose tests share one database
    (truncated between tests); on SQLite each test has its own file, so xdist's default holds."""
    return 0 if POSTGRES_URL else None


def pytest_report_header() -> str:
    where = f"postgresql {POSTGRES_URL}" if POSTGRES_URL else "sqlite (set COUPONRY_TEST_DATABASE_URL for PostgreSQL)"
    return f"couponry database: {where}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if POSTGRES_URL:
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: set COUPONRY_TEST_DATABASE_URL (as .ci/run does)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine | None]:
    if not POSTGRES_URL:
        yield None
        return
    engine = make_engine(_normalise_database_url(POSTGRES_URL))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    SQLModel.metadata.create_all(engine)
    migrate.stamp(engine)  # the commands refuse a PostgreSQL database that is not at the head
    yield engine
    engine.dispose()


def _truncate(engine: Engine) -> None:
    names = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def database_url(tmp_path: Path, postgres_engine: Engine | None) -> str:
    if postgres_engine is not None:
        return postgres_engine.url.render_as_string(hide_password=False)
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def engine(database_url: str, postgres_engine: Engine | None) -> Iterator[Engine]:
    """A clean database with every table, on the dialect under test."""
    if postgres_engine is not None:
        _truncate(postgres_engine)
        yield postgres_engine
        return
    engine = make_engine(database_url)
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=Secret("test-secret-key-0123456789-abcdefghij"),
        run_worker_in_process=False,
    )


@pytest.fixture
def shop_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, "local.couponry.test")
        assert shop.id is not None
        return shop.id


@pytest.fixture
def gc_state() -> Iterator[None]:
    """For tests of code that tunes the garbage collector (`plugin.runtime.settle_heap`): the
    test process gets its own settings back."""
    import gc

    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
