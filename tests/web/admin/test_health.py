"""Sync health: jobs with the platform's message, retry a dead job (fresh attempts) or a failing
one now, alerts resolved by hand, reconciliation reports; CSRF, other shops' ids answer 404."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.reconciliation import health
from plugin.settings import Settings
from plugin.store.models import Alert, AuditEvent, Job, utcnow
from tests.web.admin.conftest import form_token, set_up_owner


def add_job(engine: Engine, shop_id: int, **values: object) -> int:
    with Session(engine) as session:
        job = Job(shop_id=shop_id, **values)
        session.add(job)
        session.commit()
        assert job.id is not None
        return job.id


def add_alert(engine: Engine, shop_id: int, **values: object) -> int:
    with Session(engine) as session:
        alert = Alert(shop_id=shop_id, **values)
        session.add(alert)
        session.commit()
        assert alert.id is not None
        return alert.id


def test_failures_show_the_platforms_message_and_filter(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    add_job(engine, shop_id, kind="sync.push", status="dead", attempts=10, last_error="Shopify 422: code already exists")
    add_job(engine, shop_id, kind="reconcile", status="done")
    add_job(engine, shop_id, kind="klaviyo.upload", status="queued", attempts=2, last_error="Klaviyo 429: throttled")
    add_job(engine, other_shop_id, kind="sync.push", status="dead", last_error="their secret trouble")
    page = web.get("/admin/health")
    assert page.status_code == 200
    assert "Shopify 422: code already exists" in page.text and "Klaviyo 429: throttled" in page.text
    assert "their secret trouble" not in page.text
    assert re.search(r'id="dead-jobs".*Shopify 422', page.text, re.S)
    only = web.get("/admin/health", params={"family": "reconcile"}).text
    assert "<code>reconcile</code>" in only and "sync.push</code>" not in only.split('id="jobs-h"')[1]
    failing = web.get("/admin/health", params={"failing": "1"}).text.split('id="jobs-h"')[1]
    assert "klaviyo.upload" in failing and "<code>reconcile</code>" not in failing
    bad = web.get("/admin/health", params={"family": "fax", "status": "lost"})
    assert bad.status_code == 422 and 'id="e-family"' in bad.text and 'id="e-status"' in bad.text


def test_retry_a_dead_job_and_a_failing_one_now(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    dead = add_job(engine, shop_id, kind="sync.push", status="dead", attempts=10, last_error="HTTP 500")
    later = utcnow() + timedelta(hours=1)
    waiting = add_job(engine, shop_id, kind="distribution.push", status="queued", attempts=3, last_error="429", run_after=later)
    done = add_job(engine, shop_id, kind="sync.push", status="done")
    token = form_token(web.get("/admin/health").text)
    assert web.post(f"/admin/health/jobs/{dead}/retry", data={"csrf_token": token}).status_code == 303
    assert web.post(f"/admin/health/jobs/{waiting}/retry", data={"csrf_token": token}).status_code == 303
    # a finished job is not run again (the worker took it between the page and the click): the
    # page says so, not an error
    refused = web.post(f"/admin/health/jobs/{done}/retry", data={"csrf_token": token})
    assert refused.status_code == 303 and f"not_waiting={done}" in refused.headers["location"]
    told = web.get(refused.headers["location"]).text
    assert f"Job {done} was no longer waiting to be retried" in told
    with Session(engine) as session:
        again = session.get_one(Job, dead)
        assert (again.status, again.attempts) == ("queued", 0)
        soon = session.get_one(Job, waiting)
        assert soon.status == "queued" and soon.attempts == 3 and soon.run_after <= utcnow()
        rows = {
            job: session.exec(select(AuditEvent.action, AuditEvent.actor).where(col(AuditEvent.subject) == f"job:{job}")).all()
            for job in (dead, waiting, done)
        }
    # one audit row per retry, naming who did it (the dead job's is written by the service itself)
    assert [action for action, _ in rows[dead]] == ["job.retry"]
    assert [action for action, _ in rows[waiting]] == ["job.retry"]
    assert all(actor.endswith(":owner@shop.example") for actor in (rows[dead][0][1], rows[waiting][0][1]))
    assert rows[done] == []  # refused: nothing recorded


def test_retry_and_resolve_refuse_without_csrf_and_for_another_shop(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    theirs = add_job(engine, other_shop_id, kind="sync.push", status="dead", last_error="x")
    their_alert = add_alert(engine, other_shop_id, kind="pool_low", message="low", open_key="k-theirs")
    set_up_owner(web, admin_settings, shop_id)
    assert web.post(f"/admin/health/jobs/{theirs}/retry", data={}).status_code == 403
    token = form_token(web.get("/admin/health").text)
    assert web.post(f"/admin/health/jobs/{theirs}/retry", data={"csrf_token": token}).status_code == 404
    assert web.post(f"/admin/health/alerts/{their_alert}/resolve", data={"csrf_token": token}).status_code == 404
    with Session(engine) as session:
        assert session.get_one(Job, theirs).status == "dead"
        assert session.get_one(Alert, their_alert).resolved_at is None


def test_resolve_an_alert(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)
    alert = add_alert(
        engine, shop_id, kind="reconcile_failed", message="could not repair campaign 3", open_key="reconcile_failed:1"
    )
    page = web.get("/admin/health").text
    assert "could not repair campaign 3" in page
    assert web.post(f"/admin/health/alerts/{alert}/resolve", data={"csrf_token": form_token(page)}).status_code == 303
    with Session(engine) as session:
        row = session.get_one(Alert, alert)
        assert row.resolved_at is not None and row.open_key is None  # the same trouble later opens a new alert
    assert "could not repair campaign 3" not in web.get("/admin/health").text
    assert "could not repair campaign 3" in web.get("/admin/health", params={"open": "all"}).text


def test_resolving_twice_keeps_the_first_time(engine: Engine, shop_id: int) -> None:
    alert = add_alert(engine, shop_id, kind="pool_low", message="low", open_key="k")
    first = utcnow()
    with Session(engine) as session:
        health.resolve_alert(session, shop_id=shop_id, alert_id=alert, now=first)
        session.commit()
        later = health.resolve_alert(session, shop_id=shop_id, alert_id=alert, now=first + timedelta(days=1))
        assert later.resolved_at == first


def test_reconciliation_reports_are_listed(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id)
    with Session(engine) as session:
        report = {"campaigns": {"7": {"missing": 2, "repaired": {"pushed": 2}}}}
        session.add(AuditEvent(shop_id=shop_id, action="reconcile.report", subject=f"shop:{shop_id}", details=report))
        session.add(
            AuditEvent(
                shop_id=other_shop_id, action="reconcile.report", subject="x", details={"campaigns": {"99": {"theirs": 1}}}
            )
        )
        session.commit()
    page = web.get("/admin/health").text
    assert "1 campaign(s) checked" in page and '"pushed": 2' in page
    assert "theirs" not in page
