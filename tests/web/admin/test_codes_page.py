"""The Codes pages: find a code as typed and read its story, void / extend / reassign with errors
beside their field, filter pages, bulk void only after a confirmation naming the count, generate
with a progress figure, CSV import with a row-by-row report, export; CSRF and tenants."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.settings import Settings
from plugin.store.models import AuditEvent, Batch, Code
from tests.web.admin.conftest import form_token, set_up_owner
from tests.web.conftest import make_campaign, rules

FMT = {"alphabet": "safe", "length": 8, "group_size": 4}


def _token(web: Any, settings: Settings, shop_id: int) -> str:
    set_up_owner(web, settings, shop_id)
    return form_token(web.get("/admin/codes").text)


def _code(engine: Engine, stored: str) -> Code:
    with Session(engine) as session:
        return session.exec(select(Code).where(col(Code.code) == stored)).one()


def test_find_a_code_as_typed_and_read_its_story(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=3, code_format=FMT, status="active")
    _token(web, admin_settings, shop_id)
    typed = f" {stored[0][:4].lower()} {stored[0][4:].lower()} "
    page = web.get("/admin/codes/find", params={"q": typed})
    assert page.status_code == 200 and f"<code>{stored[0][:4]}-{stored[0][4:]}</code>" in page.text
    assert re.search(r'id="story">\s*<li>.*<strong>issued</strong>', page.text, re.S)
    near = stored[0][:-1] + ("2" if stored[0][-1] != "2" else "3")
    missing = web.get("/admin/codes/find", params={"q": near})
    assert missing.status_code == 404 and 'id="e-q"' in missing.text
    assert web.get("/admin/codes/find", params={"q": ""}).status_code == 422


def test_void_extend_reassign_write_the_story(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=2, code_format=FMT, status="active")
    token = _token(web, admin_settings, shop_id)
    ext = web.post("/admin/codes/extend", data={"csrf_token": token, "code": stored[0], "expires_at": "2031-05-01T12:00"})
    assert ext.status_code == 303, ext.text
    assert _code(engine, stored[0]).expires_at.strftime("%Y-%m-%d %H:%M") == "2031-05-01 12:00"
    past = web.post("/admin/codes/extend", data={"csrf_token": token, "code": stored[0], "expires_at": "2001-01-01T00:00"})
    assert past.status_code == 422 and 'id="e-expires_at"' in past.text and "future" in past.text
    bad = web.post("/admin/codes/reassign", data={"csrf_token": token, "code": stored[0], "recipient": "not an address"})
    assert bad.status_code in (409, 422) and 'id="e-recipient"' in bad.text
    ok = web.post("/admin/codes/reassign", data={"csrf_token": token, "code": stored[0], "recipient": "Ann@Example.com"})
    assert ok.status_code == 303, ok.text
    twice = web.post("/admin/codes/reassign", data={"csrf_token": token, "code": stored[1], "recipient": "ann@example.com"})
    assert twice.status_code == 409 and 'id="e-recipient"' in twice.text and "one recipient, one code" in twice.text
    void = web.post("/admin/codes/void", data={"csrf_token": token, "code": stored[0], "reason": "leaked"})
    assert void.status_code == 303 and _code(engine, stored[0]).status == "voided"
    story = web.get(void.headers["location"]).text
    for event in ("extended", "assigned", "voided"):
        assert f"<strong>{event}</strong>" in story
    with Session(engine) as session:
        actors = set(
            session.exec(select(AuditEvent.actor).where(col(AuditEvent.action).in_(["code.voided", "code.extended"]))).all()
        )
    assert actors == {a for a in actors if a.endswith(":owner@shop.example")} and actors


def test_filter_pages_walk_every_code_once(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=60, code_format=FMT, status="active")
    _token(web, admin_settings, shop_id)
    seen: list[str] = []
    url = f"/admin/codes?campaign_id={campaign_id}"
    while url:
        page = web.get(url)
        assert page.status_code == 200
        seen += re.findall(r"<td><a href=\"[^\"]*\"><code>([0-9A-Z]+)</code></a></td>", page.text)
        nxt = re.search(r'<a rel="next" href="([^"]+)"', page.text)
        url = nxt[1].replace("&amp;", "&") if nxt else ""
    assert sorted(seen) == sorted(stored)
    bad = web.get("/admin/codes", params={"status": "bogus", "campaign_id": "x"})
    assert bad.status_code == 422 and 'id="e-status"' in bad.text and 'id="e-campaign_id"' in bad.text


def test_bulk_void_names_the_count_and_never_all(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=7, code_format=FMT, status="active")
    _, kept = make_campaign(engine, shop_id, rules(), codes=2, code_format=FMT, status="active")
    token = _token(web, admin_settings, shop_id)
    empty = web.post("/admin/codes/bulk-void/confirm", data={"csrf_token": token})
    assert empty.status_code == 422 and 'id="e-bulk"' in empty.text and 'name="token"' not in empty.text
    counted = web.post("/admin/codes/bulk-void/confirm", data={"csrf_token": token, "campaign_id": str(campaign_id)})
    assert counted.status_code == 200 and "Void 7 active codes" in counted.text
    confirmation = re.search(r'name="token" value="([^"]+)"', counted.text)
    assert confirmation
    # a code voided meanwhile: the confirmed count no longer holds, nothing is voided
    web.post("/admin/codes/void", data={"csrf_token": token, "code": stored[0]})
    changed = web.post("/admin/codes/bulk-void", data={"csrf_token": token, "token": confirmation[1]})
    assert changed.status_code == 409 and "count them again" in changed.text
    again = web.post("/admin/codes/bulk-void/confirm", data={"csrf_token": token, "campaign_id": str(campaign_id)})
    assert "Void 6 active codes" in again.text
    fresh = re.search(r'name="token" value="([^"]+)"', again.text)
    assert fresh and web.post("/admin/codes/bulk-void", data={"token": fresh[1]}).status_code == 403  # CSRF
    done = web.post("/admin/codes/bulk-void", data={"csrf_token": token, "token": fresh[1], "reason": "leak"})
    assert done.status_code == 303 and "voided=6" in done.headers["location"]
    assert {_code(engine, c).status for c in stored} == {"voided"}
    assert {_code(engine, c).status for c in kept} == {"active"}


def test_generate_shows_progress_and_the_batch(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), code_format=FMT, status="active")
    token = _token(web, admin_settings, shop_id)
    answer = web.post(f"/admin/campaigns/{campaign_id}/generate", data={"csrf_token": token, "count": "250"})
    assert answer.status_code == 303 and "/admin/batches/" in answer.headers["location"]
    poll = {"HX-Request": "true", "HX-Target": "batch-progress"}  # what the figure's own poll sends
    partial = web.get(answer.headers["location"], headers=poll)
    assert partial.status_code == 200 and "<html" not in partial.text
    assert 'id="batch-figure">250 of 250<' in partial.text and 'id="batch-status">done<' in partial.text
    assert "hx-trigger" not in partial.text  # done: no more polling
    # the generate form's boosted POST lands on the batch page through htmx: the whole page, nav and all
    landed = web.get(answer.headers["location"], headers={"HX-Request": "true", "HX-Boosted": "true", "HX-Target": "main"})
    assert "<html" in landed.text and 'id="batch-progress"' in landed.text and "Redemption syncs" in landed.text
    with Session(engine) as session:
        batch = session.exec(select(Batch).where(col(Batch.campaign_id) == campaign_id)).one()
        assert batch.status == "queued" or batch.created == 250
        session.add(Batch(shop_id=shop_id, campaign_id=campaign_id, requested=1000, created=400, status="running"))
        session.commit()
        running = session.exec(select(Batch.id).where(col(Batch.status) == "running")).one()
    live = web.get(f"/admin/batches/{running}", headers=poll)
    assert 'id="batch-figure">400 of 1,000<' in live.text and 'hx-trigger="every 1s"' in live.text
    bad = web.post(f"/admin/campaigns/{campaign_id}/generate", data={"csrf_token": token, "count": "0"})
    assert bad.status_code == 422 and 'id="e-count"' in bad.text
    unsafe = web.post(f"/admin/campaigns/{campaign_id}/generate", data={"csrf_token": token, "count": "9000000"})
    assert unsafe.status_code == 422 and "Too many codes" in unsafe.text


def test_import_reports_each_bad_row_and_export_downloads(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=1, code_format=FMT, status="active")
    token = _token(web, admin_settings, shop_id)
    bad_csv = f"code\nGOOD2345\nGOOD2345\n{stored[0]}\nBAD!\n".encode()
    rejected = web.post(
        f"/admin/campaigns/{campaign_id}/import", data={"csrf_token": token}, files={"file": ("c.csv", bad_csv, "text/csv")}
    )
    assert rejected.status_code == 422 and 'id="import-report"' in rejected.text
    lines = re.findall(r'<tr><td class="num">(\d+)</td>', rejected.text)
    assert lines == ["3", "4", "5"]  # the duplicate, the existing code, the bad one, by line
    with Session(engine) as session:
        assert session.exec(select(Code).where(col(Code.campaign_id) == campaign_id)).all().__len__() == 1
    good = web.post(f"/admin/campaigns/{campaign_id}/import", data={"csrf_token": token},
                    files={"file": ("c.csv", b"code\nGOOD2345\nGOOD2346\n", "text/csv")})  # fmt: skip
    assert good.status_code == 303, good.text
    assert (
        web.post(f"/admin/campaigns/{campaign_id}/import", files={"file": ("c.csv", b"code\nX\n", "text/csv")}).status_code == 403
    )
    export = web.get(f"/admin/campaigns/{campaign_id}/export")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    rows = export.text.strip().splitlines()
    assert rows[0].startswith("code,stored_code") and len(rows) == 4 and any("GOOD2346" in r for r in rows)


def test_another_shops_codes_and_campaigns_answer_404(
    web, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    theirs, their_codes = make_campaign(engine, other_shop_id, rules(), codes=2, code_format=FMT, status="active")
    token = _token(web, admin_settings, shop_id)
    assert web.get("/admin/codes/find", params={"q": their_codes[0]}).status_code == 404
    assert web.post("/admin/codes/void", data={"csrf_token": token, "code": their_codes[0]}).status_code == 404
    assert web.get(f"/admin/campaigns/{theirs}/export").status_code == 404
    assert web.post(f"/admin/campaigns/{theirs}/generate", data={"csrf_token": token, "count": "5"}).status_code == 404
    files = {"file": ("c.csv", b"code\nGOOD2345\n", "text/csv")}
    assert web.post(f"/admin/campaigns/{theirs}/import", data={"csrf_token": token}, files=files).status_code == 404
    listed = web.get("/admin/codes", params={"campaign_id": str(theirs)})
    assert listed.status_code == 200 and "No codes match" in listed.text
    counted = web.post("/admin/codes/bulk-void/confirm", data={"csrf_token": token, "campaign_id": str(theirs)})
    assert 'name="token"' not in counted.text
    assert {_code(engine, c).status for c in their_codes} == {"active"}
