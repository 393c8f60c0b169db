"""Many webhook redemptions in one transaction, set-based: the batched twin of
`record_redemption(..., source="webhook", enforce=False)` (promise 3 at throughput).

Each use ends exactly as if `record_redemption` had recorded the uses one after the other in
the given order: the same rows, flags, counters and duplicates. To make that true without
replaying the single-row steps, a use takes the set-based path only when nothing else in the
batch can change what it sees: its code, its (order, code) and its customer in its campaign
appear once in the batch. Those uses are independent, so their order does not matter, and
their effects are a few statements for the whole batch:

    1. read the codes, campaigns, batch overrides, reservations, customer uses and existing
       redemptions the batch needs (one query each);
    2. evaluate each use with the same pure rules (code, campaign and customer stages);
    3. INSERT the redemptions ... ON CONFLICT DO NOTHING RETURNING (the idempotent claim:
       a row someone else inserted meanwhile is a duplicate and moves no counter);
    4. move the counters: code uses (UPDATE ... RETURNING uses, for the over-the-limit flag),
       campaign totals (one UPDATE per campaign), customer uses (one upsert each).

Every other use (a code twice in the batch, a customer twice in a campaign) goes through
`record_redemption` itself, after the set-based ones, in the same transaction.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from plugin.errors import InvalidInput
from plugin.models import Batch, Campaign, Code, CustomerUsage, Redemption, Reservation
from plugin.redemptions import UnknownCode, customer_key, record_redemption
from plugin.refusals import refuse
from plugin.rules import (
    CampaignRules,
    CampaignStatus,
    CodeState,
    Customer,
    Reason,
    Refusal,
    RulesOverride,
    apply_override,
    campaign_refusal,
    code_refusal,
    customer_refusal,
    normalise_email,
)

_code = Code.__table__  # type: ignore[attr-defined]
_campaign = Campaign.__table__  # type: ignore[attr-defined]
_batch = Batch.__table__  # type: ignore[attr-defined]
_redemption = Redemption.__table__  # type: ignore[attr-defined]
_reservation = Reservation.__table__  # type: ignore[attr-defined]
_usage = CustomerUsage.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Use:
    """One code used on one order, as an order webhook reports it (`code` in stored form)."""

    shop_id: int
    code: str
    order_id: str
    amount: int | None = None
    subtotal: int = 0
    currency: str = "USD"
    customer_id: str | None = None
    email: str | None = None
    channel: str | None = None
    address_key: str | None = None  # the order's shipping-address fingerprint (plugin.addresses)


@dataclass(frozen=True)
class Recorded:
    """What recording a use did: its redemption's campaign, whether it was already there, its flag."""

    redemption_id: int
    campaign_id: int | None
    duplicate: bool
    flagged_reason: str | None


def record_webhook_redemptions(session: Session, uses: list[Use], *, now: datetime) -> list[Recorded | None]:
    """Record every use, in order, like `record_redemption(enforce=False, source="webhook")`;
    None for a code the shop doesn't have. Raises what `record_redemption` raises."""
    for use in uses:
        order_id = use.order_id.strip()
        if not order_id or len(order_id) > 255:
            raise InvalidInput("order_id must be 1 to 255 characters", reason="invalid_order_id")
    uses = [u if u.order_id == u.order_id.strip() else _with_order(u, u.order_id.strip()) for u in uses]
    conn = session.connection()
    codes = _codes(conn, uses)
    results: list[Recorded | None] = [None] * len(uses)
    code_count = Counter((u.shop_id, u.code) for u in uses)
    order_count = Counter((u.shop_id, u.order_id, u.code) for u in uses)
    customers = [Customer(id=u.customer_id, email=u.email) for u in uses]
    keys = [customer_key(c.id, c.email) for c in customers]
    customer_count: Counter[tuple[int, int, str | None]] = Counter(
        (u.shop_id, codes[(u.shop_id, u.code)]["campaign_id"], k)
        for u, k in zip(uses, keys, strict=True)
        if k is not None and (u.shop_id, u.code) in codes
    )
    fast: list[int] = []
    slow: list[int] = []
    for i, use in enumerate(uses):
        row = codes.get((use.shop_id, use.code))
        if row is None:
            continue  # unknown: None, as record_redemption's UnknownCode
        alone = code_count[(use.shop_id, use.code)] == 1 and order_count[(use.shop_id, use.order_id, use.code)] == 1
        if keys[i] is not None and customer_count[(use.shop_id, row["campaign_id"], keys[i])] > 1:
            alone = False
        (fast if alone else slow).append(i)
    if fast:
        _record_fast(session, uses, customers, keys, codes, fast, results, now)
    for i in slow:
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
                currency=use.currency,
                customer_id=use.customer_id,
                email=use.email,
                channel=use.channel,
                source="webhook",
                enforce=False,
                address_key=use.address_key,
            )
        except UnknownCode:  # pragma: no cover - the code was read in this transaction
            continue
        r = outcome.redemption
        assert r.id is not None
        results[i] = Recorded(r.id, r.campaign_id, outcome.duplicate, r.flagged_reason)
    return results


def _with_order(use: Use, order_id: str) -> Use:
    return Use(**{**use.__dict__, "order_id": order_id})


def _codes(conn: Any, uses: list[Use]) -> dict[tuple[int, str], dict[str, Any]]:
    wanted: dict[int, set[str]] = defaultdict(set)
    for use in uses:
        wanted[use.shop_id].add(use.code)
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for shop_id, names in wanted.items():
        rows = conn.execute(select(_code).where(_code.c.shop_id == shop_id, _code.c.code.in_(sorted(names)))).mappings()
        found.update({(shop_id, r["code"]): dict(r) for r in rows})
    return found


def _record_fast(
    session: Session,
    uses: list[Use],
    customers: list[Customer],
    keys: list[str | None],
    codes: dict[tuple[int, str], dict[str, Any]],
    fast: list[int],
    results: list[Recorded | None],
    now: datetime,
) -> None:
    conn = session.connection()
    existing = _existing(conn, [uses[i] for i in fast])
    todo: list[int] = []
    for i in fast:
        found = existing.get((uses[i].shop_id, uses[i].order_id, uses[i].code))
        if found is not None:
            results[i] = Recorded(found[0], found[1], True, found[2])
        else:
            todo.append(i)
    if not todo:
        return
    rows = [codes[(uses[i].shop_id, uses[i].code)] for i in todo]
    campaigns = {
        r["id"]: r
        for r in conn.execute(
            select(_campaign).where(_campaign.c.id.in_(sorted({row["campaign_id"] for row in rows})))
        ).mappings()
    }
    rules = {cid: CampaignRules.model_validate(c["rules"]) if c["rules"] else None for cid, c in campaigns.items()}
    batch_ids = {row["batch_id"] for row in rows if row["batch_id"] is not None}
    overrides: dict[int, RulesOverride] = {}
    if batch_ids:
        for b in conn.execute(select(_batch.c.id, _batch.c.rules_override).where(_batch.c.id.in_(sorted(batch_ids)))):
            if b.rules_override:
                overrides[b.id] = RulesOverride.model_validate(b.rules_override)
    holds: dict[int, int] = dict(
        conn.execute(
            select(_reservation.c.code_id, func.count())
            .where(
                _reservation.c.code_id.in_([row["id"] for row in rows]),
                _reservation.c.released_at.is_(None),
                _reservation.c.expires_at > now,
            )
            .group_by(_reservation.c.code_id)
        ).all()
    )
    customer_uses = _customer_uses(
        conn, [(uses[i].shop_id, row["campaign_id"], keys[i]) for i, row in zip(todo, rows, strict=True)]
    )

    values: list[dict[str, Any]] = []
    limits: dict[int, int | None] = {}
    for i, row in zip(todo, rows, strict=True):
        use, customer, key = uses[i], customers[i], keys[i]
        campaign_rules = rules[row["campaign_id"]]
        override = overrides.get(row["batch_id"]) if row["batch_id"] is not None else None
        effective = apply_override(campaign_rules, override) if campaign_rules else None
        limit = effective.usage.uses_per_code if effective else 1
        limits[i] = limit
        held = limit is not None and holds.get(row["id"], 0) > 0 and row["uses"] + holds.get(row["id"], 0) >= limit
        state = CodeState(
            code=row["code"],
            issued_at=row["created_at"],
            uses=row["uses"],
            voided=row["status"] == "voided",
            bound_customer_id=row["customer_id"],
            bound_email=row["email"],
            assigned_at=row["assigned_at"],
            expires_at=row["expires_at"],
            held_by_other_checkout=held,
            override=override,
        )
        refusal: Refusal | None
        if campaign_rules is None or effective is None:
            refusal = refuse(Reason.CAMPAIGN_DRAFT)
        else:
            seen = customer.model_copy(update={"campaign_uses": customer_uses.get((use.shop_id, row["campaign_id"], key), 0)})
            status = CampaignStatus(campaigns[row["campaign_id"]]["status"])
            refusal = (
                code_refusal(state, effective, now)
                or campaign_refusal(status, effective, use.channel, now)
                or customer_refusal(state, effective, seen)
            )
        values.append(
            {
                "shop_id": use.shop_id,
                "code": use.code,
                "order_id": use.order_id,
                "code_id": row["id"],
                "campaign_id": row["campaign_id"],
                "batch_id": row["batch_id"],
                "partner_id": row["partner_id"],
                "recipient": row["recipient"],
                "customer_id": customer.id,
                "email": customer.email or normalise_email(use.email),
                "channel": use.channel,
                "currency": use.currency.upper(),
                "subtotal": use.subtotal,
                "amount": use.amount or 0,
                "source": "webhook",
                "status": "active",
                "flagged_reason": refusal.reason.value if refusal else None,
                "address_key": use.address_key,
                "created_at": now,
                "rolled_back_at": None,
            }
        )

    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = (
        dialect_insert(_redemption)
        .on_conflict_do_nothing(index_elements=["shop_id", "order_id", "code"])
        .returning(_redemption.c.id, _redemption.c.shop_id, _redemption.c.order_id, _redemption.c.code)
    )
    inserted = {(r.shop_id, r.order_id, r.code): int(r.id) for r in conn.execute(stmt, values)}
    raced = [uses[i] for i in todo if (uses[i].shop_id, uses[i].order_id, uses[i].code) not in inserted]
    if raced:  # recorded by a concurrent transaction since we looked (PostgreSQL): duplicates
        existing = _existing(conn, raced)
    new = [(i, v) for i, v in zip(todo, values, strict=True) if (v["shop_id"], v["order_id"], v["code"]) in inserted]
    uses_after: dict[int, int] = {}
    if new:
        code_ids = [v["code_id"] for _, v in new]
        uses_after = {
            int(r.id): int(r.uses)
            for r in conn.execute(
                update(_code).where(_code.c.id.in_(code_ids)).values(uses=_code.c.uses + 1).returning(_code.c.id, _code.c.uses)
            )
        }
    over: list[dict[str, Any]] = []
    per_campaign: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    bumps: list[dict[str, Any]] = []
    for i, v in new:
        row = codes[(v["shop_id"], v["code"])]
        limit = limits[i]
        # record_redemption checks the limit after its increment, for active codes only; a use
        # over it is flagged but still counted, so a later rollback takes back what was added
        if row["status"] == "active" and limit is not None and uses_after[v["code_id"]] > limit and v["flagged_reason"] is None:
            v["flagged_reason"] = Reason.USAGE_LIMIT_REACHED.value
            over.append({"b_id": inserted[(v["shop_id"], v["order_id"], v["code"])], "b_reason": v["flagged_reason"]})
        totals = per_campaign[v["campaign_id"]]
        totals[0] += 1
        totals[1] += v["amount"]
        key = keys[i]
        if key is not None:
            bumps.append({"shop_id": v["shop_id"], "campaign_id": v["campaign_id"], "customer_key": key, "uses": 1})
    if over:
        conn.execute(
            update(_redemption).where(_redemption.c.id == bindparam("b_id")).values(flagged_reason=bindparam("b_reason")), over
        )
    if per_campaign:
        conn.execute(
            update(_campaign)
            .where(_campaign.c.id == bindparam("b_id"))
            .values(
                redemption_count=_campaign.c.redemption_count + bindparam("b_count"),
                discount_total=_campaign.c.discount_total + bindparam("b_amount"),
            ),
            [{"b_id": cid, "b_count": n, "b_amount": amount} for cid, (n, amount) in sorted(per_campaign.items())],
        )
    if bumps:
        upsert = dialect_insert(_usage)
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[_usage.c.shop_id, _usage.c.campaign_id, _usage.c.customer_key],
                set_={"uses": _usage.c.uses + 1},
            ),
            bumps,
        )
    for i, v in zip(todo, values, strict=True):
        key3 = (v["shop_id"], v["order_id"], v["code"])
        if key3 in inserted:
            results[i] = Recorded(inserted[key3], v["campaign_id"], False, v["flagged_reason"])
        else:
            found = existing[key3]
            results[i] = Recorded(found[0], found[1], True, found[2])


def _existing(conn: Any, uses: list[Use]) -> dict[tuple[int, str, str], tuple[int, int | None, str | None]]:
    """Redemptions already recorded for these (shop, order, code)s: id, campaign, flag."""
    out: dict[tuple[int, str, str], tuple[int, int | None, str | None]] = {}
    by_shop: dict[int, set[str]] = defaultdict(set)
    for use in uses:
        by_shop[use.shop_id].add(use.order_id)
    wanted = {(u.shop_id, u.order_id, u.code) for u in uses}
    for shop_id, orders in by_shop.items():
        rows = conn.execute(
            select(
                _redemption.c.id,
                _redemption.c.order_id,
                _redemption.c.code,
                _redemption.c.campaign_id,
                _redemption.c.flagged_reason,
            ).where(_redemption.c.shop_id == shop_id, _redemption.c.order_id.in_(sorted(orders)))
        )
        for r in rows:
            if (shop_id, r.order_id, r.code) in wanted:
                out[(shop_id, r.order_id, r.code)] = (int(r.id), r.campaign_id, r.flagged_reason)
    return out


def _customer_uses(conn: Any, wanted: list[tuple[int, int, str | None]]) -> dict[tuple[int, int, str | None], int]:
    keys = {k for _, _, k in wanted if k is not None}
    if not keys:
        return {}
    shops = {s for s, _, _ in wanted}
    campaigns = {c for _, c, _ in wanted}
    rows = conn.execute(
        select(_usage.c.shop_id, _usage.c.campaign_id, _usage.c.customer_key, _usage.c.uses).where(
            _usage.c.shop_id.in_(sorted(shops)),
            _usage.c.campaign_id.in_(sorted(campaigns)),
            _usage.c.customer_key.in_(sorted(keys)),
        )
    )
    return {(r.shop_id, r.campaign_id, r.customer_key): int(r.uses) for r in rows}
