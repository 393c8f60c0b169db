"""What emitting events costs the hot paths (run by hand):

    .venv/bin/python bench/events_emit.py [--redemptions 2000]

Records `--redemptions` API redemptions (plugin.checkout.redemptions.record_redemption, one
transaction each, SQLite file) three ways, in the same run: the shop has no endpoint (what
almost every shop pays: one cached lookup per event), one endpoint subscribed to another type,
and one endpoint subscribed to `redemption.created` (a message, a delivery and a job written
with each redemption). Also times `emit` alone for a shop without endpoints against a bare
dict lookup (the floor). Prints medians and ratios to the no-endpoint run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlmodel import SQLModel, col, select

import plugin.store.models  # noqa: F401
from plugin.campaigns import issuing
from plugin.campaigns.campaigns import create_campaign
from plugin.checkout.redemptions import record_redemption
from plugin.events import endpoints
from plugin.settings import Secret, Settings
from plugin.shops.shops import ensure_local_shop
from plugin.store import caches, eventlog
from plugin.store.db import make_engine, session_scope
from plugin.store.models import Code, utcnow

RULES = {"currency": "GBP", "discount": {"type": "percentage", "percent": "10"}}


def run(n: int, types: list[str] | None) -> float:
    """Median seconds per redemption."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        SQLModel.metadata.create_all(engine)
        settings = Settings(database_url=str(engine.url), secret_key=Secret("bench-secret-0123456789abcdef-0123456789"))
        with session_scope(engine) as session:
            shop_id = ensure_local_shop(session, "bench.example").id
            assert shop_id is not None
            campaign = create_campaign(session, shop_id=shop_id, name="Bench", code_format={"length": 10}, currency="GBP",
                                       rules=RULES)  # fmt: skip
            assert campaign.id is not None
            campaign_id = campaign.id
        issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=n)
        if types is not None:
            with session_scope(engine) as session:
                endpoints.create(session, settings, shop_id=shop_id, url="https://hooks.example.com/x", event_types=types,
                                 now=utcnow())  # fmt: skip
        caches.bump()
        with session_scope(engine) as session:
            codes = list(session.exec(select(Code.code).where(col(Code.campaign_id) == campaign_id)).all())
        times = []
        for i, code in enumerate(codes):
            started = time.perf_counter()
            with session_scope(engine) as session:
                record_redemption(session, shop_id=shop_id, code=code, order_id=f"o{i}", now=utcnow(), amount=100, subtotal=1000,
                                  currency="GBP", source="api")  # fmt: skip
            times.append(time.perf_counter() - started)
        engine.dispose()
        return statistics.median(times)


def emit_alone(n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        SQLModel.metadata.create_all(engine)
        with session_scope(engine) as session:
            conn, now = session.connection(), utcnow()
            eventlog.emit(conn, shop_id=1, type="redemption.created", data={}, now=now)  # fills the cache
            started = time.perf_counter()
            for _ in range(n):
                eventlog.emit(conn, shop_id=1, type="redemption.created", data={}, now=now)
            emit = (time.perf_counter() - started) / n
        floor_dict = {1: frozenset()}
        started = time.perf_counter()
        for _ in range(n):
            _ = "redemption.created" in floor_dict.get(1, frozenset())
        floor = (time.perf_counter() - started) / n
        engine.dispose()
        return emit, floor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redemptions", type=int, default=2000)
    n = parser.parse_args().redemptions
    none = run(n, None)
    other = run(n, ["pool.low"])
    subscribed = run(n, ["redemption.created"])
    print(f"redemption, no endpoint:              {none * 1e3:7.3f} ms (baseline)")
    print(f"redemption, endpoint for another type: {other * 1e3:7.3f} ms ({other / none:.2f}x)")
    print(f"redemption, endpoint subscribed:       {subscribed * 1e3:7.3f} ms ({subscribed / none:.2f}x)")
    emit, floor = emit_alone(200_000)
    print(
        f"emit() without endpoints: {emit * 1e6:.2f} us per event; a bare dict lookup {floor * 1e6:.3f} us ({emit / floor:.0f}x)"
    )


if __name__ == "__main__":
    main()
