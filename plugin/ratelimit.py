"""Brute-force protection: failed validations per shop and client, with the `limits` library.

Counters live in memory on the embedded default and in Redis when REDIS_URL is set, so every
web process shares them. The same figure feeds the code engine's guess-probability estimate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

FAILED_VALIDATIONS = "20/minute"


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


class FailureLimiter:
    """Counts failed attempts per key; `check` says whether a client may try again now."""

    def __init__(self, storage_url: str | None = None, limit: str = FAILED_VALIDATIONS) -> None:
        storage = storage_from_string(storage_url) if storage_url else MemoryStorage()
        self.limiter = MovingWindowRateLimiter(storage)
        self.item: RateLimitItem = parse(limit)
        # With memory storage every failure is seen here, so a key that has not failed within
        # the window is allowed without asking the limiter (nearly every checkout: they are
        # valid). Shared storage (Redis) counts other processes' failures too: always ask it.
        self._last_failures: dict[str, float] | None = None if storage_url else {}
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
        return Verdict(True)

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
