"""A concurrency limit shared by every sender of one account, lowered when the provider says "too many".

Some providers limit how many requests of an account may be *in flight* at once, not how many per
second (Twilio's 429 / error 20429: "too many concurrent requests"). Each sender pausing its own
request after a 429 does not help: the others keep the account over the limit. So every sender of
an account in this process takes its slots from one `ConcurrencyLimit`; a 429 lowers the limit
(halved, once per round of requests that saw it, never below one), further senders queue for a
slot, and the limit climbs back by one after `recover_after` answers without a 429.

    account_limit(key, ceiling)   the one limit of this account in this process (created on first use)

Per process only: senders in other worker processes hold their own limit (each starts at the
configured ceiling and lowers it on their own 429s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Sleep = Callable[[float], Awaitable[None]]


class ConcurrencyLimit:
    def __init__(self, ceiling: int, *, recover_after: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = self.ceiling
        self.in_flight = 0
        self.recover_after = recover_after
        self._clock = clock
        self._round = 0  # bumped at each lowering: one 429 wave lowers the limit once
        self._clean = 0  # answers without a 429 since the limit last changed
        self._hold_until = float("-inf")
        self._waiters: list[asyncio.Future[None]] = []

    def set_ceiling(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = min(self.limit, self.ceiling)

    @asynccontextmanager
    async def slot(self, sleep: Sleep = asyncio.sleep) -> AsyncIterator[int]:
        """Hold one in-flight slot; yields the round the request starts in (for `throttled`)."""
        await self._acquire(sleep)
        try:
            yield self._round
        finally:
            self._release()

    def answered(self) -> None:
        """A request got an answer that was not a 429."""
        self._clean += 1
        if self._clean >= self.recover_after and self.limit < self.ceiling:
            self.limit += 1
            self._clean = 0
            self._wake()

    def throttled(self, started_round: int, retry_after: float | None = None) -> None:
        """A request that started in `started_round` got a 429: lower the limit, unless a 429 of
        the same round already did; hold everyone for `retry_after` seconds when the answer asked."""
        if started_round == self._round:
            self.limit = max(1, self.limit // 2)
            self._round += 1
        self._clean = 0
        if retry_after:
            self._hold_until = max(self._hold_until, self._clock() + retry_after)

    async def _acquire(self, sleep: Sleep) -> None:
        while True:
            delay = self._hold_until - self._clock()
            if delay > 0:
                await sleep(delay)
            elif self.in_flight < self.limit:
                self.in_flight += 1
                return
            else:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                except asyncio.CancelledError:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                    elif waiter.done():
                        self._wake()  # the slot it was woken for goes to the next in line
                    raise

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        # First come, first served: wake as many waiters as there are free slots.
        free = self.limit - self.in_flight
        for waiter in list(self._waiters):
            if free <= 0:
                break
            if not waiter.done():
                waiter.set_result(None)
                self._waiters.remove(waiter)
                free -= 1


_LIMITS: dict[str, ConcurrencyLimit] = {}


def account_limit(key: str, ceiling: int) -> ConcurrencyLimit:
    """The limit every sender of account `key` shares in this process; `ceiling` is the most the
    configuration allows at once (the latest configuration wins)."""
    limit = _LIMITS.get(key)
    if limit is None:
        limit = _LIMITS[key] = ConcurrencyLimit(ceiling)
    elif limit.ceiling != ceiling:
        limit.set_ceiling(ceiling)
    return limit


def reset_account_limits() -> None:
    """Forget every account's limit (tests)."""
    _LIMITS.clear()
