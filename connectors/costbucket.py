"""Shopify's cost bucket, mirrored on our side and shared by everyone who calls one shop.

Shopify limits GraphQL per app and shop with a leaky bucket of cost points, and tells us in every
answer where it stands (`extensions.cost.throttleStatus`: maximumAvailable, currentlyAvailable,
restoreRate). Every caller of a shop must draw from one replica of it, or each starts blind and
spends points another has already spent (THROTTLED):

    BucketState        the arithmetic of one bucket (pure: `now` is passed in)
    BucketStore        where states live, changed atomically: `MemoryBucketStore` in one process;
                       plugin.store.ratestate keeps them in Redis or the database for every worker
    CostBucket         one shop's bucket for the callers of one process: waits until the bucket
                       holds a call's cost, lets one probe out while the size is unknown, settles
                       each answer

Clocks: a store shared by processes needs wall-clock time (`time.time`), the same in each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any, Protocol, TypeVar

from connectors import throttling

T = TypeVar("T")

# A reservation not settled within this many seconds is forgotten: its caller died mid-call
# (every call settles within the HTTP timeout, 30 s, otherwise).
LEASE = 60.0
# How often a caller asks a shared store again while another process probes an unknown bucket.
PROBE_POLL = 0.05


@dataclass
class BucketState:
    """What we know of one shop's bucket: its size and restore rate (once Shopify said them), the
    points it held at `stamp`, the points reserved by calls still in flight, and holds."""

    maximum: float | None = None
    rate: float | None = None
    level: float = 0.0
    stamp: float = 0.0
    in_flight: float = 0.0
    lease_until: float = 0.0  # in-flight reservations lapse then (`LEASE`)
    blocked_until: float = 0.0  # an HTTP 429's Retry-After
    probe_until: float = 0.0  # a probe of the unknown bucket is out until then
    taken: int = 0  # reservations ever made: a call's ticket is the count after its own

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> BucketState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def available(self, now: float) -> float | None:
        """Points the bucket holds at `now` (None before Shopify told us its size)."""
        if self.maximum is None or self.rate is None:
            return None
        return min(self.maximum, self.level + self.rate * max(0.0, now - self.stamp))

    def take(self, cost: float, now: float) -> float | None:
        """Reserve `cost` points: 0.0 when taken (the call's ticket is then `taken`), else the
        seconds to wait before asking again; None while someone else probes a bucket whose size
        we do not know yet."""
        now = max(now, self.stamp)  # a caller's clock read before another's change: never count time twice
        if now >= self.lease_until:
            self.in_flight = 0.0
        if now < self.blocked_until:
            return self.blocked_until - now
        level = self.available(now)
        if level is None or self.rate is None or self.maximum is None:
            if self.in_flight > 0 and now < self.probe_until:
                return None
            self.in_flight += cost
            self.lease_until = self.probe_until = now + LEASE
            self.taken += 1
            return 0.0
        need = min(cost, self.maximum)
        if level < need:  # (at least 1 ms: a float sliver short must still move the clock)
            return max((need - level) / self.rate, 0.001) if self.rate > 0 else 1.0
        self.level, self.stamp = level - need, now
        self.in_flight += cost
        self.lease_until = now + LEASE
        self.taken += 1
        return 0.0

    def settle(
        self, reserved: float, cost: Mapping[str, Any] | None, now: float, *, charged: bool = True, ticket: int | None = None
    ) -> None:
        """Apply Shopify's answer to a call for which `reserved` points were taken (with `ticket`):
        the refund of requested minus actual cost, then the level it reported, less what others
        still have in flight. The reported level is taken as it is only from the answer to the
        last call made, once no other is in flight: an earlier call's answer can arrive after a
        later one's and would bring back points that call spent. Without an answer (`cost`
        None) the points stay spent, unless the request never left (`charged=False`)."""
        now = max(now, self.stamp)
        self.in_flight = max(0.0, self.in_flight - reserved) if now < self.lease_until else 0.0
        if not charged and self.maximum is not None:
            self.level, self.stamp = min(self.maximum, (self.available(now) or 0.0) + reserved), now
        status = cost.get("throttleStatus") if cost else None
        if not cost or not isinstance(status, Mapping):
            return
        try:
            maximum = float(status["maximumAvailable"])
            current = float(status["currentlyAvailable"])
            rate = float(status["restoreRate"])
        except (KeyError, TypeError, ValueError):
            return
        known = self.maximum is not None
        self.maximum, self.rate, self.probe_until = maximum, rate, 0.0
        if not known or (self.in_flight <= 0 and ticket in (None, self.taken)):
            level = current
        else:
            actual = cost.get("actualQueryCost")
            refund = reserved - float(actual) if isinstance(actual, int | float) else reserved
            level = min((self.available(now) or 0.0) + refund, current - self.in_flight)
        self.level, self.stamp = min(level, maximum), now

    def block(self, until: float) -> None:
        self.blocked_until = max(self.blocked_until, until)


class BucketStore(Protocol):
    """Bucket states by key, each changed atomically: no one else changes a state between
    `change` reading it and keeping what `apply` made of it."""

    async def change(self, key: str, apply: Callable[[BucketState], T]) -> T: ...


class MemoryBucketStore:
    """States in this process only (one event loop: nothing runs between read and write)."""

    def __init__(self) -> None:
        self.states: dict[str, BucketState] = {}

    async def change(self, key: str, apply: Callable[[BucketState], T]) -> T:
        return apply(self.states.setdefault(key, BucketState()))


def _take(state: BucketState, *, cost: float, now: float) -> tuple[float | None, int]:
    return state.take(cost, now), state.taken


class CostBucket:
    """Our replica of Shopify's leaky bucket for one app and shop, as this process's callers see it.

    `acquire(cost)` waits until the bucket holds `cost` points and reserves them; `settle`
    applies Shopify's answer. Before the first answer the size is unknown: one request probes
    while the others wait for it. The state lives in `store` under `key`: give every connector
    of a shop in a process the same CostBucket, and every process the same shared store.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        store: BucketStore | None = None,
        key: str = "",
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.store: BucketStore = store if store is not None else MemoryBucketStore()
        self.key = key
        self._lock = asyncio.Lock()  # this process's callers queue up in order
        self._answered = asyncio.Event()
        self._in_flight = 0.0  # reserved by this process's calls
        self.waited = 0.0  # seconds spent waiting for the bucket, for reports

    async def state(self) -> BucketState:
        """A copy of the bucket's state now."""
        return await self.store.change(self.key, lambda s: BucketState(**s.to_dict()))

    async def available(self) -> float | None:
        """Points we believe the bucket holds now (None before Shopify told us its size)."""
        now = self._clock()
        return await self.store.change(self.key, lambda s: s.available(now))

    async def acquire(self, cost: float) -> int:
        """Wait until the bucket holds `cost` points and reserve them; the call's ticket for `settle`."""
        async with self._lock:
            while True:
                wait, ticket = await self.store.change(self.key, partial(_take, cost=cost, now=self._clock()))
                if wait == 0.0:
                    self._in_flight += cost
                    return ticket
                if wait is not None:
                    await self._pause(wait)
                elif self._in_flight > 0:  # our own probe is out: its answer wakes us
                    self._answered.clear()
                    await self._answered.wait()
                else:  # another process probes: ask the store again shortly
                    await self._pause(PROBE_POLL)

    async def settle(
        self, reserved: float, cost: Mapping[str, Any] | None, *, charged: bool = True, ticket: int | None = None
    ) -> None:
        """Record Shopify's answer to a request for which `reserved` points were acquired."""
        self._in_flight = max(0.0, self._in_flight - reserved)
        now = self._clock()
        try:
            await self.store.change(self.key, lambda s: s.settle(reserved, cost, now, charged=charged, ticket=ticket))
        finally:
            self._answered.set()

    async def block(self, seconds: float) -> None:
        """Hold every caller back for `seconds` (a 429 with Retry-After)."""
        until = self._clock() + seconds
        await self.store.change(self.key, lambda s: s.block(until))

    async def _pause(self, seconds: float) -> None:
        self.waited += seconds
        throttling.throttled("shopify", throttling.COST_BUCKET, seconds)
        await self._sleep(seconds)
