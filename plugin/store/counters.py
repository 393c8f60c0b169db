"""Counters kept with the writes: the admin's figures without counting rows at read time.

Two tables, moved by database triggers in the same transaction as the row they describe, so
every write path (the checkout's raw SQL, the bulk webhook path, COPY, a hand-run UPDATE) keeps
them exact, with atomic increments (``x = x + delta``, never read-modify-write):

- ``campaign_stats``: one row per (campaign, batch) — batch 0 for codes without one — holding
  what the campaign's codes add up to (see `CODE_TERMS`) plus the redemptions rolled back and
  the time of the last redemption;
- ``shop_day_stats``: one row per shop per UTC day of a redemption's ``created_at``, holding
  the redemptions of that day still active and the discount they gave (a rollback takes its
  redemption back from the day it was made, so the figures equal the rows).

SQLite runs a row trigger per changed row (add the counter row if missing, then one UPDATE), except
for a bulk insert of generated codes (plugin.store.bulk), which pauses the insert trigger for its
batch and counts the chunk once, in the same transaction; PostgreSQL runs one statement trigger
per statement that aggregates its transition tables, so a million-code COPY costs one grouped
upsert, not a million. `rebuild` recomputes both tables from the rows (`couponry admin recount`).

This module is where the dialects differ; `install` is run by `create_all` (an ``after_create``
listener on the tables, see models) and by the Alembic revision that introduced the tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

# Each counter of campaign_stats and the SQL expression of what one code row adds to it.
CODE_TERMS: dict[str, str] = {
    "codes": "1",
    "active": "CASE WHEN {r}.status = 'active' THEN 1 ELSE 0 END",
    "active_uses": "CASE WHEN {r}.status = 'active' THEN {r}.uses ELSE 0 END",
    "unused": "CASE WHEN {r}.status = 'active' AND {r}.uses = 0 THEN 1 ELSE 0 END",
    "used": "CASE WHEN {r}.uses > 0 THEN 1 ELSE 0 END",
    "assigned": "CASE WHEN {r}.recipient IS NOT NULL THEN 1 ELSE 0 END",
    "sync_pending": "CASE WHEN {r}.sync_status = 'pending' THEN 1 ELSE 0 END",
    "sync_synced": "CASE WHEN {r}.sync_status = 'synced' THEN 1 ELSE 0 END",
    "sync_failed": "CASE WHEN {r}.sync_status = 'failed' THEN 1 ELSE 0 END",
    "sync_deactivated": "CASE WHEN {r}.sync_status = 'deactivated' THEN 1 ELSE 0 END",
}
# the code columns the terms read: an update touching none of them moves no counter
CODE_COLUMNS = ("campaign_id", "batch_id", "status", "uses", "recipient", "sync_status")
STAT_COLUMNS = (*CODE_TERMS, "rolled_back")
SYNC_STATUSES = ("pending", "synced", "failed", "deactivated")

_ADD = ", ".join(f"{c} = campaign_stats.{c} + excluded.{c}" for c in CODE_TERMS)
_CODE_COLS = ", ".join(CODE_TERMS)
_DAY_ADD = (
    "redemptions = shop_day_stats.redemptions + excluded.redemptions, discount = shop_day_stats.discount + excluded.discount"
)


def _terms(row: str, sign: str = "") -> str:
    return ", ".join(f"{sign}({t.format(r=row)})" for t in CODE_TERMS.values())


# --- SQLite: row triggers ---------------------------------------------------------------------


# SQLite rows are moved with "add the row if missing, then UPDATE", not an upsert: a trigger whose
# body holds an ON CONFLICT ... DO UPDATE made every insert into `code` ~3x slower, even when its
# WHEN clause skipped it (measured with bench/generate.py); two plain statements cost a fraction.
_SQLITE_KEY = "campaign_id = {r}.campaign_id AND batch_key = COALESCE({r}.batch_id, 0)"


def _sqlite_move(row: str, amounts: list[str]) -> str:
    """Add `amounts` (one SQL expression per counter of CODE_TERMS) to the row's (campaign, batch)."""
    key = _SQLITE_KEY.format(r=row)
    sets = ", ".join(f"{c} = {c} + ({a})" for c, a in zip(CODE_TERMS, amounts, strict=True))
    return (
        f"INSERT INTO campaign_stats (shop_id, campaign_id, batch_key) "
        f"SELECT {row}.shop_id, {row}.campaign_id, COALESCE({row}.batch_id, 0) "
        f"WHERE NOT EXISTS (SELECT 1 FROM campaign_stats WHERE {key}); "
        f"UPDATE campaign_stats SET {sets} WHERE {key};"
    )


def _sqlite_code_upsert(row: str, sign: str) -> str:
    return _sqlite_move(row, [f"{sign}({t.format(r=row)})" for t in CODE_TERMS.values()])


def _sqlite_delta_upsert() -> str:
    """Move the counters from the old row to the new one (same campaign and batch)."""
    return _sqlite_move("NEW", [f"({t.format(r='NEW')}) - ({t.format(r='OLD')})" for t in CODE_TERMS.values()])


def _changed(columns: tuple[str, ...]) -> str:
    return " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in columns)


_SAME_KEY = "OLD.campaign_id IS NEW.campaign_id AND OLD.batch_id IS NEW.batch_id"


def _sqlite_day(row: str, sign: str) -> str:
    return (
        "INSERT INTO shop_day_stats (shop_id, day, redemptions, discount) "
        f"SELECT {row}.shop_id, date({row}.created_at), {sign}1, {sign}{row}.amount WHERE {row}.status = 'active' "
        f"ON CONFLICT (shop_id, day) DO UPDATE SET {_DAY_ADD};"
    )


def _sqlite_redemption_stats(row: str, rolled_back: str, with_last: bool) -> str:
    last = f"{row}.created_at" if with_last else "NULL"
    set_last = (
        ", last_redemption_at = MAX(COALESCE(campaign_stats.last_redemption_at, excluded.last_redemption_at), "
        "COALESCE(excluded.last_redemption_at, campaign_stats.last_redemption_at))"
    )
    return (
        "INSERT INTO campaign_stats (shop_id, campaign_id, batch_key, rolled_back, last_redemption_at) "
        f"SELECT {row}.shop_id, {row}.campaign_id, COALESCE({row}.batch_id, 0), {rolled_back}, {last} "
        f"WHERE {row}.campaign_id IS NOT NULL "
        "ON CONFLICT (campaign_id, batch_key) DO UPDATE SET "
        f"rolled_back = campaign_stats.rolled_back + excluded.rolled_back{set_last};"
    )


def _rb(row: str) -> str:
    return f"CASE WHEN {row}.status = 'rolled_back' THEN 1 ELSE 0 END"


# codes a bulk insert counts itself are skipped (see pause_insert_trigger)
BULK_WHEN = "WHEN NOT EXISTS (SELECT 1 FROM code_bulk_insert WHERE batch_id = NEW.batch_id)"

SQLITE_DDL = (
    f"CREATE TRIGGER IF NOT EXISTS stats_code_insert AFTER INSERT ON code {BULK_WHEN} BEGIN {_sqlite_code_upsert('NEW', '')} END",
    f"CREATE TRIGGER IF NOT EXISTS stats_code_update AFTER UPDATE ON code WHEN ({_changed(CODE_COLUMNS)}) AND {_SAME_KEY} "
    f"BEGIN {_sqlite_delta_upsert()} END",
    f"CREATE TRIGGER IF NOT EXISTS stats_code_move AFTER UPDATE ON code WHEN NOT ({_SAME_KEY}) "
    f"BEGIN {_sqlite_code_upsert('OLD', '-')} {_sqlite_code_upsert('NEW', '')} END",
    f"CREATE TRIGGER IF NOT EXISTS stats_code_delete AFTER DELETE ON code BEGIN {_sqlite_code_upsert('OLD', '-')} END",
    "CREATE TRIGGER IF NOT EXISTS stats_redemption_insert AFTER INSERT ON redemption BEGIN "
    f"{_sqlite_day('NEW', '')} {_sqlite_redemption_stats('NEW', _rb('NEW'), True)} END",
    "CREATE TRIGGER IF NOT EXISTS stats_redemption_update AFTER UPDATE ON redemption WHEN "
    f"({_changed(('status', 'amount', 'created_at', 'shop_id', 'campaign_id', 'batch_id'))}) BEGIN "
    f"{_sqlite_day('OLD', '-')} {_sqlite_day('NEW', '')} "
    f"{_sqlite_redemption_stats('OLD', '-' + _rb('OLD'), False)} {_sqlite_redemption_stats('NEW', _rb('NEW'), False)} END",
    "CREATE TRIGGER IF NOT EXISTS stats_redemption_delete AFTER DELETE ON redemption BEGIN "
    f"{_sqlite_day('OLD', '-')} {_sqlite_redemption_stats('OLD', '-' + _rb('OLD'), False)} END",
)

# --- SQLite: bulk inserts counted once per chunk --------------------------------------------

# The counted columns of a generated code, as plugin.store.bulk writes every one of them.
GENERATED_CODE: dict[str, object] = {"status": "active", "uses": 0, "recipient": None, "sync_status": "pending"}


def pause_insert_trigger(cursor: Any, batch_id: int) -> None:
    """Keep stats_code_insert off the codes of `batch_id` inserted next in this transaction, so
    a bulk insert counts them once with `count_inserted` (SQLite; the caller's transaction, so the
    mark is seen by no other connection and vanishes with a rollback). Call `resume_insert_trigger`
    before any other write of that batch's codes."""
    cursor.execute("INSERT INTO code_bulk_insert (batch_id) VALUES (?)", (int(batch_id),))


def resume_insert_trigger(cursor: Any, batch_id: int) -> None:
    cursor.execute("DELETE FROM code_bulk_insert WHERE batch_id = ?", (int(batch_id),))


def count_inserted(cursor: Any, *, shop_id: int, campaign_id: int, batch_id: int, inserted: int, row: dict[str, object]) -> None:
    """Add `inserted` codes alike (`row`: the values of their counted columns) to the counters:
    CODE_TERMS of that one row times `inserted`, in one upsert (SQLite)."""
    if inserted <= 0:
        return
    columns = ("status", "uses", "recipient", "sync_status")
    one = ", ".join(f"? AS {c}" for c in columns)
    amounts = ", ".join(f"? * ({t.format(r='r')})" for t in CODE_TERMS.values())
    cursor.execute(
        f"INSERT INTO campaign_stats (shop_id, campaign_id, batch_key, {_CODE_COLS}) "
        f"SELECT ?, ?, ?, {amounts} FROM (SELECT {one}) AS r WHERE 1 "
        f"ON CONFLICT (campaign_id, batch_key) DO UPDATE SET {_ADD}",
        (int(shop_id), int(campaign_id), int(batch_id), *([int(inserted)] * len(CODE_TERMS)), *(row[c] for c in columns)),
    )


# --- PostgreSQL: statement triggers over transition tables -----------------------------------


def _pg_code_sum(parts: list[str]) -> str:
    sums = ", ".join(f"SUM({c})" for c in CODE_TERMS)
    nonzero = " OR ".join(f"SUM({c}) <> 0" for c in CODE_TERMS)
    return (
        f"INSERT INTO campaign_stats (shop_id, campaign_id, batch_key, {_CODE_COLS}) "
        f"SELECT shop_id, campaign_id, batch_key, {sums} FROM ({' UNION ALL '.join(parts)}) AS d "
        f"GROUP BY shop_id, campaign_id, batch_key HAVING {nonzero} ORDER BY campaign_id, batch_key "
        f"ON CONFLICT (campaign_id, batch_key) DO UPDATE SET {_ADD};"
    )


def _pg_code_part(table: str, sign: str) -> str:
    cols = ", ".join(f"{sign}({t.format(r='r')}) AS {c}" for c, t in CODE_TERMS.items())
    return f"SELECT r.shop_id, r.campaign_id, COALESCE(r.batch_id, 0) AS batch_key, {cols} FROM {table} AS r"


_PG_UPDATE_PARTS = [
    # only rows whose counted columns changed (a sync push's synced_at, platform_id move nothing)
    _pg_code_part("old_rows", "-").replace(
        "FROM old_rows AS r",
        "FROM old_rows AS r JOIN new_rows AS n ON n.id = r.id WHERE "
        + " OR ".join(f"n.{c} IS DISTINCT FROM r.{c}" for c in CODE_COLUMNS),
    ),
    _pg_code_part("new_rows", "").replace(
        "FROM new_rows AS r",
        "FROM new_rows AS r JOIN old_rows AS o ON o.id = r.id WHERE "
        + " OR ".join(f"o.{c} IS DISTINCT FROM r.{c}" for c in CODE_COLUMNS),
    ),
]


def _pg_day_part(table: str, sign: str) -> str:
    return (
        f"SELECT r.shop_id, (r.created_at AT TIME ZONE 'UTC')::date AS day, {sign}1 AS n, {sign}r.amount AS amount "
        f"FROM {table} AS r WHERE r.status = 'active'"
    )


def _pg_day_sum(parts: list[str]) -> str:
    return (
        "INSERT INTO shop_day_stats (shop_id, day, redemptions, discount) "
        f"SELECT shop_id, day, SUM(n), SUM(amount) FROM ({' UNION ALL '.join(parts)}) AS d "
        "GROUP BY shop_id, day HAVING SUM(n) <> 0 OR SUM(amount) <> 0 ORDER BY shop_id, day "
        f"ON CONFLICT (shop_id, day) DO UPDATE SET {_DAY_ADD};"
    )


def _pg_rb_part(table: str, sign: str, with_last: bool) -> str:
    last = "r.created_at" if with_last else "NULL::timestamptz"
    return (
        f"SELECT r.shop_id, r.campaign_id, COALESCE(r.batch_id, 0) AS batch_key, "
        f"{sign}(CASE WHEN r.status = 'rolled_back' THEN 1 ELSE 0 END) AS rb, {last} AS last_at "
        f"FROM {table} AS r WHERE r.campaign_id IS NOT NULL"
    )


def _pg_rb_sum(parts: list[str]) -> str:
    return (
        "INSERT INTO campaign_stats (shop_id, campaign_id, batch_key, rolled_back, last_redemption_at) "
        f"SELECT shop_id, campaign_id, batch_key, SUM(rb), MAX(last_at) FROM ({' UNION ALL '.join(parts)}) AS d "
        "GROUP BY shop_id, campaign_id, batch_key HAVING SUM(rb) <> 0 OR MAX(last_at) IS NOT NULL "
        "ORDER BY campaign_id, batch_key "
        "ON CONFLICT (campaign_id, batch_key) DO UPDATE SET rolled_back = campaign_stats.rolled_back + excluded.rolled_back, "
        "last_redemption_at = GREATEST(campaign_stats.last_redemption_at, excluded.last_redemption_at);"
    )


_PG_CODE_FN = f"""
CREATE OR REPLACE FUNCTION couponry_code_stats() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_pg_code_sum([_pg_code_part("new_rows", "")])}
  ELSIF TG_OP = 'UPDATE' THEN
    {_pg_code_sum(_PG_UPDATE_PARTS)}
  ELSE
    {_pg_code_sum([_pg_code_part("old_rows", "-")])}
  END IF;
  RETURN NULL;
END $$"""

_PG_REDEMPTION_FN = f"""
CREATE OR REPLACE FUNCTION couponry_redemption_stats() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_pg_day_sum([_pg_day_part("new_rows", "")])}
    {_pg_rb_sum([_pg_rb_part("new_rows", "", True)])}
  ELSIF TG_OP = 'UPDATE' THEN
    {_pg_day_sum([_pg_day_part("old_rows", "-"), _pg_day_part("new_rows", "")])}
    {_pg_rb_sum([_pg_rb_part("old_rows", "-", False), _pg_rb_part("new_rows", "", False)])}
  ELSE
    {_pg_day_sum([_pg_day_part("old_rows", "-")])}
    {_pg_rb_sum([_pg_rb_part("old_rows", "-", False)])}
  END IF;
  RETURN NULL;
END $$"""


def _pg_triggers(table: str, fn: str) -> list[str]:
    out = []
    for op, refs in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
    ):
        name = f"stats_{table}_{op.lower()}"
        out.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        out.append(f"CREATE TRIGGER {name} AFTER {op} ON {table} REFERENCING {refs} FOR EACH STATEMENT EXECUTE FUNCTION {fn}()")
    return out


POSTGRES_DDL = (
    _PG_CODE_FN,
    _PG_REDEMPTION_FN,
    *_pg_triggers("code", "couponry_code_stats"),
    *_pg_triggers("redemption", "couponry_redemption_stats"),
)


def install(conn: Connection) -> None:
    """Create the triggers (idempotent) on the connection's dialect."""
    for ddl in POSTGRES_DDL if conn.dialect.name == "postgresql" else SQLITE_DDL:
        conn.exec_driver_sql(ddl)


# --- rebuild ----------------------------------------------------------------------------------


def _recount_sql(dialect: str, scoped: bool) -> tuple[str, str, str]:
    where = "WHERE shop_id = :shop" if scoped else ""
    and_shop = "AND shop_id = :shop" if scoped else ""
    sums = ", ".join(f"SUM({t.format(r='c')})" for t in CODE_TERMS.values())
    codes = (
        f"INSERT INTO campaign_stats (shop_id, campaign_id, batch_key, {_CODE_COLS}) "
        f"SELECT c.shop_id, c.campaign_id, COALESCE(c.batch_id, 0), {sums} "
        f"FROM code AS c {where.replace('shop_id', 'c.shop_id')} "
        "GROUP BY c.shop_id, c.campaign_id, COALESCE(c.batch_id, 0)"
    )
    redemptions = (
        "INSERT INTO campaign_stats (shop_id, campaign_id, batch_key, rolled_back, last_redemption_at) "
        "SELECT shop_id, campaign_id, COALESCE(batch_id, 0), "
        "SUM(CASE WHEN status = 'rolled_back' THEN 1 ELSE 0 END), MAX(created_at) "
        f"FROM redemption WHERE campaign_id IS NOT NULL {and_shop} GROUP BY shop_id, campaign_id, COALESCE(batch_id, 0) "
        "ON CONFLICT (campaign_id, batch_key) DO UPDATE SET rolled_back = excluded.rolled_back, "
        "last_redemption_at = excluded.last_redemption_at"
    )
    day = "(created_at AT TIME ZONE 'UTC')::date" if dialect == "postgresql" else "date(created_at)"
    days = (
        "INSERT INTO shop_day_stats (shop_id, day, redemptions, discount) "
        f"SELECT shop_id, {day}, COUNT(*), SUM(amount) FROM redemption WHERE status = 'active' {and_shop} "
        f"GROUP BY shop_id, {day}"
    )
    return codes, redemptions, days


def rebuild(conn: Connection, *, shop_id: int | None = None) -> None:
    """Recompute the counters of one shop (or all) from the rows, in the caller's transaction.

    On PostgreSQL the code and redemption tables are locked against writes (SHARE mode: reads
    go on) until the transaction ends, so no write lands between the delete and the recount."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.exec_driver_sql("LOCK TABLE code, redemption IN SHARE MODE")
    params = {"shop": shop_id} if shop_id is not None else {}
    where = " WHERE shop_id = :shop" if shop_id is not None else ""
    conn.execute(text(f"DELETE FROM campaign_stats{where}"), params)
    conn.execute(text(f"DELETE FROM shop_day_stats{where}"), params)
    for sql in _recount_sql(dialect, shop_id is not None):
        conn.execute(text(sql), params)
