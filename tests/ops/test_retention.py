"""Data retention: old payloads and audit rows go, by setting; what processing still reads stays."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine
from sqlmodel import col, select

from plugin.errors import ConfigError
from plugin.orders import retention, webhooks
from plugin.orders.privacy import DATA_REQUEST
from plugin.settings import Settings
from plugin.store.db import make_engine, session_scope
from plugin.store.models import AuditEvent, Shop, WebhookEvent, utcnow
from tests.cli.test_cli import _ok, cli, cli_database_url  # noqa: F401  (fixtures)

PAYLOAD = '{"email": "ann@example.com", "order": 1}'


def _delivery(engine: Engine, shop_id: int, name: str, *, status: str, age_days: float) -> int:
    with session_scope(engine) as session:
        event_id, _ = webhooks.store_delivery(
            session, platform="sandbox", delivery_id=name, topic="orders/paid", shop_id=shop_id, payload=PAYLOAD, headers={}
        )
        event = session.get_one(WebhookEvent, event_id)
        event.status, event.received_at = status, utcnow() - timedelta(days=age_days)
        event.outcome = {"redeemed": 1} if status == "processed" else {}
        return event_id


def _audit(engine: Engine, shop_id: int, action: str, *, age_days: float) -> None:
    with session_scope(engine) as session:
        session.add(AuditEvent(shop_id=shop_id, action=action, subject="x", created_at=utcnow() - timedelta(days=age_days)))


def _deliveries(engine: Engine) -> dict[str, tuple[str, bool, bool]]:
    """delivery id -> (status, payload kept, outcome kept)"""
    with session_scope(engine) as session:
        rows = session.exec(select(WebhookEvent)).all()
        return {e.delivery_id: (e.status, e.payload == PAYLOAD, bool(e.outcome) == (e.status == "processed")) for e in rows}


def test_old_payloads_go_but_never_those_processing_still_reads(engine: Engine, shop_id: int, settings: Settings) -> None:
    _delivery(engine, shop_id, "old-processed", status="processed", age_days=91)
    _delivery(engine, shop_id, "new-processed", status="processed", age_days=89)
    _delivery(engine, shop_id, "old-received", status="received", age_days=400)  # not processed yet
    _delivery(engine, shop_id, "old-deferred", status="deferred", age_days=400)  # waits for its order
    _delivery(engine, shop_id, "old-failed", status="failed", age_days=31)
    _delivery(engine, shop_id, "new-failed", status="failed", age_days=29)  # can still be reprocessed
    pruned = retention.prune(engine, settings)  # the defaults: 30 days unused, 90 days payloads
    assert (pruned.deliveries, pruned.payloads) == (1, 1)
    assert _deliveries(engine) == {
        "old-processed": ("processed", False, True),  # the record stays, the customer's details go
        "new-processed": ("processed", True, True),
        "old-received": ("received", True, True),
        "old-deferred": ("deferred", True, True),
        "new-failed": ("failed", True, True),
    }
    with session_scope(engine) as session:
        emptied = session.exec(select(WebhookEvent).where(WebhookEvent.delivery_id == "old-processed")).one()
        assert emptied.redacted_at is not None
    assert retention.prune(engine, settings) == retention.Pruned(0, 0, 0)  # nothing left to do


def test_old_audit_rows_go_but_those_still_read_stay(engine: Engine, shop_id: int, settings: Settings) -> None:
    _audit(engine, shop_id, "code.voided", age_days=731)
    _audit(engine, shop_id, "code.voided", age_days=729)
    _audit(engine, shop_id, "webhooks.registered", age_days=1000)  # the home page shows when
    _audit(engine, shop_id, DATA_REQUEST, age_days=1000)  # the record that a request was answered
    assert retention.prune(engine, settings).audit == 1
    with session_scope(engine) as session:
        kept = session.exec(select(AuditEvent.action).order_by(col(AuditEvent.id))).all()
    assert kept == ["code.voided", "webhooks.registered", DATA_REQUEST]


def test_zero_keeps_everything_and_a_shorter_setting_prunes_sooner(engine: Engine, shop_id: int, settings: Settings) -> None:
    _delivery(engine, shop_id, "p", status="processed", age_days=10)
    _delivery(engine, shop_id, "f", status="ignored", age_days=10)
    _audit(engine, shop_id, "code.voided", age_days=10)
    keep_all = replace(settings, webhook_retention_days=0, webhook_payload_retention_days=0, audit_retention_days=0)
    assert retention.prune(engine, keep_all) == retention.Pruned(0, 0, 0)
    week = replace(settings, webhook_retention_days=7, webhook_payload_retention_days=7, audit_retention_days=7)
    assert retention.prune(engine, week) == retention.Pruned(1, 1, 1)


def test_batches_delete_everything_old(engine: Engine, shop_id: int) -> None:
    for n in range(5):
        _delivery(engine, shop_id, f"p{n}", status="processed", age_days=100)
        _audit(engine, shop_id, "code.voided", age_days=800)
    now = utcnow()
    assert retention.remove_old_payloads(engine, older_than=timedelta(days=90), now=now, batch=2) == 5
    assert retention.delete_old_audit(engine, older_than=timedelta(days=730), now=now, batch=2) == 5


def test_the_retention_settings_are_read_and_checked() -> None:
    env = {"DATABASE_URL": "postgresql://h/db", "COUPONRY_SECRET_KEY": "x" * 32}
    settings = Settings.from_env({**env, "COUPONRY_WEBHOOK_PAYLOAD_RETENTION_DAYS": "14", "COUPONRY_AUDIT_RETENTION_DAYS": "0"})
    assert (settings.webhook_retention_days, settings.webhook_payload_retention_days, settings.audit_retention_days) == (
        30,
        14,
        0,
    )
    with pytest.raises(ConfigError, match="COUPONRY_AUDIT_RETENTION_DAYS must not be negative"):
        Settings.from_env({**env, "COUPONRY_AUDIT_RETENTION_DAYS": "-1"})


def test_couponry_prune_applies_the_settings_now(
    cli: CliRunner,  # noqa: F811
    cli_database_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _ok(cli, "campaigns", "list")  # creates the local shop (and, on SQLite, the schema)
    engine = make_engine(cli_database_url)
    with session_scope(engine) as session:
        shop_id = session.exec(select(Shop.id).where(Shop.domain == "local.couponry.test")).one()
        assert shop_id is not None
    _delivery(engine, shop_id, "p", status="processed", age_days=20)
    _delivery(engine, shop_id, "r", status="received", age_days=20)
    _audit(engine, shop_id, "code.voided", age_days=20)
    engine.dispose()
    monkeypatch.setenv("COUPONRY_WEBHOOK_PAYLOAD_RETENTION_DAYS", "14")
    monkeypatch.setenv("COUPONRY_AUDIT_RETENTION_DAYS", "14")
    out = _ok(cli, "prune")
    assert out.strip() == "deleted 0 unused deliveries, emptied 1 payloads, deleted 1 audit rows"
    assert _ok(cli, "prune").strip() == "deleted 0 unused deliveries, emptied 0 payloads, deleted 0 audit rows"
