"""Bulk inserts of codes keep the counters exact: on SQLite a chunk is counted once instead of
by the per-row trigger (plugin.store.counters), on PostgreSQL by the statement trigger."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, text
from sqlmodel import col, select

from plugin.campaigns import figures
from plugin.campaigns.campaigns import create_campaign
from plugin.store.bulk import insert_codes
from plugin.store.db import session_scope
from plugin.store.models import Batch, Campaign, Code, CodeBulkInsert

NOW = datetime(2026, 12, 16, tzinfo=UTC)


def _batch(engine: Engine, shop_id: int) -> tuple[int, int]:
    with session_scope(engine) as session:
        campaign_id = create_campaign(session, shop_id=shop_id, name="bulk").id or 0
        batch = Batch(shop_id=shop_id, campaign_id=campaign_id, source="generated", requested=0)
        session.add(batch)
        session.flush()
        return campaign_id, batch.id or 0


def _figures_equal_rows(engine: Engine, campaign_id: int) -> figures.CampaignFigures:
    with session_scope(engine) as session:
        got = figures.campaign_figures(session, session.get_one(Campaign, campaign_id), now=NOW)
        rows = session.exec(select(Code).where(col(Code.campaign_id) == campaign_id)).all()
        assert got.codes == len(rows)
        assert got.live == sum(1 for c in rows if c.status == "active" and c.uses == 0)
        assert got.assigned == sum(1 for c in rows if c.recipient is not None)
        assert got.sync == ({"pending": len(rows)} if rows else {})
        assert session.exec(select(func.count()).select_from(CodeBulkInsert)).one() == 0  # no mark outlives its insert
        assert figures.recount(session, shop_id=rows[0].shop_id if rows else 0).changed == []
        return got


def test_a_bulk_insert_counts_each_landed_code_once(engine: Engine, shop_id: int) -> None:
    campaign_id, batch_id = _batch(engine, shop_id)
    args = {"shop_id": shop_id, "campaign_id": campaign_id, "batch_id": batch_id, "created_at": NOW}
    with engine.begin() as conn:
        assert insert_codes(conn, codes=[f"A{n:05d}" for n in range(300)], **args) == 300
    with engine.begin() as conn:  # half of them the shop already has: only the new half lands
        assert insert_codes(conn, codes=[f"A{n:05d}" for n in range(150, 450)], **args) == 150
    assert _figures_equal_rows(engine, campaign_id).codes == 450


def test_a_code_of_the_batch_written_after_the_bulk_insert_is_counted(engine: Engine, shop_id: int) -> None:
    """The trigger is paused for the insert only: a later write of the same batch, in the same
    transaction, is counted by it."""
    campaign_id, batch_id = _batch(engine, shop_id)
    with session_scope(engine) as session:
        conn = session.connection()
        insert_codes(conn, shop_id=shop_id, campaign_id=campaign_id, batch_id=batch_id, codes=["B1", "B2"], created_at=NOW)
        session.add(Code(shop_id=shop_id, campaign_id=campaign_id, batch_id=batch_id, code="B3", recipient="r@example.com"))
    got = _figures_equal_rows(engine, campaign_id)
    assert (got.codes, got.assigned) == (3, 1)


def test_a_rolled_back_bulk_insert_moves_no_counter(engine: Engine, shop_id: int) -> None:
    campaign_id, batch_id = _batch(engine, shop_id)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        insert_codes(conn, shop_id=shop_id, campaign_id=campaign_id, batch_id=batch_id, codes=["C1", "C2"], created_at=NOW)
        raise RuntimeError("the chunk's transaction fails after the insert")
    assert _figures_equal_rows(engine, campaign_id).codes == 0
    with engine.begin() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM campaign_stats WHERE codes <> 0")).scalar_one() == 0


def _assigned_in_rollups(engine: Engine, campaign_id: int) -> int:
    with engine.begin() as conn:
        return int(conn.execute(text("SELECT COALESCE(SUM(assigned), 0) FROM assign_day WHERE campaign_id = :c"),
                                {"c": campaign_id}).scalar_one())  # fmt: skip


def test_the_results_insert_trigger_is_back_after_a_bulk_insert_and_after_a_failed_one(engine: Engine, shop_id: int) -> None:
    """SQLite's bulk insert takes the results' code insert trigger off while it writes (codes
    without recipients never need it): afterwards, in the same transaction or a later one, and
    after a rollback, a code inserted with a recipient is counted in assign_day."""
    campaign_id, batch_id = _batch(engine, shop_id)
    args = {"shop_id": shop_id, "campaign_id": campaign_id, "batch_id": batch_id, "created_at": NOW}
    with session_scope(engine) as session:
        insert_codes(session.connection(), codes=["D1", "D2"], **args)
        session.add(Code(shop_id=shop_id, campaign_id=campaign_id, batch_id=batch_id, code="D3", recipient="a@example.com",
                         assigned_at=NOW))  # fmt: skip
    assert _assigned_in_rollups(engine, campaign_id) == 1
    with pytest.raises(RuntimeError), engine.begin() as conn:
        insert_codes(conn, codes=["D4"], **args)
        raise RuntimeError("the chunk's transaction fails after the insert")
    with session_scope(engine) as session:
        session.add(Code(shop_id=shop_id, campaign_id=campaign_id, batch_id=batch_id, code="D5", recipient="b@example.com",
                         assigned_at=NOW))  # fmt: skip
    assert _assigned_in_rollups(engine, campaign_id) == 2
    listed = "SELECT tgname FROM pg_trigger" if engine.dialect.name == "postgresql" else "SELECT name FROM sqlite_master"
    with engine.begin() as conn:
        names = {r[0] for r in conn.exec_driver_sql(listed)}
    assert "results_code_insert" in names
