"""Values kept per database engine, for as long as the engine lives (tests run several)."""

from __future__ import annotations

import weakref
from typing import Generic, TypeVar

from sqlalchemy import Engine

V = TypeVar("V")


class PerEngine(Generic[V]):
    """A weak mapping from engines to values, quick for the engine asked for last.

    A `WeakKeyDictionary` lookup makes a weak reference on every call (about 1 µs); the
    checkout path asks several of these per request, nearly always for the same engine, so
    the last engine found is remembered, weakly as well."""

    def __init__(self) -> None:
        self._values: weakref.WeakKeyDictionary[Engine, V] = weakref.WeakKeyDictionary()
        self._last: tuple[weakref.ref[Engine], V] | None = None

    def get(self, engine: Engine) -> V | None:
        last = self._last
        if last is not None and last[0]() is engine:
            return last[1]
        found = self._values.get(engine)
        if found is not None:
            self._last = (weakref.ref(engine), found)
        return found

    def __setitem__(self, engine: Engine, value: V) -> None:
        self._values[engine] = value
        self._last = (weakref.ref(engine), value)
