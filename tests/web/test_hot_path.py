"""The validate hot path: reads take no write lock, and what the per-process caches keep is
never served stale in this process, and at most `caches.TTL_SECONDS` stale from another."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, text

from plugin import caches
from plugin.apikeys import revoke_key
from plugin.campaigns import update_campaign
from plugin.db import is_sqlite, read_session, session_scope
from plugin.models import Code
from tests.web.conftest import Api, make_campaign, rules


def test_validate_takes_no_write_lock(engine: Engine, api: Api, shop_id: int) -> None:
    if not is_sqlite(engine):
        pytest.skip("SQLite's write lock")
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    api.validate(stored[0])  # warm the key and format caches: the next call only reads the code
    answers: list[int] = []
    with engine.connect() as writer:
        writer.exec_driver_sql("SELECT 1")  # (the engine's "begin" listener ran BEGIN IMMEDIATE)
        assert writer.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]
        # A reader that wanted the write lock would now wait up to busy_timeout (30 s).
        thread = threading.Thread(target=lambda: answers.append(api.validate(stored[0]).status_code))
        thread.start()
        thread.join(10)
        assert not thread.is_alive() and answers == [200]
        writer.rollback()


def test_read_session_begins_deferred_and_commits_nothing(engine: Engine, shop_id: int) -> None:
    with read_session(engine) as session:
        assert session.execute(text("SELECT count(*) FROM shop")).scalar_one() >= 1
        if is_sqlite(engine):
            # a deferred transaction holds no lock: another writer can begin at once
            with engine.begin() as writer:
                writer.exec_driver_sql("UPDATE shop SET name = 'renamed' WHERE id = :id", {"id": shop_id})


def test_a_revoked_key_stops_working_at_once_in_this_process(engine: Engine, api: Api, shop_id: int) -> None:
    assert api.get("/campaigns").status_code == 200  # cached now
    prefix = api.key.split("_")[1]
    with session_scope(engine) as session:
        assert revoke_key(session, shop_id=shop_id, prefix=prefix)
    assert api.get("/campaigns").status_code == 401


def test_a_key_revoked_elsewhere_stops_working_within_the_ttl(engine: Engine, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(caches, "clock", lambda: clock[0])
    assert api.get("/campaigns").status_code == 200
    prefix = api.key.split("_")[1]
    with engine.begin() as conn:  # another process: no flush in this one
        conn.execute(text("UPDATE apikey SET revoked_at = created_at WHERE prefix = :p"), {"p": prefix})
    clock[0] += caches.TTL_SECONDS / 2
    assert api.get("/campaigns").status_code == 200  # still cached: the documented staleness
    clock[0] += caches.TTL_SECONDS
    assert api.get("/campaigns").status_code == 401


def test_changed_rules_apply_to_the_next_validation(engine: Engine, api: Api, shop_id: int) -> None:
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=1)
    assert api.validate(stored[0]).json()["discount"]["amount"] == 500
    with engine.begin() as conn:  # even written by another process, rules are read with the code
        conn.execute(
            text("UPDATE campaign SET rules = :r WHERE id = :id"),
            {"r": '{"currency": "GBP", "discount": {"type": "percentage", "percent": "20"}}', "id": campaign_id},
        )
    assert api.validate(stored[0]).json()["discount"]["amount"] == 1000
    with session_scope(engine) as session:
        update_campaign(session, shop_id=shop_id, campaign_id=campaign_id, rules=rules(discount={"type": "fixed", "amount": 300}))
    assert api.validate(stored[0]).json()["discount"]["amount"] == 300
    assert api.post(f"/campaigns/{campaign_id}/pause").status_code == 200
    assert api.validate(stored[0]).json()["reason"] == "campaign_paused"


def test_a_new_campaigns_format_is_used_at_once(engine: Engine, api: Api, shop_id: int) -> None:
    make_campaign(engine, shop_id, rules(), codes=1)
    assert api.validate("IZ34S678").json()["reason"] == "unknown_code"  # the shop's formats are cached now
    campaign_id, _ = make_campaign(engine, shop_id, rules(), code_format={"alphabet": "numeric", "length": 8})
    with session_scope(engine) as session:
        session.add(Code(shop_id=shop_id, campaign_id=campaign_id, code="12345678"))
    decision = api.validate("IZ34S678").json()  # look-alikes only the numeric format maps back
    assert decision["valid"] is True and decision["code"] == "12345678"


def test_caches_stay_bounded() -> None:
    cache: caches.TTLCache[int, int] = caches.TTLCache(3)
    for i in range(10):
        cache.put(i, i, caches.generation())
    assert len(cache) == 3 and cache.get(9) == 9 and cache.get(0) is None
    stale = caches.generation()
    caches.bump()
    cache.put(42, 42, stale)  # read before a change: not kept
    assert cache.get(42) is None and cache.get(9) is None
