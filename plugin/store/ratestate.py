"""Platform rate limiters shared by every job of a process and by every worker process.

Shopify's cost bucket is per app and shop: a job that builds its own replica starts blind and
spends points other jobs already spent, and workers collide (THROTTLED). So each process keeps
one `CostBucket` per shop (`shopify_bucket`), whose state lives where every worker sees it:

    RedisBucketStore      REDIS_URL set: one key per shop, changed in WATCH/MULTI transactions
    DatabaseBucketStore   else: one `rate_limit_state` row per shop, changed under its row lock
                          (SQLite: the write lock, after a writer turn: plugin.store.db)

Shared states use wall-clock time, the same in every process. A process without an engine
(none given) keeps its buckets in memory: shared by its jobs, not with other processes.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import redis.asyncio as redis
from redis.exceptions import WatchError
from sqlalchemy import Engine, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select

from connectors.costbucket import BucketState, BucketStore, CostBucket, MemoryBucketStore
from plugin.settings import Settings
from plugin.store.db import is_sqlite, run, writer_turn_on_loop
from plugin.store.models import RateLimitState, utcnow

T = TypeVar("T")

# A shop's state unused this long is dropped from Redis (its bucket has long been full again).
REDIS_TTL = 24 * 3600


def shopify_key(shop_domain: str) -> str:
    return f"shopify:cost:{shop_domain}"


class RedisBucketStore:
    """Bucket states as JSON under `couponry:rate:{key}` in Redis."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.client = client

    async def change(self, key: str, apply: Callable[[BucketState], T]) -> T:
        name = f"couponry:rate:{key}"
        async with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(name)
                    raw = await pipe.get(name)
                    state = BucketState.from_dict(json.loads(raw) if raw else None)
                    result = apply(state)
                    pipe.multi()
                    pipe.set(name, json.dumps(state.to_dict()), ex=REDIS_TTL)
                    await pipe.execute()
                    return result
                except WatchError:  # another process changed it between our read and write: again
                    continue


class DatabaseBucketStore:
    """Bucket states in `rate_limit_state` rows, each changed in one transaction under its lock."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = sqlite_insert if is_sqlite(engine) else postgresql_insert

    async def change(self, key: str, apply: Callable[[BucketState], T]) -> T:
        if is_sqlite(self.engine):  # wait for the write lock beside the loop, not in SQLite's busy handler
            async with writer_turn_on_loop(self.engine):
                return self._change(key, apply)
        return await run(self.engine, partial(self._change, key, apply))

    def _change(self, key: str, apply: Callable[[BucketState], T]) -> T:
        table = RateLimitState.__table__  # type: ignore[attr-defined]
        with self.engine.begin() as conn:  # (SQLite: BEGIN IMMEDIATE, plugin.store.db)
            stored = conn.execute(select(table.c.state).where(table.c.key == key).with_for_update()).scalar_one_or_none()
            if stored is None:
                fresh = self._insert(table).values(key=key, state={}, updated_at=utcnow())
                conn.execute(fresh.on_conflict_do_nothing(index_elements=["key"]))
                stored = conn.execute(select(table.c.state).where(table.c.key == key).with_for_update()).scalar_one()
            state = BucketState.from_dict(stored)
            result = apply(state)
            conn.execute(update(table).where(col(table.c.key) == key).values(state=state.to_dict(), updated_at=utcnow()))
            return result


class _LoopBuckets:
    """One event loop's buckets and stores (asyncio locks and Redis connections belong to a loop)."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str], CostBucket] = {}
        self.stores: dict[str, BucketStore] = {}


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBuckets] = weakref.WeakKeyDictionary()


def bucket_store(settings: Settings, engine: Engine | None) -> BucketStore:
    """Where this process keeps shared bucket states: Redis when configured, else the database,
    else (no engine given) memory. One store per event loop and place."""
    here = _loops.setdefault(asyncio.get_running_loop(), _LoopBuckets())
    if settings.redis_url:
        place = "redis:" + settings.redis_url
        if place not in here.stores:
            here.stores[place] = RedisBucketStore(redis.Redis.from_url(settings.redis_url))
    elif engine is not None:
        place = f"database:{id(engine)}"
        if place not in here.stores:
            here.stores[place] = DatabaseBucketStore(engine)
    else:
        place = "memory"
        here.stores.setdefault(place, MemoryBucketStore())
    return here.stores[place]


def shopify_bucket(settings: Settings, engine: Engine | None, shop_domain: str) -> CostBucket | None:
    """The shop's cost bucket in this process (the same object for every job), over the shared
    store; None outside an event loop (the connector then keeps its own)."""
    try:
        here = _loops.setdefault(asyncio.get_running_loop(), _LoopBuckets())
    except RuntimeError:
        return None
    store = bucket_store(settings, engine)
    index = (str(id(store)), shop_domain)
    if index not in here.buckets:
        shared = not isinstance(store, MemoryBucketStore)
        here.buckets[index] = CostBucket(time.time if shared else time.monotonic, store=store, key=shopify_key(shop_domain))
    return here.buckets[index]
