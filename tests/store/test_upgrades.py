"""Upgrades keep the data: for every Alembic revision, a database at the revision before it,
holding rows in every table (written with plain SQL against the tables as they were then, never
through today's models), is upgraded one step; every row and value still there is unchanged,
and what the revision transforms is transformed as intended. On SQLite and PostgreSQL.

Every revision is tested, the first round's included: their cost is a few seconds per database.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from plugin.store import migrate
from plugin.store.db import make_engine

SCRIPT = ScriptDirectory(str(migrate.MIGRATIONS))
# oldest first: (revision, the revision it upgrades from)
STEPS = [(rev.revision, rev.down_revision) for rev in reversed(list(SCRIPT.walk_revisions())) if rev.down_revision]
ROWS = 2  # per table
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SCHEMA = "upgrade_check"


@pytest.fixture
def fresh(database_url: str, postgres_engine: Engine | None) -> Iterator[Engine]:
    """An empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if postgres_engine is None:
        engine = make_engine(database_url)
        yield engine
        engine.dispose()
        return
    with postgres_engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    url = make_engine(database_url).url.update_query_dict({"options": f"-csearch_path={SCHEMA}"})
    engine = make_engine(url.render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with postgres_engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {SCHEMA} CASCADE"))


def reflect(engine: Engine) -> sa.MetaData:
    metadata = sa.MetaData()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # partial indexes, cycles: not what we compare
        metadata.reflect(engine)
    return metadata


# Values that mean something to the app (and to the counters' triggers), by (table, column);
# `n` is the row's number in its table.
MEANINGFUL: dict[tuple[str, str], Callable[[int], Any]] = {
    ("code", "status"): lambda n: "active",
    ("code", "sync_status"): lambda n: ("pending", "synced")[n % 2],
    ("code", "uses"): lambda n: n % 2,
    ("code", "voided_at"): lambda n: None,
    ("code", "batch_id"): lambda n: None,  # batch_key 0: counters keyed by campaign alone
    ("code", "pool_id"): lambda n: 1 if n == 0 else None,  # the first pool's (numbered from 1): a provider
    ("redemption", "status"): lambda n: "active",
    ("redemption", "amount"): lambda n: 500 + n,
    ("redemption", "batch_id"): lambda n: None,
    ("job", "kind"): lambda n: "sync.push",
    ("job", "status"): lambda n: ("queued", "done")[n % 2],
    ("campaign", "platform_discount_id"): lambda n: f"gid://shopify/DiscountCodeNode/{1000 + n}",
}


def value_for(table: str, column: sa.Column[Any], n: int, parents: dict[str, list[Any]]) -> Any:
    if (table, column.name) in MEANINGFUL:
        return MEANINGFUL[(table, column.name)](n)
    for fk in column.foreign_keys:
        rows = parents.get(fk.column.table.name)
        return rows[n % len(rows)] if rows else None  # a parent not seeded yet (a cycle): none
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return n % 2 == 1
    if isinstance(kind, sa.Integer):
        return 10 + n
    if isinstance(kind, sa.DateTime):
        return WHEN.replace(minute=n)
    if isinstance(kind, sa.Date):
        return date(2026, 1, 2 + n)
    if isinstance(kind, sa.Float | sa.Numeric):
        return 1 + n
    if isinstance(kind, sa.JSON):
        return {"campaign_id": parents["campaign"][0]} if table == "job" and parents.get("campaign") else {"n": n}
    if isinstance(kind, sa.LargeBinary):
        return bytes([n])
    length = getattr(kind, "length", None) or 64
    return f"{column.name[:24]}-{n}"[:length]


def seed(engine: Engine) -> dict[str, list[Any]]:
    """ROWS rows in every table, parents first; returns each table's primary keys."""
    metadata = reflect(engine)
    keys: dict[str, list[Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        tables = metadata.sorted_tables
    with engine.begin() as conn:
        for table in tables:
            if table.name == "alembic_version":
                continue
            pk = list(table.primary_key.columns)
            auto = pk[0] if len(pk) == 1 and pk[0].name == "id" else None  # the database numbers them
            for n in range(ROWS):
                values = {c.name: value_for(table.name, c, n, keys) for c in table.columns if c is not auto}
                if table.name in ("campaign_stats", "shop_day_stats"):
                    continue  # moved by triggers from the rows below, never written directly
                result = conn.execute(table.insert().values(**values))
                key = result.inserted_primary_key[0] if auto is not None else tuple(values[c.name] for c in pk)
                keys.setdefault(table.name, []).append(key)
    return keys


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    metadata = reflect(engine)
    with engine.connect() as conn:
        return {
            t.name: [dict(r._mapping) for r in conn.execute(t.select().order_by(*t.primary_key.columns))]
            for t in metadata.sorted_tables
            if t.name != "alembic_version"
        }


def comparable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
    return value


@pytest.mark.parametrize(("revision", "before"), STEPS, ids=[r for r, _ in STEPS])
def test_upgrade_keeps_the_data_of_the_revision_before(fresh: Engine, revision: str, before: str) -> None:
    migrate.upgrade(fresh, before)
    seeded = seed(fresh)
    old = snapshot(fresh)
    assert all(len(rows) == ROWS for name, rows in old.items() if not name.endswith("_stats")), "every table seeded"

    migrate.upgrade(fresh, revision)

    new = snapshot(fresh)
    for table, rows in old.items():
        assert table in new, f"{revision} dropped table {table}"
        after = new[table]
        assert len(after) == len(rows), f"{revision} changed the number of rows in {table}"
        for was, now in zip(rows, after, strict=True):
            for column, value in was.items():
                if column in now and (table, column) not in CHANGED.get(revision, ()):
                    assert comparable(now[column]) == comparable(value), f"{revision}: {table}.{column} changed"
    check = CHECKS.get(revision)
    if check is not None:
        check(fresh, seeded, new)


# --- what each revision transforms ---------------------------------------------------------------

CHANGED: dict[str, set[tuple[str, str]]] = {"8f3b2d6a4c19": {("job", "serial_key")}}


def _refund_ledger(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    # existing redemptions: no order totals known, nothing refunded yet
    assert [(r["order_total"], r["order_items"], r["refunded"]) for r in new["redemption"]] == [(0, 0, 0)] * ROWS
    assert new["orderrefund"] == []


def _marker(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    assert [r["platform_discount_marker"] for r in new["campaign"]] == [None] * ROWS
    assert new["rate_limit_state"] == []


def _sandbox_status(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    assert [r["status"] for r in new["sandbox_discount"]] == ["active"] * ROWS  # discounts from before could all be used


def _discount_id_unbounded(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    assert [r["platform_discount_id"] for r in new["campaign"]] == [
        f"gid://shopify/DiscountCodeNode/{1000 + n}" for n in range(ROWS)
    ]
    template = "woo:" + "x" * 500  # WooCommerce's id carries the coupon template
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE campaign SET platform_discount_id = :v WHERE id = :id"), {"v": template, "id": seeded["campaign"][0]}
        )
        stored = conn.execute(
            text("SELECT platform_discount_id FROM campaign WHERE id = :id"), {"id": seeded["campaign"][0]}
        ).scalar()
    assert stored == template


def _serial_key(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    campaign_id = seeded["campaign"][0]
    jobs = {r["status"]: r for r in new["job"]}
    queued = jobs["queued"]
    assert queued["serial_key"] == f"sync:{queued['shop_id']}:{campaign_id}"  # unfinished: keyed as enqueue keys new ones
    assert jobs["done"]["serial_key"] is None  # finished: never claimed again


def _pools(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    assert [r["pool_id"] for r in new["code"]] == [None] * ROWS  # codes from before are in no provider pool
    assert new["coupon_pool"] == [] and new["pool_upload"] == []


def _counters(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    """The counters are filled from the rows already there."""
    codes, stats = new["code"], new["campaign_stats"]
    for campaign_id in {c["campaign_id"] for c in codes}:
        mine = [c for c in codes if c["campaign_id"] == campaign_id]
        row = [s for s in stats if s["campaign_id"] == campaign_id]
        assert len(row) == 1, row
        assert row[0]["codes"] == len(mine)
        assert row[0]["sync_synced"] == sum(c["sync_status"] == "synced" for c in mine)
        assert row[0]["sync_pending"] == sum(c["sync_status"] == "pending" for c in mine)
    redemptions = new["redemption"]
    assert sum(d["redemptions"] for d in new["shop_day_stats"]) == len(redemptions)
    assert sum(d["discount"] for d in new["shop_day_stats"]) == sum(r["amount"] for r in redemptions)
    _moves_with_a_new_code(engine, seeded)


def _moves_with_a_new_code(engine: Engine, seeded: dict[str, list[Any]]) -> None:
    """After the upgrade the triggers move the counters: one more code, one more counted."""
    campaign_id = seeded["campaign"][0]
    with engine.begin() as conn:
        before = conn.execute(text("SELECT SUM(codes) FROM campaign_stats WHERE campaign_id = :c"), {"c": campaign_id}).scalar()
        conn.execute(
            text(
                "INSERT INTO code (shop_id, campaign_id, code, status, sync_status, uses, created_at) "
                "SELECT shop_id, id, 'UPGRADE1', 'active', 'pending', 0, created_at FROM campaign WHERE id = :c"
            ),
            {"c": campaign_id},
        )
        after = conn.execute(text("SELECT SUM(codes) FROM campaign_stats WHERE campaign_id = :c"), {"c": campaign_id}).scalar()
    assert after == before + 1


def _bulk_mark(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    assert new["code_bulk_insert"] == []
    _moves_with_a_new_code(engine, seeded)  # the rewritten SQLite triggers still count


def _index(name: str) -> Callable[[Engine, dict[str, list[Any]], dict[str, list[dict[str, Any]]]], None]:
    def check(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
        assert name in {i["name"] for i in sa.inspect(engine).get_indexes("code")}

    return check


def _new_table(name: str) -> Callable[[Engine, dict[str, list[Any]], dict[str, list[dict[str, Any]]]], None]:
    def check(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
        assert new[name] == []

    return check


def _no_reminders_yet(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    # deliveries from before were never reminded: each is reminded once when it falls due
    assert [r["reminded_at"] for r in new["recipientdelivery"]] == [None] * len(seeded["recipientdelivery"])


def _outbound_events(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    for table in ("event_endpoint", "event_message", "event_delivery", "event_attempt", "alert_channel"):
        assert new[table] == [], table


def _results_rollups(engine: Engine, seeded: dict[str, list[Any]], new: dict[str, list[dict[str, Any]]]) -> None:
    """Shops count days in UTC until told otherwise; the rollups are filled from the rows there."""
    assert {r["timezone"] for r in new["shop"]} == {"UTC"}
    assert sum(d["redeemed"] for d in new["result_day"]) == len(new["redemption"])
    active = [r for r in new["redemption"] if r["status"] == "active"]
    assert sum(d["discount"] for d in new["result_day"]) == sum(r["amount"] for r in active)
    # each redemption names its code's provider (its pool's, else its first delivery's), as its figures do
    pools = {p["id"]: p["provider"] for p in new["coupon_pool"]}
    first: dict[Any, str] = {}
    for d in sorted(new["recipientdelivery"], key=lambda d: d["id"]):
        first.setdefault(d["code_id"], d["provider"])
    codes = {c["id"]: c for c in new["code"]}

    def provider(code_id: Any) -> str:
        code = codes.get(code_id)
        if code is None:
            return ""
        return pools[code["pool_id"]] if code["pool_id"] in pools else first.get(code_id, "")

    assert [r["provider"] for r in new["redemption"]] == [provider(r["code_id"]) for r in new["redemption"]]
    assert [r["provider"] for r in new["redemption"]][:1] == ["provider-0"]  # code 1 is in pool 1
    by_provider: dict[str, int] = {}
    for d in new["result_day"]:
        by_provider[d["provider"]] = by_provider.get(d["provider"], 0) + d["redeemed"]
    assert {k: v for k, v in by_provider.items() if v} == dict(Counter(r["provider"] for r in new["redemption"]))


CHECKS: dict[str, Callable[[Engine, dict[str, list[Any]], dict[str, list[dict[str, Any]]]], None]] = {
    "7c2f4e9a1b30": _index("ix_code_unassigned"),
    "5b7e1c0d2a93": _new_table("used_nonce"),
    "b4e1d7a9c2f5": _refund_ledger,
    "5d1e8b3f0c27": _marker,
    "3e8a5c1f7d42": _sandbox_status,
    "a7d2c4e6f813": _new_table("code_end_change"),
    "8f3b2d6e4a17": _discount_id_unbounded,
    "8f3b2d6a4c19": _serial_key,
    "a4c7e2d9f613": _pools,
    "c3f9a1e7b254": _new_table("admin_user"),
    "c3d9a6e1f052": _counters,
    "d5a8c2f7e391": _bulk_mark,
    "e7b4d1a9c630": _index("ix_code_campaign_id"),
    "f2c8a4d6b715": _no_reminders_yet,
    "e97095fe9668": _index("ix_code_claimed"),
    "a6c41e9d07b3": _outbound_events,
    "a61f3c9e2d84": _results_rollups,
}


def test_every_revision_has_its_check() -> None:
    """A new revision gets a line in CHECKS saying what it must do to existing data."""
    assert {r for r, _ in STEPS} <= set(CHECKS), sorted({r for r, _ in STEPS} - set(CHECKS))
