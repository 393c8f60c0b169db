"""Units of work for the entry layer (routes, commands): a service call run in one transaction,
or a read-only one, off the event loop. This is all the entry layer sees of the database: the
engine and session machinery (`plugin.store.db`: cursors, writer turns, dialect tuning) is out of
its reach (an import-linter contract), and every query runs in a service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from plugin.store import db

T = TypeVar("T")


def open_engine(url: str) -> Engine:
    """The app's engine for a database URL (a ConfigError names what is wrong with it)."""
    return db.make_engine(url)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work commits together at the end, or not at all."""
    with db.session_scope(engine) as session:
        yield session


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """A read-only session: no write lock on SQLite."""
    with db.read_session(engine) as session:
        yield session


async def in_thread(engine: Engine, work: Callable[[], T]) -> T:
    """Blocking database work, off the event loop (in the engine's worker threads)."""
    return await db.run(engine, work)


def healthy(engine: Engine) -> bool:
    """The database answers."""
    return db.ping(engine)
