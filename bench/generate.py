"""Generation benchmark (run by hand): in memory, and generate-and-persist on SQLite and PostgreSQL.

    .venv/bin/python bench/generate.py [--count 1000000] [--postgres URL]

Each persisted figure is a ratio against a raw baseline measured in the same run on the same
database: plain sqlite3 executemany of the same strings into a table with the same unique
index, and psycopg COPY into such a table on PostgreSQL. Peak RSS is for the whole process.
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text
from sqlmodel import SQLModel

import plugin.store.models  # noqa: F401
from bench.generate_memory import bench_in_memory
from plugin.campaigns import issuing
from plugin.campaigns.campaigns import create_campaign
from plugin.formats import codes
from plugin.shops.shops import ensure_local_shop
from plugin.store import rollups
from plugin.store.db import make_engine, session_scope

FORMAT = {"length": 12}  # 58 bits: a million codes stay far from guessable
# the indexes of `code` a new code enters besides the unique (shop_id, code): what claims, the
# sync push and the admin read by (plugin.store.models)
CODE_INDEXES = ("ix_code_campaign_batch", "ix_code_campaign_id", "ix_code_pending", "ix_code_unassigned")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ours(url: str, count: int) -> float:
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    SQLModel.metadata.create_all(engine)
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, "bench.couponry.test")
        campaign = create_campaign(session, shop_id=shop.id or 0, name="bench", code_format=FORMAT)
    start = time.perf_counter()
    batch = issuing.generate_codes(engine, shop_id=shop.id or 0, campaign_id=campaign.id or 0, count=count)
    elapsed = time.perf_counter() - start
    assert batch.created == count
    engine.dispose()
    return count / elapsed


def _sqlite_same_table(path: str, strings: list[str], *, indexes: bool) -> float:
    """Raw sqlite3 executemany of the same strings into the real `code` table (a migrated
    database, the same pragmas as the app, the counters' row trigger paused as ours pauses it):
    the same rows and the same index upkeep with nothing of ours around them. Without
    `indexes`, only the unique (shop_id, code) index is kept: what those indexes cost."""
    from plugin.store.migrate import upgrade

    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, "bench.couponry.test")
        campaign = create_campaign(session, shop_id=shop.id or 0, name="bench", code_format=FORMAT)
        batch = issuing.start_batch(session, shop_id=shop.id or 0, campaign_id=campaign.id or 0, count=len(strings))
    ids = (shop.id or 0, campaign.id or 0, batch.id or 0)
    engine.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    rollups.register_sqlite(conn)  # the results triggers call it (plugin.store.rollups)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "cache_size=-65536"):
        conn.execute(f"PRAGMA {pragma}")
    if not indexes:
        for name in CODE_INDEXES:
            conn.execute(f"DROP INDEX {name}")
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.execute("INSERT INTO code_bulk_insert (batch_id) VALUES (?)", (ids[2],))
    conn.executemany(
        "INSERT INTO code (shop_id, campaign_id, batch_id, code, status, uses, sync_status, created_at)"
        f" VALUES ({ids[0]}, {ids[1]}, {ids[2]}, ?, 'active', 0, 'pending', '2026-01-01 00:00:00')",
        ((s,) for s in strings),
    )
    conn.execute("DELETE FROM code_bulk_insert WHERE batch_id = ?", (ids[2],))
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(strings) / elapsed


def _sqlite_baseline(path: str, strings: list[str]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, code TEXT NOT NULL)")
    conn.execute("CREATE UNIQUE INDEX raw_code ON raw (code)")
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO raw (code) VALUES (?)", ((s,) for s in strings))
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(strings) / elapsed


def _postgres_baseline(url: str, strings: list[str]) -> float:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS raw_bench")
        conn.execute('CREATE TABLE raw_bench (id BIGSERIAL PRIMARY KEY, code VARCHAR(64) COLLATE "C" NOT NULL UNIQUE)')
        conn.commit()
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY raw_bench (code) FROM STDIN") as copy:
            for s in strings:
                copy.write_row((s,))
        conn.commit()
        elapsed = time.perf_counter() - start
        conn.execute("DROP TABLE raw_bench")
        conn.commit()
    return len(strings) / elapsed


def _postgres_same_table(url: str, strings: list[str]) -> float:
    """psycopg COPY of the same strings into the real `code` table of a migrated schema (its
    indexes, the counters' statement triggers): the same rows with nothing of ours around them."""
    import psycopg

    from plugin.store.migrate import upgrade

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, "bench.couponry.test")
        campaign = create_campaign(session, shop_id=shop.id or 0, name="bench", code_format=FORMAT)
        batch = issuing.start_batch(session, shop_id=shop.id or 0, campaign_id=campaign.id or 0, count=len(strings))
    ids = (shop.id or 0, campaign.id or 0, batch.id or 0)
    engine.dispose()
    columns = "code (shop_id, campaign_id, batch_id, code, status, uses, sync_status, created_at)"
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY {columns} FROM STDIN") as copy:
            for s in strings:
                copy.write_row((*ids, s, "active", 0, "pending", "2026-01-01T00:00:00+00:00"))
        conn.commit()
        elapsed = time.perf_counter() - start
    return len(strings) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--postgres", default=os.environ.get("COUPONRY_BENCH_POSTGRES"))
    args = parser.parse_args()
    count = args.count

    # Ours first, so the peak RSS it reports is the generator's, not the baselines' lists.
    with tempfile.TemporaryDirectory() as tmp:
        ours = _ours(f"sqlite:///{tmp}/ours.db", count)
        ours_pg = _ours(args.postgres, count) if args.postgres else None
        rss = _peak_rss_mb()
        strings = codes.generate(codes.CodeFormat.from_dict(FORMAT), count)
        raw = _sqlite_baseline(f"{tmp}/raw.db", strings)
        same = _sqlite_same_table(f"{tmp}/same.db", strings, indexes=True)
        bare = _sqlite_same_table(f"{tmp}/bare.db", strings, indexes=False)
    print(f"sqlite   : ours {ours:,.0f} codes/s, raw executemany {raw:,.0f} rows/s, ratio {ours / raw:.2f} (target >= 1.0)")
    print(f"           the same raw executemany into the real code table: {same:,.0f} rows/s (ours {ours / same:.2f}x); "
          f"without its {len(CODE_INDEXES)} read-path indexes {bare:,.0f} rows/s")  # fmt: skip
    if args.postgres and ours_pg is not None:
        raw_pg = _postgres_baseline(args.postgres, strings)
        same_pg = _postgres_same_table(args.postgres, strings)
        print(
            f"postgres : ours {ours_pg:,.0f} codes/s, raw COPY {raw_pg:,.0f} rows/s, ratio {ours_pg / raw_pg:.2f} (target >= 0.8)"
        )
        print(f"           the same raw COPY into the real code table: {same_pg:,.0f} rows/s (ours {ours_pg / same_pg:.2f}x)")
    print(f"peak RSS : {rss:.0f} MB generating and persisting {count:,} codes (target < 200 MB)")
    del strings
    memory = bench_in_memory(count)
    print(
        f"in memory: {memory['default_per_s']:,} codes/s default format, {memory['pattern_per_s']:,} pattern, "
        f"{memory['check_per_s']:,} with a check character; secrets.choice loop {memory['baseline_secrets_choice_per_s']:,} "
        f"(x{memory['default_vs_baseline']})"
    )


if __name__ == "__main__":
    main()
