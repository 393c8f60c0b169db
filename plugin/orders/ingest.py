"""The webhook hot path behind `POST /webhooks/{platform}`: group commit, then set-based processing.

    request ──verify──▶ Ingest.store(row) ──▶ queue ──▶ writer: one transaction for every
       ▲                                                queued delivery (group commit)
       └──────── 2xx once its batch committed ◀────────┘        │
                                                                ▼
      processing here (the default): the batch's new orders that only redeem are recorded
      in that same transaction (`store_and_apply`: each row inserted once, with its outcome);
      other deliveries go to the processor, which claims them and records them in batches.
      With `webhook_processing = "worker"`: only stored; the workers' `intake` claims many at
      once and records their redemptions in one transaction (bulk_redemptions)

Promise 3 holds as before: a request is answered 2xx only after the transaction holding its
delivery committed (at least once); deliveries are unique by (platform, delivery id) and
redemptions by (shop, order, code) (at most once in effect). What changed is the unit of
work: one commit (one fsync) per batch of concurrent requests instead of per request, and
one transaction with a few set-based statements per batch of deliveries instead of a dozen
ORM round trips per delivery. On SQLite both run on the event loop, one after the other: one
writer, as SQLite wants. On PostgreSQL they run in threads. When the workers process, the web's
writer and their batches take turns at SQLite's write lock (`plugin.store.db.writer_turn`), and a
batch reads and judges its uses before its turn, so it holds the lock only to write.

Deliveries the set-based path does not cover (cancellations, thin webhooks that must fetch
their order, GDPR requests) and any batch that fails go through `Processor.process` one by
one, as before. A delivery that was stored but not processed (the process died, or the queue
was full) stays `received` and the worker's sweep processes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Engine
from sqlmodel import Session

from connectors.base import Delivery
from connectors.errors import ConnectorError
from plugin.distribution import referrals
from plugin.formats import codes
from plugin.orders import webhooks
from plugin.orders.bulk_redemptions import Prepared, Recorded, Use, prepare_webhook_redemptions, record_prepared
from plugin.orders.orders import REDEEM_KINDS, Outcome, Processor
from plugin.store.db import (
    Reader,
    chunked,
    is_sqlite,
    read_cursor,
    repeated,
    run,
    session_reader,
    session_scope,
    write_cursor,
    writer_turn,
    writer_turn_on_loop,
)
from plugin.store.models import WebhookEvent, utcnow

log = logging.getLogger("couponry.ingest")

_event = WebhookEvent.__table__  # type: ignore[attr-defined]


class Received(NamedTuple):
    """A stored delivery to process (a named tuple: one per delivery on the hot path)."""

    event_id: int
    delivery: Delivery
    shop_id: int


class Stored(NamedTuple):
    """What `Ingest.store` did with a delivery: its row, whether this request stored it, and
    whether its processing is taken care of (done in its batch's transaction, queued for the
    processor, or left to the workers)."""

    event_id: int
    created: bool
    taken: bool


class Ingest:
    """Stores deliveries by group commit and processes them in batches, for one app."""

    def __init__(
        self,
        processor: Processor,
        *,
        max_batch: int = 1000,
        min_batch: int = 200,
        linger: float = 0.02,
        max_waiting: int = 20000,
        process_here: bool = True,
        fill_turns: int = 2,
    ) -> None:
        self.processor = processor
        self.engine = processor.engine
        # False: the workers process (`intake`); this process only stores, and waits for its
        # turn at the write lock off the loop, as a worker (another process) holds it meanwhile
        self.process_here = process_here
        self.max_batch = max_batch
        self.min_batch = min_batch  # the processor waits up to `linger` seconds for this many
        self.linger = linger
        self.max_waiting = max_waiting  # beyond this many unprocessed, leave them to the sweep
        # loop turns in a row that bring no new delivery before the writer commits (see _fill)
        self.fill_turns = fill_turns
        self._rows: list[tuple[dict[str, Any], Delivery | None, asyncio.Future[Stored]]] = []
        self._received: deque[Received] = deque()
        self._store_wake: asyncio.Event | None = None
        self._process_wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._busy = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._store_wake = asyncio.Event()
        self._process_wake = asyncio.Event()
        self._stopping = False
        self._tasks = [asyncio.create_task(self._writer(), name="webhook-writer")]
        if self.process_here:
            self._tasks.append(asyncio.create_task(self._processor(), name="webhook-processor"))

    async def stop(self) -> None:
        """Commit what is queued and process what was received, then stop."""
        self._stopping = True
        for wake in (self._store_wake, self._process_wake):
            if wake is not None:
                wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def drain(self) -> None:
        """Wait until every queued delivery is stored and every received one processed."""
        while self._tasks and (self._rows or self._received or self._busy):
            await asyncio.sleep(0.001)

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._stopping

    # --- the request side -----------------------------------------------------------------------

    async def store(self, row: dict[str, Any], delivery: Delivery | None = None) -> Stored:
        """Queue a delivery row (`webhooks.delivery_values`) and wait until it is committed.
        `delivery`, parsed and to be processed (a `received` row of a known shop): when this
        process processes, its redemptions are recorded in the same transaction if it only
        redeems, else it is queued for the processor."""
        if not self.running or self._store_wake is None:  # not started (or stopping): store it alone
            event_id, created = await run(self.engine, lambda: _store(self.engine, [row])[0])
            return Stored(event_id, created, taken=not self.process_here)
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._rows.append((row, delivery if self.process_here else None, future))
        self._store_wake.set()
        return await future

    def submit(self, event_id: int, delivery: Delivery, shop_id: int) -> bool:
        """Hand a stored delivery to the processor; False when it is left to the worker."""
        if not self.process_here or self._process_wake is None or len(self._received) >= self.max_waiting:
            return False
        self._received.append(Received(event_id, delivery, shop_id))
        self._process_wake.set()
        return True

    # --- the writer -----------------------------------------------------------------------------

    async def _writer(self) -> None:
        assert self._store_wake is not None
        while True:
            if not self._rows:
                if self._stopping:
                    return
                self._store_wake.clear()
                await self._store_wake.wait()
                continue
            await self._fill()
            batch, self._rows = self._rows[: self.max_batch], self._rows[self.max_batch :]
            self._busy += 1
            try:
                results = await self._commit([row for row, _, _ in batch], [delivery for _, delivery, _ in batch])
            except Exception as exc:  # the requests answer 5xx; the platform sends them again
                log.exception("storing %s webhook deliveries failed", len(batch))
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self._busy -= 1
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
            await asyncio.sleep(0)  # let the answered requests go out before the next batch

    async def _commit(self, rows: list[dict[str, Any]], deliveries: list[Delivery | None]) -> list[Stored]:
        """Store a batch in one transaction; when this process processes, record the
        redemptions of its new deliveries that only redeem in that same transaction."""
        if not self.process_here:  # the workers write too: wait for our turn without stopping the loop
            async with writer_turn_on_loop(self.engine):
                only_stored = await run(self.engine, partial(_store, self.engine, rows))
            return [Stored(event_id, created, taken=True) for event_id, created in only_stored]
        stored: list[tuple[int, bool]] | None = None
        processed: set[int] = set()
        if any(d is not None and _batchable(d) for d in deliveries):
            try:
                stored, processed, orders = await run(
                    self.engine, partial(store_and_apply, self.processor, rows, deliveries, utcnow())
                )
            except Exception:  # stored alone below, and processed as any other (one by one if need be)
                log.warning("storing and processing %s deliveries at once failed", len(rows), exc_info=True)
            else:
                if orders and not is_sqlite(self.engine):
                    await self._after_commit(orders)
        if stored is None:
            stored = await run(self.engine, partial(_store, self.engine, rows))
        out: list[Stored] = []
        for (event_id, created), row, delivery in zip(stored, rows, deliveries, strict=True):
            taken = event_id in processed
            if created and not taken and delivery is not None:
                taken = self.submit(event_id, delivery, row["shop_id"])
            out.append(Stored(event_id, created, taken))
        return out

    async def _after_commit(self, orders: set[tuple[int, str]]) -> None:
        """As Processor.process does on PostgreSQL: a cancellation committed beside our batch,
        unseen by it, is applied now. Our deliveries are committed whatever happens here."""
        try:
            await run(self.engine, lambda: _after_commit(self.processor, orders))
        except Exception:
            log.exception("applying deferred cancellations of %s orders failed", len(orders))

    async def _fill(self) -> None:
        """Let the requests already read off their sockets join this batch before it commits.

        Woken by the first row, the writer would otherwise commit a handful (12 on average
        under 50 busy connections) while the next requests wait one loop turn away, and a
        commit's fixed cost is several times a row's. A request goes from its socket to
        `store` in two turns (its task is created in one and runs in the next), so the writer
        waits until `fill_turns` turns in a row bring nothing new: never a fixed delay, and a
        lone request waits two turns of an idle loop."""
        quiet = 0
        while quiet < self.fill_turns and len(self._rows) < self.max_batch and not self._stopping:
            queued = len(self._rows)
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._rows) == queued else 0

    # --- the processor --------------------------------------------------------------------------

    async def _processor(self) -> None:
        assert self._process_wake is not None
        while True:
            if not self._received:
                if self._stopping and not self._rows:
                    return
                self._process_wake.clear()
                await self._process_wake.wait()
                continue
            if len(self._received) < self.min_batch and not self._stopping:
                # Processing is not what the platform waits for: gather a batch worth its fixed
                # cost (a dozen statements and a commit), or wait `linger` at most.
                await self._gather()
            batch = [self._received.popleft() for _ in range(min(self.max_batch, len(self._received)))]
            self._busy += 1
            try:
                await process_batch(self.processor, batch)
            except Exception:  # pragma: no cover - process() falls back itself; the loop must live
                log.exception("webhook processing failed")
            finally:
                self._busy -= 1

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger
        while len(self._received) < self.min_batch and not self._stopping and loop.time() < deadline:
            await asyncio.sleep(min(0.002, self.linger))


async def process_batch(processor: Processor, batch: Sequence[Received]) -> None:
    """Process received deliveries: redemptions set-based in one transaction; the rest one by one."""
    engine = processor.engine
    bulk = [r for r in batch if _batchable(r.delivery)]
    single = [r for r in batch if not _batchable(r.delivery)]
    if bulk:
        try:
            orders = await run(engine, lambda: apply_batch(processor, bulk, utcnow()))
        except Exception:
            log.warning("a batch of %s deliveries failed; processing them one by one", len(bulk), exc_info=True)
            single = bulk + single
        else:
            if orders and not is_sqlite(engine):
                # as Processor.process does: a cancellation committed beside our batch, unseen
                # by it, is applied now
                await run(engine, lambda: _after_commit(processor, orders))
    for r in single:
        await processor.process(r.event_id, delivery=r.delivery, shop_id=r.shop_id)


def _after_commit(processor: Processor, orders: set[tuple[int, str]]) -> None:
    for shop_id, order_id in sorted(_with_deferred(processor.engine, orders)):
        processor._after_commit(shop_id, Outcome(order_id=order_id))


async def intake(processor: Processor, *, limit: int = 500) -> int:
    """Process the oldest deliveries waiting `received`, `limit` at most, as one batch: the
    worker's share when the web processes only store (`webhook_processing = "worker"`).
    Returns how many it took; concurrent intakes skip each other's (apply_batch's claim)."""
    engine = processor.engine
    waiting = await run(engine, lambda: _waiting(engine, limit))
    batch: list[Received] = []
    for event_id, platform, headers, payload, shop_id in waiting:
        try:
            delivery = processor.parse_stored(platform, headers, payload)
        except ConnectorError:
            delivery = None
        if delivery is None or shop_id is None:
            await processor.process(event_id)  # one by one: it records why it fails
            continue
        batch.append(Received(event_id, delivery, shop_id))
    await process_batch(processor, batch)
    return len(waiting)


def _waiting(engine: Engine, limit: int) -> list[tuple[int, str, dict[str, str], str, int | None]]:
    sql = (
        f"SELECT id, platform, CAST(headers AS TEXT), payload, shop_id FROM {_event.name}"
        " WHERE status = 'received' ORDER BY received_at LIMIT ?"
    )
    with read_cursor(engine) as db:
        rows = db.rows(sql, [limit])
    return [(int(i), platform, orjson.loads(headers), payload, shop_id) for i, platform, headers, payload, shop_id in rows]


def _batchable(delivery: Delivery) -> bool:
    """Only deliveries that redeem and nothing else: an order state that reports refunds (a
    WooCommerce order with `refunds[]`, a Shopify order after a refund) goes to the processor,
    which records its redemptions and then its refunds (plugin.checkout.refunds)."""
    return (
        delivery.kind == "order"
        and bool(delivery.events)
        and all(e.kind in REDEEM_KINDS and not e.needs_fetch and not e.reports_refunds for e in delivery.events)
    )


def _store(engine: Engine, rows: list[dict[str, Any]]) -> list[tuple[int, bool]]:
    with write_cursor(engine) as db:
        return webhooks.store_deliveries(db, rows)


def apply_batch(processor: Processor, batch: Sequence[Received], now: datetime) -> set[tuple[int, str]]:
    """Process order deliveries that only redeem, in one transaction, exactly as
    `Processor._apply` would one by one; return the (shop, order)s they touched."""
    # Reading and judging are done before taking the write lock, which the web processes wait
    # for meanwhile (`Prepared` says what that changes)
    per_delivery = [_uses(processor, r) for r in batch]
    with read_cursor(processor.engine) as reader:
        judged = prepare_webhook_redemptions(reader, [use for uses in per_delivery for use, _ in uses], now=now)
    with writer_turn(processor.engine), session_scope(processor.engine) as session, session_reader(session) as db:
        claimed = _claim(db, [r.event_id for r in batch])
        orders, finished = _record(processor, session, db, batch, per_delivery, judged, claimed, now)
        db.execute_many(
            _FINISH_SQL if db.sqlite else _FINISH_SQL.replace("outcome = ?", "outcome = CAST(? AS JSON)"),
            [
                (
                    v["status"],
                    v["flagged"],
                    v["campaign_id"],
                    v["order_id"],
                    orjson.dumps(v["outcome"]).decode(),
                    v["unknown_codes"],
                    db.instant(v["processed_at"]),
                    r.event_id,
                )
                for r, v in finished
            ],
        )
        return orders


def store_and_apply(
    processor: Processor, rows: list[dict[str, Any]], deliveries: list[Delivery | None], now: datetime
) -> tuple[list[tuple[int, bool]], set[int], set[tuple[int, str]]]:
    """Store a batch of delivery rows and, in the same transaction, process the new ones that
    only redeem, as `apply_batch` would: (each row's id and whether it is new, the ids
    processed, the (shop, order)s they touched).

    One transaction and one commit instead of two, and each row written once: the deliveries
    not stored yet are processed first, then inserted with their outcome. On SQLite nothing
    else writes meanwhile. On PostgreSQL another process may store one of them meanwhile: its
    insert then wins or waits, our row is not inserted (not reported new nor processed), and
    the unique (shop, order, code) of redemptions keeps every use recorded once."""
    engine = processor.engine
    with writer_turn(engine), session_scope(engine) as session, session_reader(session) as db:
        known = webhooks.stored_ids(db, [(row["platform"], row["delivery_id"]) for row in rows])
        batch: list[Received] = []  # event_id: the row's index in `rows` until it is stored
        seen: set[tuple[str, str]] = set()
        for n, (row, delivery) in enumerate(zip(rows, deliveries, strict=True)):
            key = (row["platform"], row["delivery_id"])
            if key not in known and key not in seen and delivery is not None and _batchable(delivery):
                batch.append(Received(n, delivery, row["shop_id"]))
            seen.add(key)
        per_delivery = [_uses(processor, r) for r in batch]
        judged = prepare_webhook_redemptions(db, [use for uses in per_delivery for use, _ in uses], now=now)
        orders, finished = _record(processor, session, db, batch, per_delivery, judged, {r.event_id for r in batch}, now)
        final = list(rows)
        for r, values in finished:
            final[r.event_id] = {**rows[r.event_id], **values}
        stored = webhooks.store_deliveries(db, final, known)
        processed = {stored[r.event_id][0] for r, _ in finished if stored[r.event_id][1]}
    return stored, processed, orders


def _record(
    processor: Processor,
    session: Session,
    db: Reader,
    batch: Sequence[Received],
    per_delivery: list[list[tuple[Use, str]]],
    judged: Prepared,
    claimed: set[int],
    now: datetime,
) -> tuple[set[tuple[int, str]], list[tuple[Received, dict[str, Any]]]]:
    """Record the judged uses of the claimed deliveries of `batch`: the (shop, order)s they
    touched, and each claimed delivery with its finished columns (status, outcome...)."""
    mine: list[Received] = []
    wanted: list[int] = []  # the claimed deliveries' uses, as indexes into the judged ones
    owners: list[tuple[int, str, str]] = []  # (index in mine, typed code, stored key)
    start = 0
    for r, uses in zip(batch, per_delivery, strict=True):
        if r.event_id in claimed:
            wanted.extend(range(start, start + len(uses)))
            owners.extend((len(mine), typed, use.code) for use, typed in uses)
            mine.append(r)
        start += len(uses)
    everything = record_prepared(session, judged, set(wanted))
    recorded = [everything[i] for i in wanted]
    fresh = [(r.redemption_id, r.campaign_id) for r in recorded if r is not None and not r.duplicate]
    referrals.on_redemptions(session, fresh, now=now)  # a friend's order rewards its referrer
    outcomes = [Outcome(order_id=r.delivery.events[-1].order_id) for r in mine]
    for (n, typed, key), result in zip(owners, recorded, strict=True):
        _count(outcomes[n], typed, key, result)
    orders = {(r.shop_id, o.order_id) for r, o in zip(mine, outcomes, strict=True) if o.order_id is not None}
    waiting = _with_deferred_raw(db, orders)
    finished: list[tuple[Received, dict[str, Any]]] = []
    done_at = utcnow()
    for r, outcome in zip(mine, outcomes, strict=True):
        if outcome.order_id is not None and (r.shop_id, outcome.order_id) in waiting:
            outcome.applied_deferred = processor._apply_deferred(session, r.shop_id, outcome.order_id, now)
        busy = outcome.redeemed or outcome.duplicates or outcome.unknown_codes or outcome.applied_deferred
        finished.append(
            (
                r,
                {
                    "status": "processed" if busy else "ignored",
                    "error": None,
                    "flagged": bool(outcome.flagged),
                    "campaign_id": outcome.campaign_id,
                    "order_id": outcome.order_id,
                    "outcome": outcome.as_dict(),
                    "unknown_codes": len(outcome.unknown_codes),
                    "processed_at": done_at,
                },
            )
        )
    return orders, finished


def _uses(processor: Processor, received: Received) -> list[tuple[Use, str]]:
    """A delivery's code uses, each with the code as typed."""
    out: list[tuple[Use, str]] = []
    for event in received.delivery.events:
        address_key = processor.address_key(event) if event.codes else None
        for use in event.codes:
            key = codes.normalise_generic(use.code)
            redeemed = Use(
                shop_id=received.shop_id,
                code=key,
                order_id=event.order_id,
                amount=use.amount,
                subtotal=event.subtotal,
                revenue=event.net_subtotal,
                currency=event.currency,
                customer_id=event.customer_id,
                email=event.email,
                channel=event.channel,
                address_key=address_key,
                total=event.total,
                items=event.items,
            )
            out.append((redeemed, use.code))
    return out


def _count(outcome: Outcome, typed: str, key: str, result: Recorded | None) -> None:
    """What apply_order_event counts for one code use."""
    if result is None:
        outcome.unknown_codes.append(typed)
        return
    outcome.campaign_id = outcome.campaign_id or result.campaign_id
    if result.duplicate:
        outcome.duplicates += 1
        return
    outcome.redeemed += 1
    if result.flagged_reason:
        outcome.flagged.append({"code": key, "reason": result.flagged_reason})


_FINISH_SQL = (
    f"UPDATE {_event.name} SET status = ?, error = NULL, flagged = ?, campaign_id = ?, order_id = ?, outcome = ?,"
    " unknown_codes = ?, processed_at = ? WHERE id = ?"
)


def _claim(db: Reader, ids: list[int]) -> set[int]:
    """Move these deliveries from `received` to `processing`, in the caller's transaction; the
    ids this call moved. On PostgreSQL, rows another worker's batch holds are skipped, not
    waited for (its commit makes them processed)."""
    # coalesce() on a NOT NULL column changes nothing but keeps SQLite (without statistics) on
    # the primary key instead of scanning every received row
    lock = "" if db.sqlite else " FOR UPDATE SKIP LOCKED"
    sql = (
        f"UPDATE {_event.name} SET status = 'processing' WHERE id IN (SELECT id FROM {_event.name}"
        f" WHERE id IN ({{items}}) AND coalesce(status, '') = 'received'{lock}) RETURNING id"
    )
    claimed: set[int] = set()
    for chunk in chunked(ids):
        claimed.update(int(i) for (i,) in db.bulk(repeated(sql, len(chunk)), chunk))
    return claimed


def _with_deferred_raw(db: Reader, orders: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Which of these (shop, order)s have a deferred cancellation waiting."""
    found: set[tuple[int, str]] = set()
    # by (shop, order) only, so the (shop_id, order_id) index is the one used
    sql = f"SELECT order_id, status FROM {_event.name} WHERE shop_id = ? AND order_id IN ({{items}})"
    for shop_id in sorted({s for s, _ in orders}):
        for chunk in chunked(sorted({o for s, o in orders if s == shop_id})):
            found.update(
                (shop_id, order_id)
                for order_id, status in db.bulk(repeated(sql, len(chunk)), [shop_id, *chunk])
                if status == "deferred"
            )
    return found


def _with_deferred(engine: Engine, orders: set[tuple[int, str]]) -> set[tuple[int, str]]:
    with read_cursor(engine) as db:
        return _with_deferred_raw(db, orders)
