"""Brute-force protection for the checkout calls, with the `limits` library.

Three counters, all of failed *guesses* (see `plugin.checkout.guessing.counts_as_guess`):

- per shopper (`per_shopper`, 20 a minute): the shopper is the connection's address for a
  `storefront` key, and what a server key (`checkout`, `admin`) names in the request: the
  shopper's address and/or the customer. One shopper over the limit is refused; nobody else is.
- per server key whose calls name no shopper (`per_unnamed_key`, 120 a minute): every shopper
  of that server shares it, so it sits far above what honest typing reaches (one careless
  shopper can't lock the others out; only guesses count, and even a shop
  taking 50,000 orders an hour with 2% typos makes ~17 a minute) yet still bounds a guesser
  behind such a server.
- per shop (`shop_alarm`, 500 an hour): never refuses anyone (that would be the shop-wide
  lock-out this design avoids); crossing it raises the merchant's `guessing` alert, once per
  window. A fixed-window counter: its one increment per failure tells exactly when it crosses.

Counters live in memory on the embedded default and in Redis when REDIS_URL is set, so every
web process shares them. The same figures feed the guess-probability estimates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

FAILED_VALIDATIONS = "20/minute"  # per shopper
UNNAMED_SHOPPERS = "120/minute"  # per server key, for its calls that name no shopper
GUESSING_ALERT = "500/hour"  # failures across one shop before the merchant is alerted


def _per_year(item: RateLimitItem) -> int:
    per_second = item.amount / item.get_expiry()
    return int(per_second * 365 * 24 * 3600)


def attempts_per_year(limit: str = FAILED_VALIDATIONS) -> int:
    """What one client can try in a year at `limit`, without building a limiter (and its storage)."""
    return _per_year(parse(limit))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


ALLOWED = Verdict(True)  # the answer to nearly every check: built once


class FailureLimiter:
    """Counts failed attempts per key; `check` says whether a client may try again now."""

    def __init__(
        self, storage_url: str | None = None, limit: str = FAILED_VALIDATIONS, *, storage: Storage | None = None
    ) -> None:
        storage = _storage(storage_url) if storage is None else storage
        shared = not isinstance(storage, MemoryStorage)
        self.limiter = MovingWindowRateLimiter(storage)
        self.item: RateLimitItem = parse(limit)
        # With memory storage every failure is seen here, so a key that has not failed within
        # the window is allowed without asking the limiter (nearly every checkout: they are
        # valid). Shared storage (Redis) counts other processes' failures too: always ask it.
        self._last_failures: dict[str, float] | None = None if shared else {}
        self._window = float(self.item.get_expiry())

    def attempts_per_year(self) -> int:
        """What one client can try in a year at this limit: the attacker budget for estimates."""
        return _per_year(self.item)

    def check(self, *keys: str) -> Verdict:
        for key in keys:
            if not self._may_have_failed(key):
                continue
            if not self.limiter.test(self.item, key):
                reset, _remaining = self.limiter.get_window_stats(self.item, key)
                return Verdict(False, max(1, int(reset - time.time()) + 1))
        return ALLOWED

    def record_failure(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self.limiter.hit(self.item, key)
            if self._last_failures is not None:
                self._last_failures[key] = now
        if self._last_failures is not None and len(self._last_failures) > _PRUNE_AT:
            self._last_failures = {k: t for k, t in self._last_failures.items() if now - t < self._window}

    def _may_have_failed(self, key: str) -> bool:
        if self._last_failures is None:
            return True
        last = self._last_failures.get(key)
        return last is not None and time.monotonic() - last < self._window


_PRUNE_AT = 100_000  # keys remembered before forgetting those outside the window


def _storage(storage_url: str | None) -> Storage:
    if not storage_url:
        return MemoryStorage()
    storage = storage_from_string(storage_url)
    assert isinstance(storage, Storage)  # a redis:// (or memory://) URL: the synchronous storages
    return storage


@dataclass(frozen=True)
class Guesser:
    """Whom a checkout call's failures are counted against: the shopper's keys (the
    connection's address, or what a server key named), or, when a server key named nobody,
    that key's shared ceiling."""

    shop_id: int
    shopper_keys: tuple[str, ...]  # empty: the call named no shopper
    api_key: str  # the key's public prefix

    @property
    def named(self) -> bool:
        return bool(self.shopper_keys)


class GuessLimits:
    """The per-shopper limit, the per-key ceiling for calls naming no shopper, and the
    shop-wide alarm, over one storage (memory, or Redis shared by every web process)."""

    def __init__(
        self,
        storage_url: str | None = None,
        *,
        per_shopper: str = FAILED_VALIDATIONS,
        per_unnamed_key: str = UNNAMED_SHOPPERS,
        shop_alarm: str = GUESSING_ALERT,
        namespace: str = "couponry",
    ) -> None:
        self.storage = _storage(storage_url)
        self.shoppers = FailureLimiter(limit=per_shopper, storage=self.storage)
        self.unnamed = FailureLimiter(limit=per_unnamed_key, storage=self.storage)
        self.alarm: RateLimitItem = parse(shop_alarm)
        self.namespace = namespace

    def _keys(self, guesser: Guesser) -> tuple[FailureLimiter, tuple[str, ...]]:
        shop = f"{self.namespace}/shop:{guesser.shop_id}"
        if guesser.named:
            return self.shoppers, tuple(f"{shop}/{key}" for key in guesser.shopper_keys)
        return self.unnamed, (f"{shop}/key:{guesser.api_key}",)

    def check(self, guesser: Guesser) -> Verdict:
        limiter, keys = self._keys(guesser)
        return limiter.check(*keys)

    def record_failure(self, guesser: Guesser) -> int | None:
        """Count one failed guess; returns the shop's failures in the alarm window when this
        one crossed the alarm threshold (exactly once per window), else None."""
        limiter, keys = self._keys(guesser)
        limiter.record_failure(*keys)
        window = int(self.alarm.get_expiry())
        count = self.storage.incr(f"{self.namespace}/alarm/shop:{guesser.shop_id}", window)
        return count if count == self.alarm.amount else None

    # What an attacker can try in a year, for the guess-probability estimates.
    def attempts_per_shopper(self) -> int:
        return self.shoppers.attempts_per_year()

    def attempts_per_unnamed_key(self) -> int:
        return self.unnamed.attempts_per_year()

    def attempts_below_alarm(self) -> int:
        """A guesser spread over many identities who stays just under the shop-wide alarm."""
        return _per_year(self.alarm)
