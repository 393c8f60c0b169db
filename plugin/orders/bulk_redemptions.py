"""Many webhook redemptions in one transaction, set-based: the batched twin of
`record_redemption(..., source="webhook", enforce=False)` (promise 3 at throughput).

Each use ends exactly as if `record_redemption` had recorded the uses one after the other in
the given order: the same rows, flags, counters and duplicates. To make that true without
replaying the single-row steps, a use takes the set-based path only when nothing else in the
batch can change what it sees: its code, its (order, code) and its customer in its campaign
appear once in the batch. Those uses are independent, so their order does not matter, and
their effects are a few statements for the whole batch:

    1. read the codes (with their live reservations), campaigns, batch overrides, customer
       uses and existing redemptions the batch needs (one query each, per chunk);
    2. evaluate each use with the same pure rules (code, campaign and customer stages);
    3. INSERT the redemptions ... ON CONFLICT DO NOTHING RETURNING (the idempotent claim:
       a row someone else inserted meanwhile is a duplicate and moves no counter);
    4. move the counters: code uses (UPDATE ... RETURNING uses, for the over-the-limit flag),
       campaign totals (one UPDATE per campaign), customer uses (one upsert each).

Every other use (a code twice in the batch, a customer twice in a campaign) goes through
`record_redemption` itself, after the set-based ones, in the same transaction.

The statements run raw on the session's DBAPI connection (`plugin.store.db.Reader`), like
`record_redemption`'s: SQLAlchemy Core's per-row bind processing and cache keys cost more than
the database's own work here. Statements over many rows are cut into chunks of the sizes in
`CHUNKS`, so that the same few statement texts recur.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

from sqlmodel import Session

from plugin.checkout.redemptions import POOL_CHANNEL, UnknownCode, customer_key, record_redemption
from plugin.errors import InvalidInput
from plugin.metrics import REDEMPTIONS
from plugin.rules import (
    CampaignRules,
    CampaignStatus,
    CodeState,
    Customer,
    Reason,
    Refusal,
    RulesOverride,
    campaign_refusal,
    code_refusal,
    customer_refusal,
    normalise_email,
)
from plugin.rules.refusals import refuse
from plugin.store import caches, eventlog
from plugin.store.db import CHUNK_SIZES, Reader, chunked, repeated, session_reader

T = TypeVar("T")

# Rows (or IN-list items) per statement: a batch is cut into chunks of these sizes, largest
# first, so that a few statement texts recur and SQLite keeps them prepared (preparing a
# statement of 1000 rows costs it more than running it). 256 rows of 17 parameters stay far
# under SQLite's limit of 32766 parameters.
CHUNKS = CHUNK_SIZES


class Use(NamedTuple):
    """One code used on one order, as an order webhook reports it (`code` in stored form).
    A named tuple, as `Recorded`: one is built per use on the webhook hot path, at a third of
    a frozen dataclass's cost."""

    shop_id: int
    code: str
    order_id: str
    amount: int | None = None
    subtotal: int = 0
    revenue: int | None = None  # OrderEvent.net_subtotal
    currency: str = "USD"
    customer_id: str | None = None
    email: str | None = None
    channel: str | None = None
    address_key: str | None = None  # the order's shipping-address fingerprint (plugin.orders.addresses)
    total: int = 0  # the order's total and units, for the refund ledger (plugin.checkout.refunds)
    items: int = 0


class Recorded(NamedTuple):
    """What recording a use did: its redemption's campaign, whether it was already there, its flag."""

    redemption_id: int
    campaign_id: int | None
    duplicate: bool
    flagged_reason: str | None


class _Code(NamedTuple):
    """A stored code with what evaluating a use of it needs, as the driver returns it."""

    id: int
    shop_id: int
    campaign_id: int
    batch_id: int | None
    code: str
    status: str
    uses: int
    customer_id: str | None
    email: str | None
    recipient: str | None
    partner_id: int | None
    assigned_at: Any  # instants: text on SQLite (see `Reader.as_instant`)
    expires_at: Any
    created_at: Any
    holds: int  # live reservations by checkouts
    pool_id: int | None  # a provider's pool (plugin.distribution.klaviyopools): its redemptions are that provider's channel


@dataclass(frozen=True, slots=True)
class _Rules:
    """The effective rules of one batch's codes in one campaign, resolved once per call."""

    rules: CampaignRules | None  # None: a draft
    override: RulesOverride | None
    limit: int | None  # uses per code
    status: CampaignStatus | None  # None for a draft (not looked at)


# Statements over a chunk: `{items}` stands for its items' placeholders (see `_sql`).
_CODES = """
SELECT c.id, c.shop_id, c.campaign_id, c.batch_id, c.code, c.status, c.uses, c.customer_id, c.email,
       c.recipient, c.partner_id, c.assigned_at, c.expires_at, c.created_at,
       (SELECT count(*) FROM reservation r WHERE r.code_id = c.id AND r.released_at IS NULL AND r.expires_at > ?),
       c.pool_id
FROM code c
WHERE c.shop_id = ? AND c.code IN ({items})
"""
_EXISTING = "SELECT id, order_id, code, campaign_id, flagged_reason FROM redemption WHERE shop_id = ? AND order_id IN ({items})"
_CAMPAIGNS = "SELECT id, status, CAST(rules AS TEXT) FROM campaign WHERE id IN ({items})"
_OVERRIDES = "SELECT id, CAST(rules_override AS TEXT) FROM batch WHERE id IN ({items})"
# A new redemption: the columns bound per use (see `_new_redemptions`), then constant ones.
_INSERT = (
    "INSERT INTO redemption (shop_id, code, order_id, code_id, campaign_id, batch_id, partner_id, recipient,"
    " customer_id, email, channel, currency, subtotal, amount, flagged_reason, address_key, created_at,"
    " order_total, order_items, revenue, source, status, rolled_back_at, refunded) VALUES {items}"
    " ON CONFLICT (shop_id, order_id, code) DO NOTHING RETURNING id, shop_id, order_id, code"
)
_INSERT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'webhook', 'active', NULL, 0)"
_CAMPAIGN, _AMOUNT, _FLAG = 4, 13, 14  # where these are in a row's bound values
_BUMP_CODES = "UPDATE code SET uses = uses + 1 WHERE id IN ({items}) RETURNING id, uses"
_BUMP_CUSTOMERS = (
    "INSERT INTO customerusage (shop_id, campaign_id, customer_key, uses) VALUES {items}"
    " ON CONFLICT (shop_id, campaign_id, customer_key) DO UPDATE SET uses = customerusage.uses + 1"
)
_BUMP_CAMPAIGN = "UPDATE campaign SET redemption_count = redemption_count + ?, discount_total = discount_total + ? WHERE id = ?"


def record_webhook_redemptions(session: Session, uses: list[Use], *, now: datetime) -> list[Recorded | None]:
    """Record every use, in order, like `record_redemption(enforce=False, source="webhook")`;
    None for a code the shop doesn't have. Raises what `record_redemption` raises."""
    with session_reader(session) as db:
        prepared = prepare_webhook_redemptions(db, uses, now=now)
    return record_prepared(session, prepared)


@dataclass
class Prepared:
    """A batch of uses read and judged (`prepare_webhook_redemptions`), ready to be written by
    `record_prepared`: reading and judging can happen before the write transaction, so a
    SQLite writer holds the write lock only for the writes. What was read may have changed by
    then, as under PostgreSQL's READ COMMITTED: the writes stay exact (an insert that finds its
    (shop, order, code) taken is a duplicate; counters move by increments and the over-the-limit
    flag reads the code's count after its own), only the other flags were judged on what was read."""

    uses: list[Use]
    now: datetime
    results: list[Recorded | None]  # the uses found recorded already; None for the others
    slow: list[int]  # uses recorded one by one (`record_redemption`)
    todo: list[int]  # uses recorded set-based, with the rows below
    values: list[list[Any]] = field(default_factory=list)
    rows: list[_Code] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    rules: dict[tuple[int, int | None], _Rules] = field(default_factory=dict)


def prepare_webhook_redemptions(db: Reader, uses: list[Use], *, now: datetime) -> Prepared:
    """Read what recording these uses needs and judge them by the rules (no writes)."""
    for use in uses:
        order_id = use.order_id.strip()
        if not order_id or len(order_id) > 255:
            raise InvalidInput("order_id must be 1 to 255 characters", reason="invalid_order_id")
    uses = [u if u.order_id == u.order_id.strip() else _with_order(u, u.order_id.strip()) for u in uses]
    results: list[Recorded | None] = [None] * len(uses)
    codes = _codes(db, uses, now)
    customers = [Customer(id=u.customer_id, email=u.email) for u in uses]
    keys = [customer_key(c.id, c.email) for c in customers]
    fast, slow = _partition(uses, keys, codes)
    prepared = Prepared(uses, now, results, slow, [])
    if fast:
        _prepare_fast(db, prepared, customers, keys, codes, fast)
    return prepared


def record_prepared(session: Session, prepared: Prepared, only: set[int] | None = None) -> list[Recorded | None]:
    """Write prepared uses in the session's transaction (`only`: the indexes of the uses to
    write; all by default); what each did, in order, None for unknown codes and uses left out."""
    uses, now = prepared.uses, prepared.now
    results = [r if only is None or i in only else None for i, r in enumerate(prepared.results)]
    if prepared.todo:
        with session_reader(session) as db:
            created = _record_fast(db, prepared, results, only)
        conn = session.connection()
        for redemption_id, v in created:  # (record_redemption below emits its own)
            eventlog.emit(conn, shop_id=v[0], type="redemption.created", data=_created_data(redemption_id, v), now=now)
    for i in prepared.slow:
        if only is not None and i not in only:
            continue
        use = uses[i]
        try:
            outcome = record_redemption(
                session,
                shop_id=use.shop_id,
                code=use.code,
                order_id=use.order_id,
                now=now,
                amount=use.amount,
                subtotal=use.subtotal,
                revenue=use.revenue,
                currency=use.currency,
                customer_id=use.customer_id,
                email=use.email,
                channel=use.channel,
                source="webhook",
                enforce=False,
                address_key=use.address_key,
                order_total=use.total,
                order_items=use.items,
            )
        except UnknownCode:  # pragma: no cover - the code was read just before; codes are never deleted
            continue
        r = outcome.redemption
        assert r.id is not None
        results[i] = Recorded(r.id, r.campaign_id, outcome.duplicate, r.flagged_reason)
    return results


def _with_order(use: Use, order_id: str) -> Use:
    return use._replace(order_id=order_id)


def _partition(uses: list[Use], keys: list[str | None], codes: dict[tuple[int, str], _Code]) -> tuple[list[int], list[int]]:
    """The known uses that are alone in the batch (set-based), and the others (one by one).

    Alone: its code appears once (so its order and code do too) and its customer appears once
    in its campaign."""
    code_count = Counter((u.shop_id, u.code) for u in uses)
    rows = [codes.get((u.shop_id, u.code)) for u in uses]
    customer_count = Counter(
        (u.shop_id, row.campaign_id, k) for u, row, k in zip(uses, rows, keys, strict=True) if k is not None and row is not None
    )
    fast: list[int] = []
    slow: list[int] = []
    for i, (use, row, key) in enumerate(zip(uses, rows, keys, strict=True)):
        if row is None:
            continue  # unknown: None, as record_redemption's UnknownCode
        alone = code_count[(use.shop_id, use.code)] == 1
        if key is not None and customer_count[(use.shop_id, row.campaign_id, key)] > 1:
            alone = False
        (fast if alone else slow).append(i)
    return fast, slow


def _codes(db: Reader, uses: list[Use], now: datetime) -> dict[tuple[int, str], _Code]:
    wanted: dict[int, set[str]] = defaultdict(set)
    for use in uses:
        wanted[use.shop_id].add(use.code)
    moment = db.instant(now)
    found: dict[tuple[int, str], _Code] = {}
    for shop_id, names in wanted.items():
        for chunk in chunked(sorted(names), CHUNKS):
            for row in db.bulk(repeated(_CODES, len(chunk)), [moment, shop_id, *chunk]):
                found[(shop_id, row[4])] = _Code._make(row)
    return found


def _prepare_fast(
    db: Reader,
    prepared: Prepared,
    customers: list[Customer],
    keys: list[str | None],
    codes: dict[tuple[int, str], _Code],
    fast: list[int],
) -> None:
    uses = prepared.uses
    existing = _existing(db, [uses[i] for i in fast])
    todo: list[int] = []
    for i in fast:
        found = existing.get((uses[i].shop_id, uses[i].order_id, uses[i].code))
        if found is not None:
            prepared.results[i] = Recorded(found[0], found[1], True, found[2])
        else:
            todo.append(i)
    if not todo:
        return
    prepared.todo = todo
    prepared.rows = [codes[(uses[i].shop_id, uses[i].code)] for i in todo]
    prepared.keys = [keys[i] for i in todo]
    prepared.rules = _resolve_rules(db, prepared.rows)
    prepared.values = _new_redemptions(
        db, [uses[i] for i in todo], [customers[i] for i in todo], prepared.keys, prepared.rows, prepared.rules, prepared.now
    )


def _created_data(redemption_id: int, v: list[Any]) -> dict[str, Any]:
    """The `redemption.created` event's data from a new row's bound values (as redemption_data)."""
    return {
        "redemption_id": redemption_id,
        "campaign_id": v[_CAMPAIGN],
        "code": v[1],
        "order_id": v[2],
        "amount": v[_AMOUNT],
        "subtotal": v[12],
        "currency": v[11],
        "source": "webhook",
        "channel": v[10],
        "flagged_reason": v[_FLAG],
    }


def _record_fast(
    db: Reader, prepared: Prepared, results: list[Recorded | None], only: set[int] | None
) -> list[tuple[int, list[Any]]]:
    """Write the uses the fast path prepared; the new redemptions' ids and bound values."""
    uses, rules = prepared.uses, prepared.rules
    kept = [n for n, i in enumerate(prepared.todo) if only is None or i in only]
    todo = [prepared.todo[n] for n in kept]
    values = [prepared.values[n] for n in kept]
    rows = [prepared.rows[n] for n in kept]
    if not todo:
        return []
    inserted = _insert(db, values)
    if inserted:
        REDEMPTIONS.labels("webhook").inc(len(inserted))  # as `record_redemption` counts its own
    raced = [uses[i] for i, v in zip(todo, values, strict=True) if _claim(v) not in inserted]
    existing = {}
    if raced:  # recorded by a concurrent transaction since we looked: duplicates
        existing = _existing(db, raced)
    _move_counters(db, values, rows, [prepared.keys[n] for n in kept], rules, inserted)
    created: list[tuple[int, list[Any]]] = []
    for i, v in zip(todo, values, strict=True):
        claim = _claim(v)
        if claim in inserted:
            results[i] = Recorded(inserted[claim], v[_CAMPAIGN], False, v[_FLAG])
            created.append((inserted[claim], v))
        else:
            found = existing[claim]
            results[i] = Recorded(found[0], found[1], True, found[2])
    return created


def _resolve_rules(db: Reader, rows: list[_Code]) -> dict[tuple[int, int | None], _Rules]:
    """The rules of each (campaign, batch) these codes are in. Parsed from the stored JSON text
    through `plugin.store.caches`, like `lookup_code`: the same text parses to the same rules."""
    campaigns: dict[int, tuple[str, str | None]] = {}
    for chunk in chunked(sorted({row.campaign_id for row in rows}), CHUNKS):
        campaigns.update((r[0], (r[1], r[2])) for r in db.bulk(repeated(_CAMPAIGNS, len(chunk)), chunk))
    overrides: dict[int, str | None] = {}
    for chunk in chunked(sorted({row.batch_id for row in rows if row.batch_id is not None}), CHUNKS):
        overrides.update((r[0], r[1]) for r in db.bulk(repeated(_OVERRIDES, len(chunk)), chunk))
    out: dict[tuple[int, int | None], _Rules] = {}
    for campaign_id, batch_id in {(row.campaign_id, row.batch_id) for row in rows}:
        status, rules_text = campaigns[campaign_id]
        override_text = overrides.get(batch_id) if batch_id is not None else None
        override = caches.batch_override(override_text)
        rules = caches.effective_rules(rules_text, override_text)
        limit = rules.usage.uses_per_code if rules else 1
        out[(campaign_id, batch_id)] = _Rules(rules, override, limit, CampaignStatus(status) if rules else None)
    return out


def _new_redemptions(
    db: Reader,
    uses: list[Use],
    customers: list[Customer],
    keys: list[str | None],
    rows: list[_Code],
    rules: dict[tuple[int, int | None], _Rules],
    now: datetime,
) -> list[list[Any]]:
    """The redemption rows to insert (`_INSERT`'s bound columns), flagged as the rules say."""
    customer_uses = _customer_uses(db, [(u.shop_id, row.campaign_id, k) for u, row, k in zip(uses, rows, keys, strict=True)])
    created_at = db.instant(now)
    values: list[list[Any]] = []
    for use, customer, key, row in zip(uses, customers, keys, rows, strict=True):
        campaign_uses = customer_uses.get((use.shop_id, row.campaign_id, key), 0)
        refusal = _refusal(row, rules[(row.campaign_id, row.batch_id)], use.channel, customer, campaign_uses, now)
        values.append(
            [
                use.shop_id,
                use.code,
                use.order_id,
                row.id,
                row.campaign_id,
                row.batch_id,
                row.partner_id,
                row.recipient,
                customer.id,
                customer.email or normalise_email(use.email),
                POOL_CHANNEL if row.pool_id is not None else use.channel,
                use.currency.upper(),
                use.subtotal,
                use.amount or 0,
                refusal.reason.value if refusal else None,
                use.address_key,
                created_at,
                use.total,
                use.items,
                use.revenue,
            ]
        )
    return values


# Codes generated together share their creation instant: each stored value is parsed once.
_instant = lru_cache(maxsize=1024)(Reader.as_instant)


def _refusal(
    row: _Code,
    rules: _Rules,
    channel: str | None,
    customer: Customer,
    campaign_uses: int,
    now: datetime,
) -> Refusal | None:
    """What `record_redemption` finds wrong with a use of this code, if anything (the code,
    campaign and customer stages of `check_rules`)."""
    effective, limit = rules.rules, rules.limit
    if effective is None or rules.status is None:
        return refuse(Reason.CAMPAIGN_DRAFT)
    state = CodeState(
        code=row.code,
        issued_at=_instant(row.created_at) or now,
        uses=row.uses,
        voided=row.status == "voided",
        bound_customer_id=row.customer_id,
        bound_email=row.email,
        assigned_at=_instant(row.assigned_at),
        expires_at=_instant(row.expires_at),
        held_by_other_checkout=limit is not None and row.holds > 0 and row.uses + row.holds >= limit,
        override=rules.override,
    )
    if customer.campaign_uses != campaign_uses:  # a copy only when it changes something
        customer = customer.model_copy(update={"campaign_uses": campaign_uses})
    return (
        code_refusal(state, effective, now)
        or campaign_refusal(rules.status, effective, channel, now)
        or customer_refusal(state, effective, customer)
    )


def _insert(db: Reader, values: list[list[Any]]) -> dict[tuple[int, str, str], int]:
    """INSERT the rows ... ON CONFLICT DO NOTHING: the ids of those inserted, by (shop, order, code)."""
    inserted: dict[tuple[int, str, str], int] = {}
    for chunk in chunked(values, CHUNKS):
        for r in db.bulk(repeated(_INSERT, len(chunk), _INSERT_ROW), [x for v in chunk for x in v]):
            inserted[(r[1], r[2], r[3])] = int(r[0])
    return inserted


def _claim(values: list[Any]) -> tuple[int, str, str]:
    """A new redemption's (shop, order, code): what makes it unique."""
    return values[0], values[2], values[1]


def _move_counters(
    db: Reader,
    values: list[list[Any]],
    rows: list[_Code],
    keys: list[str | None],
    rules: dict[tuple[int, int | None], _Rules],
    inserted: dict[tuple[int, str, str], int],
) -> None:
    """Count the inserted redemptions on their codes, campaigns and customers, and flag those
    that went over their code's limit meanwhile."""
    new = [n for n, v in enumerate(values) if _claim(v) in inserted]
    uses_after = _bump_codes(db, [rows[n].id for n in new])
    per_campaign: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    bumps: list[tuple[int, int, str]] = []
    for n in new:
        v, row, key = values[n], rows[n], keys[n]
        limit = rules[(row.campaign_id, row.batch_id)].limit
        # record_redemption checks the limit after its increment, for active codes only; a use
        # over it is flagged but still counted, so a later rollback takes back what was added
        if row.status == "active" and limit is not None and uses_after[row.id] > limit and v[_FLAG] is None:
            v[_FLAG] = Reason.USAGE_LIMIT_REACHED.value
            db.execute("UPDATE redemption SET flagged_reason = ? WHERE id = ?", (v[_FLAG], inserted[_claim(v)]))
        totals = per_campaign[row.campaign_id]
        totals[0] += 1
        totals[1] += v[_AMOUNT]
        if key is not None:
            bumps.append((row.shop_id, row.campaign_id, key))
    for campaign_id, (count, amount) in sorted(per_campaign.items()):
        db.execute(_BUMP_CAMPAIGN, (count, amount, campaign_id))
    for chunk in chunked(bumps, CHUNKS):  # each (shop, campaign, customer) once: one upsert may take them all
        db.bulk(repeated(_BUMP_CUSTOMERS, len(chunk), "(?, ?, ?, 1)"), [x for b in chunk for x in b])


def _bump_codes(db: Reader, code_ids: list[int]) -> dict[int, int]:
    """One more use on each code (each once): the codes' uses after it."""
    after: dict[int, int] = {}
    for chunk in chunked(code_ids, CHUNKS):
        after.update((int(r[0]), int(r[1])) for r in db.bulk(repeated(_BUMP_CODES, len(chunk)), chunk))
    return after


def _existing(db: Reader, uses: list[Use]) -> dict[tuple[int, str, str], tuple[int, int | None, str | None]]:
    """Redemptions already recorded for these (shop, order, code)s: id, campaign, flag."""
    out: dict[tuple[int, str, str], tuple[int, int | None, str | None]] = {}
    by_shop: dict[int, set[str]] = defaultdict(set)
    for use in uses:
        by_shop[use.shop_id].add(use.order_id)
    wanted = {(u.shop_id, u.order_id, u.code) for u in uses}
    for shop_id, orders in by_shop.items():
        for chunk in chunked(sorted(orders), CHUNKS):
            for r in db.bulk(repeated(_EXISTING, len(chunk)), [shop_id, *chunk]):
                if (shop_id, r[1], r[2]) in wanted:
                    out[(shop_id, r[1], r[2])] = (int(r[0]), r[3], r[4])
    return out


@lru_cache(maxsize=64)
def _customer_uses_sql(shops: int, campaigns: int, keys: int) -> str:
    return (
        "SELECT shop_id, campaign_id, customer_key, uses FROM customerusage"
        f" WHERE shop_id IN ({', '.join('?' * shops)}) AND campaign_id IN ({', '.join('?' * campaigns)})"
        f" AND customer_key IN ({', '.join('?' * keys)})"
    )


def _customer_uses(db: Reader, wanted: list[tuple[int, int, str | None]]) -> dict[tuple[int, int, str | None], int]:
    keys = sorted({k for _, _, k in wanted if k is not None})
    if not keys:
        return {}
    shops = sorted({s for s, _, _ in wanted})
    campaigns = sorted({c for _, c, _ in wanted})
    out: dict[tuple[int, int, str | None], int] = {}
    for chunk in chunked(keys, CHUNKS):
        sql = _customer_uses_sql(len(shops), len(campaigns), len(chunk))
        out.update(((r[0], r[1], r[2]), int(r[3])) for r in db.bulk(sql, [*shops, *campaigns, *chunk]))
    return out
