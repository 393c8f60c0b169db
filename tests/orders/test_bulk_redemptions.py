"""The batched webhook redemptions end exactly as `record_redemption` one by one would.

Two shops get the same campaigns and the same codes. The same random stream of order uses
(repeated codes and orders, shared customers, voided, bound, expired and held codes,
channel rules, a draft campaign, codes we don't have) is recorded in one shop with
`record_redemption` use after use, and in the other with `record_webhook_redemptions` in
batches; every result, row and counter must match."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import col, select

from plugin.campaigns.campaigns import create_campaign
from plugin.checkout.redemptions import UnknownCode, record_redemption
from plugin.orders import bulk_redemptions
from plugin.orders.bulk_redemptions import Recorded, Use, record_webhook_redemptions
from plugin.shops.shops import ensure_local_shop
from plugin.store.db import chunked, session_scope
from plugin.store.models import Campaign, Code, CustomerUsage, Redemption, Reservation, utcnow

CAMPAIGNS: list[dict[str, Any]] = [
    {"discount": {"type": "percentage", "percent": "10"}},  # one use per code
    {"discount": {"type": "percentage", "percent": "10"}, "usage": {"uses_per_code": 2, "uses_per_customer": 1}},
    {"discount": {"type": "percentage", "percent": "10"}, "allowed_channels": ["web"], "usage": {"uses_per_code": None}},
    {},  # a draft: no rules yet
]


def _setup(engine: Engine, domain: str) -> int:
    now = utcnow()
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, domain)
        assert shop.id is not None
        for n, rules in enumerate(CAMPAIGNS):
            campaign = create_campaign(session, shop_id=shop.id, name=f"c{n}", rules=rules or None)
            assert campaign.id is not None
            for i in range(8):
                code = Code(
                    shop_id=shop.id,
                    campaign_id=campaign.id,
                    code=f"C{n}X{i}",
                    status="voided" if i == 5 else "active",
                    customer_id="bound-one" if i == 6 else None,
                    expires_at=now - timedelta(days=1) if i == 7 else None,
                    uses=1 if i == 4 else 0,
                    created_at=now - timedelta(days=2),
                )
                session.add(code)
                session.flush()
                if i == 3:  # held by another checkout
                    assert code.id is not None
                    session.add(
                        Reservation(shop_id=shop.id, code_id=code.id, checkout_id="other", expires_at=now + timedelta(hours=1))
                    )
        return shop.id


def _stream(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        customer = rng.choice([None, "cust-a", "cust-b", "bound-one", f"c{rng.randrange(50)}"])
        out.append(
            {
                "code": rng.choice([f"C{rng.randrange(len(CAMPAIGNS))}X{rng.randrange(8)}", "GENERIC10"]),
                "order_id": str(rng.randrange(40)) + (" " if rng.random() < 0.05 else ""),
                "amount": rng.choice([None, 0, 500, 800]),
                "subtotal": rng.randrange(1000, 9000),
                "currency": rng.choice(["USD", "usd"]),
                "customer_id": customer,
                "email": rng.choice([None, "Ann@Example.com", " bob@example.com "]),
                "channel": rng.choice(["web", "pos", None]),
            }
        )
    return out


def _single(engine: Engine, shop_id: int, stream: list[dict[str, Any]], now: Any) -> list[tuple[bool, str | None] | None]:
    out: list[tuple[bool, str | None] | None] = []
    for item in stream:
        with session_scope(engine) as session:
            try:
                result = record_redemption(session, shop_id=shop_id, now=now, source="webhook", enforce=False, **item)
            except UnknownCode:
                out.append(None)
                continue
            out.append((result.duplicate, result.redemption.flagged_reason))
    return out


def _batched(engine: Engine, shop_id: int, stream: list[dict[str, Any]], now: Any, size: int) -> list[Recorded | None]:
    out: list[Recorded | None] = []
    for start in range(0, len(stream), size):
        with session_scope(engine) as session:
            out.extend(
                record_webhook_redemptions(session, [Use(shop_id=shop_id, **i) for i in stream[start : start + size]], now=now)
            )
    return out


def _state(engine: Engine, shop_id: int) -> dict[str, Any]:
    with session_scope(engine) as session:
        campaigns = {c.id: c.name for c in session.exec(select(Campaign).where(col(Campaign.shop_id) == shop_id)).all()}
        return {
            "redemptions": sorted(
                (
                    r.order_id,
                    r.code,
                    campaigns[r.campaign_id],
                    r.flagged_reason,
                    r.amount,
                    r.subtotal,
                    r.currency,
                    r.email,
                    r.customer_id,
                    r.channel,
                    r.status,
                )
                for r in session.exec(select(Redemption).where(col(Redemption.shop_id) == shop_id)).all()
            ),
            "codes": sorted((c.code, c.uses) for c in session.exec(select(Code).where(col(Code.shop_id) == shop_id)).all()),
            "campaigns": sorted(
                (c.name, c.redemption_count, c.discount_total)
                for c in session.exec(select(Campaign).where(col(Campaign.shop_id) == shop_id)).all()
            ),
            "customers": sorted(
                (campaigns[u.campaign_id], u.customer_key, u.uses)
                for u in session.exec(select(CustomerUsage).where(col(CustomerUsage.shop_id) == shop_id)).all()
            ),
        }


@pytest.mark.parametrize(
    ("seed", "size", "chunks"),
    [(1, 7, None), (2, 20, None), (3, 400, None), (4, 1, None), (5, 20, (4, 3, 1)), (6, 400, (2, 1))],
)
def test_batches_end_exactly_as_one_by_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, seed: int, size: int, chunks: tuple[int, ...] | None
) -> None:
    if chunks is not None:  # many small statements instead of one per step
        monkeypatch.setattr(bulk_redemptions, "CHUNKS", chunks)
    one, many = _setup(engine, "one.test"), _setup(engine, "many.test")
    stream = _stream(seed, 400)
    now = utcnow()
    expected = _single(engine, one, stream, now)
    one_by_one = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        one_by_one.append(kwargs["code"])
        return record_redemption(*args, **kwargs)

    monkeypatch.setattr(bulk_redemptions, "record_redemption", counted)
    got = _batched(engine, many, stream, now, size)
    known = sum(1 for e in expected if e is not None)
    if size == 1:  # nothing to depend on within a batch: all set-based
        assert one_by_one == []
    elif size < 50:  # both paths were taken: set-based for lone uses, one by one for repeats
        assert 0 < len(one_by_one) < known
    assert [None if r is None else (r.duplicate, r.flagged_reason) for r in got] == expected
    assert any(e is not None and e[1] for e in expected) and any(
        e is not None and e[0] for e in expected
    )  # flags and repeats did happen
    assert _state(engine, many) == _state(engine, one)


def test_a_repeated_batch_changes_nothing(engine: Engine) -> None:
    shop = _setup(engine, "again.test")
    stream = _stream(9, 100)
    now = utcnow()
    first = _batched(engine, shop, stream, now, 100)
    before = _state(engine, shop)
    again = _batched(engine, shop, stream, now, 100)
    assert _state(engine, shop) == before
    assert all(r is None or r.duplicate for r in again)
    assert [r.redemption_id for r in again if r] == [r.redemption_id for r in first if r]


def test_chunks_cover_the_items_in_order_with_few_sizes() -> None:
    items = list(range(1000))
    chunks = list(chunked(items, bulk_redemptions.CHUNKS))
    assert [x for chunk in chunks for x in chunk] == items
    assert [len(chunk) for chunk in chunks] == [256, 256, 256, 64, 64, 64, 32, 8]
    assert [len(chunk) for chunk in chunked(items[:50], bulk_redemptions.CHUNKS)] == [32, 16, 2]  # a group commit
    assert list(chunked([], bulk_redemptions.CHUNKS)) == []
    assert [list(chunk) for chunk in chunked(items[:10], (4,))] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def _use(shop_id: int, code: str, order_id: str) -> Use:
    return Use(shop_id=shop_id, code=code, order_id=order_id, amount=500, customer_id="cust-a")


def test_a_use_recorded_meanwhile_is_a_duplicate(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A concurrent transaction (PostgreSQL) may record the same (order, code) after we looked:
    the insert claims nothing, and the use answers with that row, moving no counter."""
    shop = _setup(engine, "race.test")
    now = utcnow()
    first = _batched(engine, shop, [{"code": "C1X0", "order_id": "1", "customer_id": "cust-a"}], now, 1)[0]
    before = _state(engine, shop)
    looked = bulk_redemptions._existing
    calls: list[int] = []

    def not_yet(*args: Any) -> Any:
        calls.append(1)
        return {} if len(calls) == 1 else looked(*args)  # the first look misses the row

    monkeypatch.setattr(bulk_redemptions, "_existing", not_yet)
    with session_scope(engine) as session:
        again = record_webhook_redemptions(session, [_use(shop, "C1X0", "1"), _use(shop, "C0X0", "2")], now=now)
    assert len(calls) == 2
    assert first is not None and again[0] == Recorded(first.redemption_id, first.campaign_id, True, first.flagged_reason)
    assert again[1] is not None and not again[1].duplicate
    after = _state(engine, shop)  # only the second use counted
    assert after["codes"] == sorted(("C0X0", 1) if c == "C0X0" else (c, n) for c, n in before["codes"])
    assert len(after["redemptions"]) == len(before["redemptions"]) + 1
    assert after["campaigns"] == [("c0", 1, 500), ("c1", 1, 0), ("c2", 0, 0), ("c3", 0, 0)]
    assert after["customers"] == [("c0", "id:cust-a", 1), ("c1", "id:cust-a", 1)]


def test_a_code_used_up_meanwhile_is_flagged_over_its_limit(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A concurrent use (PostgreSQL) may take a code's last use after we read it: the use is
    still recorded and counted, flagged over the limit, as `record_redemption` does."""
    shop = _setup(engine, "limit.test")
    now = utcnow()
    _batched(engine, shop, [{"code": "C0X0", "order_id": "1"}], now, 1)
    read = bulk_redemptions._codes

    def stale(*args: Any) -> Any:
        return {key: row._replace(uses=0) for key, row in read(*args).items()}  # as before the first use

    monkeypatch.setattr(bulk_redemptions, "_codes", stale)
    with session_scope(engine) as session:
        [got] = record_webhook_redemptions(session, [_use(shop, "C0X0", "2")], now=now)
    assert got is not None and not got.duplicate and got.flagged_reason == "usage_limit_reached"
    state = _state(engine, shop)
    assert ("C0X0", 2) in state["codes"]
    assert [r[3] for r in state["redemptions"] if r[0] == "2"] == ["usage_limit_reached"]
    assert ("c0", 2, 500) in state["campaigns"]  # counted (the first use had no amount)
