"""Small per-process caches for the checkout hot path.

Two kinds, both bounded:

- Parsed values keyed by their stored JSON text: campaign rules (with a batch override
  applied), code formats, shop preferences. The text is read with its row on every request,
  so these can never be stale; they only save pydantic from re-validating the same JSON.
- Rows that rarely change, kept for `TTL_SECONDS` (`TTLCache`): API keys by prefix and the
  code formats of each shop's campaigns (used to normalise what a shopper typed). Web
  processes are stateless and scale out, so a change made through *another* process is seen
  here within `TTL_SECONDS`: a revoked API key stops working everywhere within 5 s; a new
  campaign's format is used to normalise input within 5 s (codes typed in their stored or
  generic form are found at once). In *this* process, every ORM flush that writes a
  Campaign, Shop or ApiKey row bumps `generation()`, which empties these caches at once, so
  the embedded default (one process) never serves stale rows.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from plugin.formats import codes
from plugin.rules import CampaignRules, RulesOverride, apply_override
from plugin.store.models import ApiKey, Campaign, EventEndpoint, Shop
from plugin.store.perengine import PerEngine

K = TypeVar("K")
V = TypeVar("V")

TTL_SECONDS = 5.0
clock = time.monotonic  # (tests move it)
_generation = 0


def generation() -> int:
    """Bumped by every flush that writes a watched row in this process."""
    return _generation


def bump() -> None:
    global _generation
    _generation += 1


class TTLCache(Generic[K, V]):
    """An LRU of at most `maxsize` entries, each valid for `ttl` seconds and only while the
    process generation is the one read before the value was loaded (pass it to `put`)."""

    def __init__(self, maxsize: int, ttl: float = TTL_SECONDS) -> None:
        self.maxsize, self.ttl = maxsize, ttl
        self._data: OrderedDict[K, tuple[V, float, int]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires, gen = entry
        if gen != _generation or clock() >= expires:
            self._data.pop(key, None)
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V, gen: int) -> None:
        if gen != _generation:  # something changed while the value was read: don't keep it
            return
        self._data[key] = (value, clock() + self.ttl, gen)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class EngineCaches:
    """The row caches of one database (tests run several engines in one process)."""

    api_keys: TTLCache[str, Any] = field(default_factory=lambda: TTLCache(1024))
    shop_formats: TTLCache[int, Any] = field(default_factory=lambda: TTLCache(1024))
    shop_origins: TTLCache[int, frozenset[str]] = field(default_factory=lambda: TTLCache(1024))  # CORS
    event_types: TTLCache[int, frozenset[str]] = field(default_factory=lambda: TTLCache(4096))  # plugin.store.eventlog


_per_engine: PerEngine[EngineCaches] = PerEngine()


def for_engine(engine: Engine) -> EngineCaches:
    found = _per_engine.get(engine)
    if found is None:
        found = _per_engine[engine] = EngineCaches()
    return found


# --- parsed JSON, keyed by its stored text --------------------------------------------------


@lru_cache(maxsize=512)
def effective_rules(rules_text: str | None, override_text: str | None) -> CampaignRules | None:
    """A campaign's rules (None for a draft without rules) with its batch's override applied."""
    if not rules_text:
        return None
    data = json.loads(rules_text)
    if not data:
        return None
    rules = CampaignRules.model_validate(data)
    override = batch_override(override_text)
    return apply_override(rules, override) if override is not None else rules


@lru_cache(maxsize=512)
def batch_override(override_text: str | None) -> RulesOverride | None:
    if not override_text:
        return None
    data = json.loads(override_text)
    return RulesOverride.model_validate(data) if data else None


@lru_cache(maxsize=256)
def code_format(format_text: str) -> codes.CodeFormat:
    return codes.CodeFormat.from_dict(json.loads(format_text))


@lru_cache(maxsize=256)
def detailed_refusals(preferences_text: str | None) -> bool | None:
    """The shop's choice of detailed (True) or generic (False) refusals for shoppers; None when
    it made none (`checkout.Decision.as_json` then decides per kind of caller)."""
    prefs = json.loads(preferences_text) if preferences_text else {}
    chosen = prefs.get("detailed_refusals") if isinstance(prefs, dict) else None
    return None if chosen is None else bool(chosen)


# --- in-process invalidation ------------------------------------------------------------------

_WATCHED: tuple[type, ...] = (ApiKey, Campaign, EventEndpoint, Shop)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    for obj in chain(session.new, session.dirty, session.deleted):
        if isinstance(obj, _WATCHED):
            bump()
            session.info[_CHANGED] = True
            return


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    # Again once committed: a reader on another thread (PostgreSQL) may have cached the old
    # row between the flush and the commit.
    if session.info.pop(_CHANGED, False):
        bump()


_CHANGED = "couponry_cached_rows_changed"
