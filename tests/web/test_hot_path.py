"""The validate hot path: reads take no write lock, and what the per-process caches keep is
never served stale in this process, and at most `caches.TTL_SECONDS` stale from another."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest
from sqlalchemy import Engine, text

from plugin.campaigns.campaigns import update_campaign
from plugin.checkout import checkout
from plugin.checkout.ratelimit import FailureLimiter
from plugin.shops.apikeys import revoke_key
from plugin.store import caches
from plugin.store.db import _thread_readers, is_sqlite, make_engine, read_cursor, read_session, session_scope
from plugin.store.models import Code
from plugin.web.hotpaths import App
from tests.web.conftest import BASKET, Api, make_campaign, rules


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


def test_each_thread_reads_what_others_committed(engine: Engine, shop_id: int) -> None:
    """SQLite reads use one connection per thread, outside the pool: a read must never keep
    an old snapshot, and nested reads share the outer one's transaction."""
    with read_cursor(engine) as reader:
        names = reader.rows("SELECT name FROM shop WHERE id = ?", (shop_id,))
        with read_cursor(engine) as nested, read_cursor(engine, snapshot=False) as single:
            assert nested.rows("SELECT name FROM shop WHERE id = ?", (shop_id,)) == names
            assert single.rows("SELECT name FROM shop WHERE id = ?", (shop_id,)) == names
    for name in ("first", "second"):
        with engine.begin() as writer:  # another connection commits
            writer.exec_driver_sql(f"UPDATE shop SET name = '{name}' WHERE id = {shop_id}")
        for snapshot in (True, False):
            with read_cursor(engine, snapshot=snapshot) as reader:
                assert reader.rows("SELECT name FROM shop WHERE id = ?", (shop_id,)) == [(name,)]
    seen: list[object] = []

    def other_thread() -> None:
        with read_cursor(engine) as reader:
            seen.append(reader.rows("SELECT name FROM shop WHERE id = ?", (shop_id,)))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(10)
    assert seen == [[("second",)]]


def test_thread_read_connections_close_with_the_engine(database_url: str, engine: Engine) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("per-thread read connections are SQLite's")
    own = make_engine(database_url)
    with read_cursor(own) as reader:
        assert reader.rows("SELECT 1", ()) == [(1,)]
    readers = _thread_readers(own)
    assert readers is not None and len(readers.opened) == 1
    conn = readers.opened[0]
    own.dispose()
    assert readers.opened == []
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    with read_cursor(own) as reader:  # a disposed engine still reads (on a new connection)
        assert reader.rows("SELECT 1", ()) == [(1,)]
    own.dispose()


def test_the_checkout_calls_answer_like_the_router(api: Api, engine: Engine, shop_id: int, caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The checkout calls and the pull endpoint skip Starlette's routing; their errors keep the
    API's problem+json shape, other methods on their paths still get the router's 405, and a
    path the route's converters refuse still gets the router's 404."""
    app = api.client.app
    assert isinstance(app, App) and set(app.hot_paths) == {
        ("POST", "/api/v1/validate"), ("POST", "/api/v1/redemptions"), ("POST", "/api/v1/reservations"),
        ("OPTIONS", "/api/v1/validate"),  # the CORS preflight of storefront keys (plugin.web.cors)
    }  # fmt: skip
    assert [r.path for r in app.hot_templates] == ["/api/v1/campaigns/{campaign_id:int}/pull"]
    assert list(app.hot_tails) == [("POST", "/webhooks/")]  # /webhooks/{platform}, without a regular expression
    for path in ("/webhooks/", "/webhooks/sandbox/more", "/webhooksx/sandbox"):
        assert api.client.post(path, content=b"{}").status_code == 404  # as the router answers them
    assert api.client.get("/webhooks/sandbox").status_code == 405
    unknown_platform = api.client.post("/webhooks/nowhere", content=b"{}")
    assert unknown_platform.status_code == 404 and unknown_platform.json()["reason"] == "unknown_platform"
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1)
    pulled = api.client.get(f"/api/v1/campaigns/{campaign_id}/pull", params={"recipient": "ann@example.com"}, headers=api.headers)
    again = api.client.get(f"/api/v1/campaigns/{campaign_id}/pull", params={"recipient": "ANN@example.com"}, headers=api.headers)
    assert pulled.status_code == 200 and again.json() == pulled.json()
    not_an_id = api.client.get("/api/v1/campaigns/abc/pull", params={"recipient": "ann@example.com"}, headers=api.headers)
    assert not_an_id.status_code == 404 and not_an_id.json()["reason"] == "not_found"  # the router's answer
    too_big = api.client.get(f"/api/v1/campaigns/{2**40}/pull", params={"recipient": "a@b.co"}, headers=api.headers)
    assert too_big.status_code == 404 and too_big.json()["reason"] == "not_found"  # path_int's, through the front
    unauthenticated = api.client.post("/api/v1/validate", json={"code": "X", "basket": BASKET})
    assert unauthenticated.status_code == 401 and unauthenticated.json()["reason"] == "unauthenticated"
    invalid = api.post("/validate", {"code": 5})
    assert invalid.status_code == 422 and invalid.headers["content-type"] == "application/problem+json"
    unknown = api.redeem("NO-SUCH-CODE", "order-1")  # a PluginError raised by the service
    assert unknown.status_code == 404 and unknown.json()["reason"] == "unknown_code"
    wrong_method = api.client.get("/api/v1/validate", headers=api.headers)
    assert wrong_method.status_code == 405 and wrong_method.json()["reason"] == "method_not_allowed"

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(checkout, "validate", broken)
    with caplog.at_level(logging.ERROR, logger="plugin.web.hotpaths"):
        failed = api.validate("ANY")
    assert failed.status_code == 500 and failed.json()["reason"] == "internal_error"
    assert "boom" in caplog.text


def test_a_client_that_never_failed_is_not_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """With memory storage the limiter knows every failure, so it answers clients without
    failures itself; a client that failed is asked about until its window has passed."""
    limiter = FailureLimiter(None, limit="2/minute")
    asked: list[str] = []
    real_test = limiter.limiter.test
    monkeypatch.setattr(limiter.limiter, "test", lambda item, key: asked.append(key) or real_test(item, key))
    assert limiter.check("ip:a").allowed and asked == []
    limiter.record_failure("ip:a")
    limiter.record_failure("ip:a")
    verdict = limiter.check("ip:a", "ip:b")
    assert not verdict.allowed and verdict.retry_after >= 1 and asked == ["ip:a"]
    assert limiter.check("ip:b").allowed and asked == ["ip:a"]
    clock = [time.monotonic() + 61]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    assert limiter.check("ip:a").allowed and asked == ["ip:a"]  # the window has passed


def test_a_client_gone_before_its_body_is_no_error(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """A checkout call whose client disconnects before sending its body is answered 499 (no one
    reads it) and logs no error: it is the client's doing, not a fault of ours."""
    import asyncio

    app = api.client.app
    headers = [(b"authorization", f"Bearer {api.key}".encode()), (b"content-type", b"application/json"),
               (b"content-length", b"40")]  # fmt: skip
    scope = {"type": "http", "method": "POST", "path": "/api/v1/validate", "raw_path": b"/api/v1/validate", "root_path": "",
             "scheme": "http", "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1), "server": ("t", 80),
             "http_version": "1.1", "asgi": {"version": "3.0"}}  # fmt: skip
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    with caplog.at_level(logging.ERROR, logger="plugin.web.hotpaths"):
        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert "unhandled" not in caplog.text
