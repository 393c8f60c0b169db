"""Campaigns and batches through the API: CRUD, status transitions, background batches with
progress, validation problems, and the exposure and entropy figures."""

from __future__ import annotations

import time

from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from plugin.store.models import AuditEvent, Campaign, Code, Job
from tests.web.conftest import Api, rules

BODY = {"name": "Black Friday", "currency": "GBP", "code_format": {"length": 10, "check_chars": 1}, "rules": rules()}


def wait_for_batch(api: Api, batch_id: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    seen: list[float] = []
    while time.monotonic() < deadline:
        body = api.get(f"/batches/{batch_id}").json()
        seen.append(body["progress"])
        if body["status"] in ("done", "failed"):
            assert seen == sorted(seen)  # progress never goes backwards
            return body
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish: {seen[-5:]}")


def test_create_read_list_update(api: Api) -> None:
    created = api.post("/campaigns", BODY)
    assert created.status_code == 201, created.text
    campaign = created.json()
    assert campaign["status"] == "active" and campaign["codes"] == 0 and campaign["currency"] == "GBP"
    assert campaign["rules"]["discount"] == {"type": "percentage", "percent": "10", "max_amount": None}
    # promise 6: entropy and the chance of guessing at our rate limits are shown (here at the
    # test app's generous limits; tests/web/test_guessing.py checks the figures at the defaults)
    assert campaign["entropy_bits"] > 40
    assert 0 < campaign["guess_probability"] < 1e-2 and 0 < campaign["guess_probability_below_alarm"] < 1e-2
    assert campaign["exposure"]["amount"] == 0  # no codes yet: nothing open

    assert api.get(f"/campaigns/{campaign['id']}").json() == campaign
    second = api.post("/campaigns", {**BODY, "name": "Spring"}).json()
    listed = api.get("/campaigns").json()
    assert listed["count"] == 2 and [c["id"] for c in listed["data"]] == [campaign["id"], second["id"]]
    page = api.get("/campaigns", params={"limit": 1, "offset": 1}).json()
    assert page["count"] == 2 and [c["id"] for c in page["data"]] == [second["id"]]

    capped = rules(discount={"type": "fixed", "amount": 500}, budget={"max_discount": 2000})
    updated = api.patch(f"/campaigns/{campaign['id']}", {"name": "Black Friday 2026", "rules": capped})
    assert updated.status_code == 200
    assert updated.json()["name"] == "Black Friday 2026"
    assert updated.json()["rules"]["discount"] == {"type": "fixed", "amount": 500}
    assert updated.json()["exposure"] == {
        "bounded": True,
        "amount": 0,
        "currency": "GBP",
        "limited_by": "open_codes",
        "unbounded_because": [],
    }
    assert api.get(f"/campaigns/{campaign['id']}").json()["name"] == "Black Friday 2026"


def test_a_campaign_shows_where_it_stands_on_the_platform(api: Api, engine: Engine, shop_id: int) -> None:
    campaign = api.post("/campaigns", BODY).json()
    assert campaign["platform"] == {
        "platform": "sandbox",
        "discount_id": None,  # nothing pushed yet
        "codes": {},
        "last_follow": None,
        "last_error": None,
    }
    with Session(engine) as session:  # pushed, paused and followed; then a rule edit's follow-up fails
        row = session.get_one(Campaign, campaign["id"])
        row.platform_discount_id = "17"
        session.add(row)
        outcome = {"status": "paused", "discount_id": "17", "rules": "updated", "discount_status": "paused"}
        session.add(
            AuditEvent(
                shop_id=shop_id,
                action="campaign.platform_followed",
                subject=f"campaign:{campaign['id']}",
                actor="worker",
                details=outcome,
            )
        )
        failing = {"campaign_id": campaign["id"]}
        session.add(Job(shop_id=shop_id, kind="sync.follow", payload=failing, status="dead", attempts=10, last_error="503"))
        session.add(Job(shop_id=shop_id, kind="sync.follow", payload={"campaign_id": 0}, status="queued", last_error="x"))
        session.commit()
    shown = api.get(f"/campaigns/{campaign['id']}").json()["platform"]
    assert shown["discount_id"] == "17" and shown["last_follow"]["outcome"] == outcome
    assert shown["last_follow"]["action"] == "campaign.platform_followed"
    assert shown["last_error"] == {"job": "sync.follow", "status": "dead", "attempts": 10, "error": "503"}
    (listed,) = api.get("/campaigns").json()["data"]
    assert listed["platform"] == shown
    with Session(engine) as session:  # a later follow-up succeeded: nothing failing any more
        session.add(Job(shop_id=shop_id, kind="sync.follow", payload=failing, status="done", attempts=1))
        session.commit()
    assert api.get(f"/campaigns/{campaign['id']}").json()["platform"]["last_error"] is None


def test_status_transitions(api: Api) -> None:
    draft = api.post("/campaigns", {"name": "Later"}).json()
    assert draft["status"] == "draft" and draft["rules"] is None and draft["exposure"] is None
    refused = api.post(f"/campaigns/{draft['id']}/activate")
    assert refused.status_code == 409 and refused.json()["reason"] == "rules_required"
    assert api.patch(f"/campaigns/{draft['id']}", {"rules": rules()}).json()["status"] == "draft"

    cid = draft["id"]
    for action, status in [("activate", "active"), ("pause", "paused"), ("pause", "paused"), ("resume", "active")]:
        response = api.post(f"/campaigns/{cid}/{action}")
        assert response.status_code == 200 and response.json()["status"] == status
    assert api.post(f"/campaigns/{cid}/resume").json()["status"] == "active"  # already there: a no-op
    assert api.post(f"/campaigns/{cid}/pause").json()["status"] == "paused"
    assert api.post(f"/campaigns/{cid}/end").json()["status"] == "ended"
    for action in ("activate", "pause", "resume"):
        response = api.post(f"/campaigns/{cid}/{action}")
        assert response.status_code == 409 and response.json()["reason"] == "invalid_transition"
    ended = api.get(f"/campaigns/{cid}").json()
    assert ended["status"] == "ended"


def test_a_batch_runs_in_the_background_with_progress(api: Api, engine: Engine) -> None:
    cid = api.post("/campaigns", BODY).json()["id"]
    started = api.post(f"/campaigns/{cid}/batches", {"count": 1500})
    assert started.status_code == 202, started.text
    batch = started.json()
    assert batch["requested"] == 1500 and batch["campaign_id"] == cid
    assert started.headers["location"] == f"/api/v1/batches/{batch['id']}"
    done = wait_for_batch(api, batch["id"])
    assert done["status"] == "done" and done["created"] == 1500 and done["progress"] == 1.0
    assert done["finished_at"] is not None and done["error"] is None
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Code).where(col(Code.batch_id) == batch["id"])).one() == 1500
    campaign = api.get(f"/campaigns/{cid}").json()
    assert campaign["codes"] == 1500

    override = api.post(f"/campaigns/{cid}/batches", {"count": 10, "rules_override": {"uses_per_code": 3}})
    assert override.status_code == 202
    assert wait_for_batch(api, override.json()["id"])["created"] == 10


def test_exposure_counts_open_uses(api: Api) -> None:
    fixed = rules(discount={"type": "fixed", "amount": 500})
    cid = api.post("/campaigns", {**BODY, "rules": fixed}).json()["id"]
    wait_for_batch(api, api.post(f"/campaigns/{cid}/batches", {"count": 20}).json()["id"])
    exposure = api.get(f"/campaigns/{cid}").json()["exposure"]
    assert exposure["bounded"] is True and exposure["amount"] == 20 * 500 and exposure["limited_by"] == "open_codes"

    percent = api.post("/campaigns", BODY).json()["id"]
    wait_for_batch(api, api.post(f"/campaigns/{percent}/batches", {"count": 5}).json()["id"])
    uncapped = api.get(f"/campaigns/{percent}").json()["exposure"]
    assert uncapped["bounded"] is False and uncapped["unbounded_because"] == ["uncapped_percentage"]


def test_a_campaign_past_its_end_costs_nothing_more(api: Api) -> None:
    ended = rules(discount={"type": "fixed", "amount": 500}, time={"ends_at": "2020-01-01T00:00:00Z"})
    cid = api.post("/campaigns", {**BODY, "rules": ended}).json()["id"]
    wait_for_batch(api, api.post(f"/campaigns/{cid}/batches", {"count": 5}).json()["id"])
    exposure = api.get(f"/campaigns/{cid}").json()["exposure"]
    assert exposure == {
        "bounded": True, "amount": 0, "currency": "GBP", "limited_by": "campaign_ended", "unbounded_because": [],
    }  # fmt: skip


def test_validation_errors_are_problems_with_reasons(api: Api) -> None:
    cases = [
        ("/campaigns", {"currency": "GBP"}, "invalid_input"),  # no name
        ("/campaigns", {"name": "x", "currency": "pounds"}, "invalid_input"),
        ("/campaigns", {"name": "x", "rules": {"discount": {"type": "fixed", "amount": 5}}}, "invalid_input"),  # no currency
        ("/campaigns", {"name": "x", "code_format": {"length": 2}}, "invalid_input"),
        ("/campaigns", {"name": "x", "rules": rules(), "unknown": True}, "invalid_input"),
    ]
    for path, body, reason in cases:
        response = api.post(path, body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["reason"] == reason and problem["status"] == 422 and problem["detail"]

    cid = api.post("/campaigns", {**BODY, "code_format": {"length": 6}}).json()["id"]
    for count in (0, -1, "ten", 10_000_001):
        response = api.post(f"/campaigns/{cid}/batches", {"count": count})
        assert response.status_code == 422 and response.json()["reason"] == "invalid_input"
    too_many = api.post(f"/campaigns/{cid}/batches", {"count": 1_000_000})
    assert too_many.status_code == 422 and too_many.json()["reason"] == "format_capacity_exceeded"
    for params in ({"limit": 0}, {"limit": "ten"}, {"offset": -1}):
        response = api.get("/campaigns", params=params)
        assert response.status_code == 422 and response.json()["reason"] == "invalid_query"
    assert api.get("/campaigns/424242").json()["reason"] == "campaign_not_found"
    assert api.get("/batches/424242").json()["reason"] == "batch_not_found"
    assert api.post("/campaigns/424242/batches", {"count": 1}).status_code == 404


def test_unknown_paths_ids_and_methods_are_problems(api: Api) -> None:
    for path in ("/campaigns/abc", "/campaigns/2147483648", "/batches/99999999999999999999", "/nowhere"):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["reason"] in ("not_found", "campaign_not_found")
    wrong = api.client.put("/api/v1/campaigns", headers=api.headers)
    assert wrong.status_code == 405 and wrong.json()["reason"] == "method_not_allowed"
    assert wrong.headers["allow"] == "GET, HEAD, POST"
    assert api.get("/campaigns/2147483647").json()["reason"] == "campaign_not_found"
    assert api.post("/redemptions/9223372036854775807/rollback", {}).json()["reason"] == "redemption_not_found"
    assert api.post("/redemptions/9223372036854775808/rollback", {}).json()["reason"] == "not_found"
