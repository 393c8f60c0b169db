"""A concurrency limit shared by every sender of one account, lowered when the provider says "too many".

Some providers limit how many requests of an account may be *in flight* at once, not how many per
second (Twilio's 429 / error 20429: "too many concurrent requests"). Each sender pausing its own
request after a 429 does not help: the others keep the account over the limit. So every sender of
an account in this process takes its slots from one `ConcurrencyLimit`; a 429 lowers the limit
(halved, once per round of requests that saw it, never below one), further senders queue for a
slot, and the limit climbs back by one after `recover_after` answers without a 429.

    account_limit(key, ceiling)              the account's limit in this process (created on first use)
    account_limit(key, ceiling, redis_url)   the same, held in Redis: shared by every worker process

Without Redis each worker process holds its own limit (each starts at the configured ceiling and
lowers it on its own 429s). With Redis the slots are leased entries in a sorted set (a crashed
process's slots expire after LEASE seconds) and the limit, its round and the hold live in a hash,
each step one Lua script; a sender waiting for a slot polls every POLL seconds.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from redis.asyncio import Redis

Sleep = Callable[[float], Awaitable[None]]


class AccountLimit(Protocol):
    def slot(self, sleep: Sleep = ...) -> AbstractAsyncContextManager[int]: ...

    async def answered(self) -> None: ...

    async def throttled(self, started_round: int, retry_after: float | None = None) -> None: ...


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

    async def answered(self) -> None:
        """A request got an answer that was not a 429."""
        self._clean += 1
        if self._clean >= self.recover_after and self.limit < self.ceiling:
            self.limit += 1
            self._clean = 0
            self._wake()

    async def throttled(self, started_round: int, retry_after: float | None = None) -> None:
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


# KEYS: state hash, slots zset. Every script reads the time from Redis, one clock for all processes.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "
_ACQUIRE = (
    _NOW
    + """
local ceiling, lease, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local limit = math.min(tonumber(redis.call('HGET', KEYS[1], 'limit') or ceiling), ceiling)
local hold = tonumber(redis.call('HGET', KEYS[1], 'hold_until') or 0)
if hold > now then return {-1, tostring(hold - now)} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= limit then return {0, '0'} end
redis.call('ZADD', KEYS[2], now + lease, token)
redis.call('EXPIRE', KEYS[2], math.ceil(lease) * 2)
return {1, redis.call('HGET', KEYS[1], 'round') or '0'}
"""
)
_THROTTLED = (
    _NOW
    + """
local ceiling, started, wait = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
if (redis.call('HGET', KEYS[1], 'round') or '0') == started then
    local limit = math.min(tonumber(redis.call('HGET', KEYS[1], 'limit') or ceiling), ceiling)
    redis.call('HSET', KEYS[1], 'limit', math.max(1, math.floor(limit / 2)))
    redis.call('HINCRBY', KEYS[1], 'round', 1)
end
redis.call('HSET', KEYS[1], 'clean', 0)
if wait > 0 then
    local hold = tonumber(redis.call('HGET', KEYS[1], 'hold_until') or 0)
    redis.call('HSET', KEYS[1], 'hold_until', tostring(math.max(hold, now + wait)))
end
redis.call('EXPIRE', KEYS[1], 86400)
"""
)
_ANSWERED = """
local ceiling, recover_after = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or ceiling)
if limit >= ceiling then return end
if redis.call('HINCRBY', KEYS[1], 'clean', 1) >= recover_after then
    redis.call('HSET', KEYS[1], 'limit', limit + 1, 'clean', 0)
end
"""


class SharedConcurrencyLimit:
    """ConcurrencyLimit's rules, held in Redis so every worker process's senders share them."""

    POLL = 0.05  # seconds between tries for a slot while the account is full
    LEASE = 120.0  # seconds a slot stays taken if its process dies holding it (beyond any HTTP timeout)

    def __init__(self, client: Redis[Any], key: str, ceiling: int, *, recover_after: int = 20) -> None:
        self.ceiling = max(1, ceiling)
        self.recover_after = recover_after
        self._client = client
        self._state, self._slots = f"couponry:concurrency:{key}", f"couponry:concurrency:{key}:slots"
        self._acquire = client.register_script(_ACQUIRE)
        self._throttled = client.register_script(_THROTTLED)
        self._answered = client.register_script(_ANSWERED)

    @asynccontextmanager
    async def slot(self, sleep: Sleep = asyncio.sleep) -> AsyncIterator[int]:
        token = secrets.token_hex(8)
        while True:
            granted, value = await self._acquire(keys=[self._state, self._slots], args=[self.ceiling, self.LEASE, token])
            if int(granted) == 1:
                break
            await sleep(float(value) if int(granted) == -1 else self.POLL)
        try:
            yield int(value)
        finally:
            await asyncio.shield(self._client.zrem(self._slots, token))

    async def answered(self) -> None:
        await self._answered(keys=[self._state], args=[self.ceiling, self.recover_after])

    async def throttled(self, started_round: int, retry_after: float | None = None) -> None:
        await self._throttled(keys=[self._state], args=[self.ceiling, started_round, retry_after or 0])

    async def limit(self) -> int:
        value: Any = await self._client.hget(self._state, "limit")
        return min(int(value), self.ceiling) if value is not None else self.ceiling

    async def forget(self) -> None:
        """Drop the account's state (tests)."""
        await self._client.delete(self._state, self._slots)

    async def aclose(self) -> None:
        await self._client.aclose()  # type: ignore[attr-defined]  # redis 5+; types-redis predates it


_LIMITS: dict[str, ConcurrencyLimit] = {}
_SHARED: dict[tuple[str, str], SharedConcurrencyLimit] = {}


def account_limit(key: str, ceiling: int, redis_url: str | None = None) -> AccountLimit:
    """The limit every sender of account `key` shares: in this process, or with `redis_url` in
    every process using that Redis. `ceiling` is the most the configuration allows at once (the
    latest configuration wins)."""
    if redis_url:
        shared = _SHARED.get((redis_url, key))
        if shared is None:
            shared = _SHARED[redis_url, key] = SharedConcurrencyLimit(Redis.from_url(redis_url), key, ceiling)
        shared.ceiling = max(1, ceiling)
        return shared
    limit = _LIMITS.get(key)
    if limit is None:
        limit = _LIMITS[key] = ConcurrencyLimit(ceiling)
    elif limit.ceiling != ceiling:
        limit.set_ceiling(ceiling)
    return limit


def reset_account_limits() -> None:
    """Forget every account's limit held in this process (tests; Redis keeps its own)."""
    _LIMITS.clear()
    _SHARED.clear()


async def close_account_limits() -> None:
    """Close the Redis clients of the shared limits and forget every limit (tests, shutdown)."""
    shared = list(_SHARED.values())
    reset_account_limits()
    for limit in shared:
        await limit.aclose()
