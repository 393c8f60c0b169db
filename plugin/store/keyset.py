"""Keyset pages: a page is the rows after a cursor in a fixed order, never an OFFSET, and never
a count of the whole table. The cursor is the last row's sort key, opaque to callers."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, and_, or_

from plugin.errors import InvalidInput

T = TypeVar("T")
MAX_LIMIT = 200


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of rows and the cursor of the next one (None: this was the last)."""

    rows: list[T]
    next_cursor: str | None


def encode(values: Sequence[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str | None, kinds: Sequence[type]) -> list[Any] | None:
    """The sort key a cursor holds, each value of its kind (int, str or datetime); a cursor
    that is not one of ours is refused as bad input."""
    if cursor is None:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(kinds):
            raise ValueError
        return [datetime.fromisoformat(v) if k is datetime else k(v) for k, v in zip(kinds, raw, strict=True)]
    except (ValueError, TypeError):
        raise InvalidInput("cursor is not one this listing gave", reason="invalid_cursor") from None


def after(columns: Sequence[Any], key: Sequence[Any], *, descending: bool) -> ColumnElement[bool]:
    """Rows strictly after `key` in the order of `columns` (all ascending or all descending),
    written as nested OR/AND so both databases use the index on those columns."""
    col, rest = columns[0], columns[1:]
    beyond: ColumnElement[bool] = col < key[0] if descending else col > key[0]
    if not rest:
        return beyond
    return or_(beyond, and_(col == key[0], after(rest, key[1:], descending=descending)))


def clamp(limit: int) -> int:
    return max(1, min(limit, MAX_LIMIT))


def page(rows: Sequence[T], limit: int, key: Callable[[T], Sequence[Any]]) -> Page[T]:
    """The page from up to `limit + 1` fetched rows: the extra one only says there is more."""
    items = list(rows[:limit])
    more = len(rows) > limit and bool(items)
    return Page(items, encode(key(items[-1])) if more else None)
