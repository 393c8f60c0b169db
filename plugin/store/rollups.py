"""Results rollups kept with the writes: what campaigns earned per day in the shop's time zone.

Two tables, moved by row triggers in the same transaction as the rows they describe (every write
path keeps them exact, as plugin.store.counters does for the admin's counters):

- ``result_day``: per shop, campaign, day of the redemption in the shop's time zone, channel,
  partner, batch, distribution provider and currency: redemptions still active, rolled back,
  flagged (every flagged use, rolled back or not), and of the active ones the revenue (subtotal
  minus what refunds took back) and the discount;
- ``assign_day``: per shop, campaign, day of the assignment, partner, batch and provider: the
  codes with a recipient.

A code's distribution provider is the provider of its coupon pool, else the provider of its first
recipient delivery, else ``''``; a delivery recorded later moves the code's figures to its provider.

Days: the triggers read ``shop.timezone``; PostgreSQL converts with ``AT TIME ZONE``, SQLite calls
``couponry_local_day``, a Python function every connection registers (plugin.store.db), so a
connection without it (a bare ``sqlite3`` shell) cannot write redemptions or assignments.
Changing a shop's time zone moves its days: plugin.shops.timezones rebuilds its rollups in the
same transaction (`rebuild`; `couponry admin recount` rebuilds them too).

``redemption.wait_seconds`` (assignment to redemption) and ``redemption.provider`` (its code's
provider, by the rule above) are set when the row is written, for the medians (read in index
order, plugin.campaigns.results). The row's provider is the key its result_day figures are filed
under (so a group's count there is the number of rows in its index range), and it moves with them:
the triggers that move a code's figures to another provider set its redemptions' provider too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, text

# --- SQLite's day function ------------------------------------------------------------------


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_day(stored: str | None, zone: str | None) -> str | None:
    """The calendar day in `zone` of an instant stored the way UtcDateTime stores it on SQLite."""
    if stored is None:
        return None
    moment = datetime.fromisoformat(stored).replace(tzinfo=UTC)
    return moment.astimezone(_zone(zone or "UTC")).date().isoformat()


def register_sqlite(dbapi_connection: Any) -> None:
    dbapi_connection.create_function("couponry_local_day", 2, local_day, deterministic=True)


# --- the SQL both dialects share --------------------------------------------------------------

RESULT_KEY = ("shop_id", "campaign_id", "day", "channel", "partner_key", "batch_key", "provider", "currency")
# waited: active redemptions with a wait (their code had a recipient), the median's count
# gross: subtotal - refunded of active redemptions, the "revenue" partners' totals have always said
RESULT_COUNTERS = ("redeemed", "rolled_back", "flagged", "revenue", "discount", "waited", "gross")
ASSIGN_KEY = ("shop_id", "campaign_id", "day", "partner_key", "batch_key", "provider")


def _day(dialect: str, moment: str, row: str) -> str:
    zone = f"(SELECT s.timezone FROM shop AS s WHERE s.id = {row}.shop_id)"
    if dialect == "postgresql":
        # a row whose shop row is missing counts in UTC, as couponry_local_day does on SQLite
        # (AT TIME ZONE NULL is NULL, refused by the rollups' day)
        return f"(({moment}) AT TIME ZONE COALESCE({zone}, 'UTC'))::date"
    return f"couponry_local_day({moment}, {zone})"


def _pool_provider(pool_id: str) -> str:
    return f"(SELECT p.provider FROM coupon_pool AS p WHERE p.id = {pool_id})"


def _first_delivery(code_id: str) -> str:
    return f"(SELECT d.provider FROM recipientdelivery AS d WHERE d.code_id = {code_id} ORDER BY d.id LIMIT 1)"


def code_provider(code_row: str) -> str:
    """The provider of a code row (alias `code_row`)."""
    return f"COALESCE({_pool_provider(f'{code_row}.pool_id')}, {_first_delivery(f'{code_row}.id')}, '')"


def _redemption_provider(row: str) -> str:
    """The provider of a redemption row's code: what the row stores (set when it is written)."""
    pool = f"(SELECT c.pool_id FROM code AS c WHERE c.id = {row}.code_id)"
    return f"COALESCE({_pool_provider(pool)}, {_first_delivery(f'{row}.code_id')}, '')"


def _result_terms(row: str, sign: str) -> list[str]:
    active = f"{row}.status = 'active'"
    return [
        f"{sign}(CASE WHEN {active} THEN 1 ELSE 0 END)",
        f"{sign}(CASE WHEN {row}.status = 'rolled_back' THEN 1 ELSE 0 END)",
        f"{sign}(CASE WHEN {row}.flagged_reason IS NOT NULL THEN 1 ELSE 0 END)",
        # revenue: the order's subtotal after all discounts (as the platform stated it, else the
        # subtotal less this code's discount), less what refunds took back
        f"{sign}(CASE WHEN {active} THEN COALESCE({row}.revenue, {row}.subtotal - {row}.amount) - {row}.refunded ELSE 0 END)",
        f"{sign}(CASE WHEN {active} THEN {row}.amount ELSE 0 END)",
        f"{sign}(CASE WHEN {active} AND {row}.wait_seconds IS NOT NULL THEN 1 ELSE 0 END)",
        f"{sign}(CASE WHEN {active} THEN {row}.subtotal - {row}.refunded ELSE 0 END)",
    ]


def _result_keys(dialect: str, row: str, provider: str | None = None) -> list[str]:
    return [
        f"{row}.shop_id",
        f"{row}.campaign_id",
        _day(dialect, f"{row}.created_at", row),
        f"COALESCE({row}.channel, '')",
        f"COALESCE({row}.partner_id, 0)",
        f"COALESCE({row}.batch_id, 0)",
        provider if provider is not None else f"{row}.provider",
        f"{row}.currency",
    ]


_RESULT_ADD = ", ".join(f"{c} = result_day.{c} + excluded.{c}" for c in RESULT_COUNTERS)


def _result_upsert(keys: list[str], terms: list[str], source: str, where: str, grouped: bool) -> str:
    values = [f"SUM({t})" for t in terms] if grouped else terms
    # by position: a key may be a constant (a provider named in a move), which PostgreSQL refuses to group by
    group = f" GROUP BY {', '.join(str(i) for i in range(1, len(keys) + 1))}" if grouped else ""
    return (
        f"INSERT INTO result_day ({', '.join(RESULT_KEY)}, {', '.join(RESULT_COUNTERS)}) "
        f"SELECT {', '.join(keys)}, {', '.join(values)} {source} WHERE {where}{group} "
        f"ON CONFLICT ({', '.join(RESULT_KEY)}) DO UPDATE SET {_RESULT_ADD};"
    )


def _redemption_row(dialect: str, row: str, sign: str) -> str:
    return _result_upsert(_result_keys(dialect, row), _result_terms(row, sign), "", f"{row}.campaign_id IS NOT NULL", False)


def _move_code_redemptions(dialect: str, code_id: str, new_provider: str, gate: str = "") -> str:
    """Move the redemptions of one code to another provider (a delivery or pool named it): their
    figures from the provider each row stores to the new one, then the rows' provider. `gate`: a
    condition on the trigger's row alone (SQLite tests it once, before reading any row)."""
    source = "FROM redemption AS r"
    gated = f"{gate} AND " if gate else ""
    where = f"{gated}r.code_id = {code_id} AND r.provider <> ({new_provider})"
    counted = f"{where} AND r.campaign_id IS NOT NULL"
    return (
        _result_upsert(_result_keys(dialect, "r"), _result_terms("r", "-"), source, counted, True)
        + _result_upsert(_result_keys(dialect, "r", new_provider), _result_terms("r", ""), source, counted, True)
        # (no alias: SQLite takes none in a trigger's UPDATE)
        + f" UPDATE redemption SET provider = ({new_provider}) WHERE {gated}code_id = {code_id} AND provider <> ({new_provider});"
    )


def _assign_keys(dialect: str, row: str, provider: str | None = None) -> list[str]:
    return [
        f"{row}.shop_id",
        f"{row}.campaign_id",
        _day(dialect, f"COALESCE({row}.assigned_at, {row}.created_at)", row),
        f"COALESCE({row}.partner_id, 0)",
        f"COALESCE({row}.batch_id, 0)",
        provider if provider is not None else code_provider(row),
    ]


def _assign_move(dialect: str, row: str, sign: str, source: str = "", where: str = "", provider: str | None = None) -> str:
    """Add `sign`1 to the assign_day row of a code with a recipient. SQLite: "add the row if missing,
    then UPDATE" (an upsert in a trigger on `code` slowed every insert, see plugin.store.counters)."""
    keys = _assign_keys(dialect, row, provider)
    cond = f"{row}.recipient IS NOT NULL" + (f" AND {where}" if where else "")
    if dialect == "postgresql":
        return (
            f"INSERT INTO assign_day ({', '.join(ASSIGN_KEY)}, assigned) SELECT {', '.join(keys)}, {sign}1 {source} "
            f"WHERE {cond} ON CONFLICT ({', '.join(ASSIGN_KEY)}) "
            "DO UPDATE SET assigned = assign_day.assigned + excluded.assigned;"
        )
    match = " AND ".join(f"a.{k} = {v}" for k, v in zip(ASSIGN_KEY, keys, strict=True))
    return (
        f"INSERT INTO assign_day ({', '.join(ASSIGN_KEY)}) SELECT {', '.join(keys)} {source} "
        f"WHERE {cond} AND NOT EXISTS (SELECT 1 FROM assign_day AS a WHERE {match}); "
        f"UPDATE assign_day SET assigned = assigned + ({sign}1) "
        f"WHERE ({', '.join(ASSIGN_KEY)}) = (SELECT {', '.join(keys)} {source} WHERE {cond});"
    )


_REDEMPTION_CHANGES = (
    "status",
    "amount",
    "subtotal",
    "revenue",
    "refunded",
    "flagged_reason",
    "created_at",
    "channel",
    "partner_id",
    "batch_id",
    "campaign_id",
    "currency",
    "code_id",
    "shop_id",
)
_CODE_CHANGES = ("recipient", "assigned_at", "partner_id", "batch_id", "campaign_id", "pool_id", "shop_id")


def _changed(dialect: str, columns: tuple[str, ...]) -> str:
    op = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return " OR ".join(f"OLD.{c} {op} NEW.{c}" for c in columns)


def _wait(dialect: str) -> str:
    if dialect == "postgresql":
        return "round(EXTRACT(EPOCH FROM (NEW.created_at - c.assigned_at)))::bigint"
    return "CAST(round((julianday(NEW.created_at) - julianday(c.assigned_at)) * 86400) AS INTEGER)"


def _wait_query(dialect: str) -> str:
    return f"(SELECT {_wait(dialect)} FROM code AS c WHERE c.id = NEW.code_id AND c.recipient IS NOT NULL)"


def _delivery_body(dialect: str) -> str:
    """A code's first delivery names its provider, unless a pool did: move its figures from ''."""
    code, which = "FROM code AS c", "c.id = NEW.code_id"
    return (
        _assign_move(dialect, "c", "-", code, which, "''")
        + " "
        + _assign_move(dialect, "c", "", code, which, "NEW.provider")
        + " "
        + _move_code_redemptions(dialect, "NEW.code_id", "NEW.provider")
    )


_DELIVERY_WHEN = (
    "NEW.provider <> '' AND NOT EXISTS (SELECT 1 FROM recipientdelivery AS o WHERE o.code_id = NEW.code_id AND o.id < NEW.id) "
    "AND NOT EXISTS (SELECT 1 FROM code AS c JOIN coupon_pool AS p ON p.id = c.pool_id WHERE c.id = NEW.code_id)"
)


def _code_update_body(dialect: str) -> str:
    # a code's provider changes here only with its pool (its deliveries are another trigger's):
    # an assignment or a partner change leaves its redemptions where they are, unread
    pool_changed = f"OLD.pool_id {'IS DISTINCT FROM' if dialect == 'postgresql' else 'IS NOT'} NEW.pool_id"
    assigned = f"{_assign_move(dialect, 'OLD', '-')} {_assign_move(dialect, 'NEW', '')}"
    if dialect == "postgresql":
        return f"{assigned} IF {pool_changed} THEN {_move_code_redemptions(dialect, 'NEW.id', code_provider('NEW'))} END IF;"
    return f"{assigned} {_move_code_redemptions(dialect, 'NEW.id', code_provider('NEW'), pool_changed)}"


_THIS_ROW = "r.id = NEW.id AND r.campaign_id IS NOT NULL"


def _sqlite_ddl() -> list[str]:
    d = "sqlite"
    return [
        # the row as the UPDATE left it (NEW still holds no wait)
        "CREATE TRIGGER IF NOT EXISTS results_redemption_insert AFTER INSERT ON redemption BEGIN "
        f"UPDATE redemption SET wait_seconds = {_wait_query(d)}, local_day = {_day(d, 'NEW.created_at', 'NEW')}, "
        f"provider = {_redemption_provider('NEW')} WHERE id = NEW.id; "
        f"{_result_upsert(_result_keys(d, 'r'), _result_terms('r', ''), 'FROM redemption AS r', _THIS_ROW, False)} END",
        f"CREATE TRIGGER IF NOT EXISTS results_redemption_update AFTER UPDATE ON redemption WHEN "
        f"{_changed(d, _REDEMPTION_CHANGES)} BEGIN {_redemption_row(d, 'OLD', '-')} {_redemption_row(d, 'NEW', '')} END",
        "CREATE TRIGGER IF NOT EXISTS results_redemption_delete AFTER DELETE ON redemption "
        f"BEGIN {_redemption_row(d, 'OLD', '-')} END",
        _sqlite_code_insert_trigger(),
        f"CREATE TRIGGER IF NOT EXISTS results_code_update AFTER UPDATE OF {', '.join(_CODE_CHANGES)} ON code "
        f"WHEN {_changed(d, _CODE_CHANGES)} BEGIN {_code_update_body(d)} END",
        "CREATE TRIGGER IF NOT EXISTS results_code_delete AFTER DELETE ON code WHEN OLD.recipient IS NOT NULL "
        f"BEGIN {_assign_move(d, 'OLD', '-')} END",
        f"CREATE TRIGGER IF NOT EXISTS results_delivery_insert AFTER INSERT ON recipientdelivery WHEN {_DELIVERY_WHEN} "
        f"BEGIN {_delivery_body(d)} END",
    ]


def _sqlite_code_insert_trigger() -> str:
    return (
        "CREATE TRIGGER IF NOT EXISTS results_code_insert AFTER INSERT ON code WHEN NEW.recipient IS NOT NULL "
        f"BEGIN {_assign_move('sqlite', 'NEW', '')} END"
    )


def pause_code_insert_trigger(cursor: Any) -> None:
    """Take results_code_insert off for a bulk insert of codes without a recipient (SQLite, in the
    caller's transaction; `resume_code_insert_trigger` before it ends). SQLite runs a row
    trigger's WHEN inside a frame sized for its whole body, so this trigger, whose body never runs
    for a code without a recipient, still made each generated code ~3x slower to insert
    (bench/generate.py, 100k codes: ~55k codes/s with it, ~130-165k without). The DDL is part of
    the transaction: a rollback restores the trigger, and no other connection can write meanwhile."""
    cursor.execute("DROP TRIGGER IF EXISTS results_code_insert")


def resume_code_insert_trigger(cursor: Any) -> None:
    cursor.execute(_sqlite_code_insert_trigger())


def _pg_function(name: str, body: str, returns: str = "NULL") -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n  {body}\n  RETURN {returns};\nEND $$"
    )


def _pg_trigger(name: str, timing: str, table: str, when: str, fn: str) -> list[str]:
    when_sql = f" WHEN ({when})" if when else ""
    return [
        f"DROP TRIGGER IF EXISTS {name} ON {table}",
        f"CREATE TRIGGER {name} {timing} ON {table} FOR EACH ROW{when_sql} EXECUTE FUNCTION {fn}()",
    ]


def _pg_ddl() -> list[str]:
    d = "postgresql"
    return [
        _pg_function(
            "couponry_redemption_wait",
            f"NEW.wait_seconds := {_wait_query(d)}; NEW.local_day := {_day(d, 'NEW.created_at', 'NEW')}; "
            f"NEW.provider := {_redemption_provider('NEW')};",
            "NEW",
        ),
        _pg_function("couponry_results_redemption_insert", _redemption_row(d, "NEW", "")),
        _pg_function("couponry_results_redemption_update", f"{_redemption_row(d, 'OLD', '-')} {_redemption_row(d, 'NEW', '')}"),
        _pg_function("couponry_results_redemption_delete", _redemption_row(d, "OLD", "-")),
        _pg_function("couponry_results_code_insert", _assign_move(d, "NEW", "")),
        _pg_function("couponry_results_code_update", _code_update_body(d)),
        _pg_function("couponry_results_code_delete", _assign_move(d, "OLD", "-")),
        # PostgreSQL refuses subqueries in a trigger's WHEN: the function tests them
        _pg_function("couponry_results_delivery_insert", f"IF {_DELIVERY_WHEN} THEN {_delivery_body(d)} END IF;"),
        *_pg_trigger("results_redemption_wait", "BEFORE INSERT", "redemption", "", "couponry_redemption_wait"),
        *_pg_trigger("results_redemption_insert", "AFTER INSERT", "redemption", "", "couponry_results_redemption_insert"),
        *_pg_trigger(
            "results_redemption_update",
            "AFTER UPDATE",
            "redemption",
            _changed(d, _REDEMPTION_CHANGES),
            "couponry_results_redemption_update",
        ),
        *_pg_trigger("results_redemption_delete", "AFTER DELETE", "redemption", "", "couponry_results_redemption_delete"),
        *_pg_trigger("results_code_insert", "AFTER INSERT", "code", "NEW.recipient IS NOT NULL", "couponry_results_code_insert"),
        *_pg_trigger(
            "results_code_update",
            f"AFTER UPDATE OF {', '.join(_CODE_CHANGES)}",
            "code",
            _changed(d, _CODE_CHANGES),
            "couponry_results_code_update",
        ),
        *_pg_trigger("results_code_delete", "AFTER DELETE", "code", "OLD.recipient IS NOT NULL", "couponry_results_code_delete"),
        *_pg_trigger(
            "results_delivery_insert",
            "AFTER INSERT",
            "recipientdelivery",
            "NEW.provider <> ''",
            "couponry_results_delivery_insert",
        ),
    ]


def install(conn: Connection) -> None:
    """Create the triggers (idempotent) on the connection's dialect."""
    for ddl in _pg_ddl() if conn.dialect.name == "postgresql" else _sqlite_ddl():
        conn.exec_driver_sql(ddl)


def rebuild(conn: Connection, *, shop_id: int | None = None) -> None:
    """Recompute the rollups of one shop (or all) from the rows, in the caller's transaction (the
    days in each shop's current time zone; on PostgreSQL writes to the rows wait until it ends)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.exec_driver_sql("LOCK TABLE code, redemption, recipientdelivery IN SHARE MODE")
    params = {"shop": shop_id} if shop_id is not None else {}
    scope = " AND {a}.shop_id = :shop" if shop_id is not None else ""
    # the rows' local days move with the zone (only where they differ: a rebuild after no change writes none)
    day = _day(dialect, "redemption.created_at", "redemption")
    conn.execute(
        text(
            f"UPDATE redemption SET local_day = {day} WHERE (local_day IS NULL OR local_day <> {day})"
            + (" AND shop_id = :shop" if shop_id is not None else "")
        ),
        params,
    )
    # and their provider, the key of their figures below (only where it differs, as above)
    provider = _redemption_provider("redemption")
    conn.execute(
        text(
            f"UPDATE redemption SET provider = {provider} WHERE (provider IS NULL OR provider <> {provider})"
            + (" AND shop_id = :shop" if shop_id is not None else "")
        ),
        params,
    )
    for table in ("result_day", "assign_day"):
        conn.execute(text(f"DELETE FROM {table}" + (" WHERE shop_id = :shop" if shop_id is not None else "")), params)
    keys = _result_keys(dialect, "r")
    conn.execute(
        text(
            _result_upsert(
                keys, _result_terms("r", ""), "FROM redemption AS r", "r.campaign_id IS NOT NULL" + scope.format(a="r"), True
            ).rstrip(";")
        ),
        params,
    )
    akeys = _assign_keys(dialect, "c")
    conn.execute(
        text(
            f"INSERT INTO assign_day ({', '.join(ASSIGN_KEY)}, assigned) SELECT {', '.join(akeys)}, COUNT(*) FROM code AS c "
            f"WHERE c.recipient IS NOT NULL{scope.format(a='c')} GROUP BY {', '.join(str(i) for i in range(1, len(akeys) + 1))}"
        ),
        params,
    )
