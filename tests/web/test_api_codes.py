"""The per-code API (/api/v1/codes/{code}...): reassign, idempotence, tenancy, refusals."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import col, func, select

from plugin.orders import privacy
from plugin.store.db import session_scope
from plugin.store.models import AuditEvent, Code, Job, utcnow
from tests.web.conftest import Api, make_campaign, make_key, rules, set_code


def _audits(engine: Engine, action: str) -> int:
    with session_scope(engine) as session:
        return session.exec(select(func.count()).select_from(AuditEvent).where(col(AuditEvent.action) == action)).one()


def test_reassign_moves_a_live_code_and_keeps_one_code_per_recipient(api: Api, engine: Engine, shop_id: int) -> None:
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=3)
    code = api.post(f"/campaigns/{campaign_id}/claims", {"email": "ann@example.com"}).json()["code"]
    set_code(engine, shop_id, code, email="ann@example.com")  # bound to Ann
    moved = api.post(f"/codes/{code}/reassign", {"recipient": "Bob@Example.com"})
    again = api.post(f"/codes/{code}/reassign", {"recipient": "bob@example.com"})
    assert moved.status_code == again.status_code == 200
    assert moved.json()["recipient"] == "bob@example.com"
    assert _audits(engine, "code.reassigned") == 1  # the same recipient again changes nothing
    with session_scope(engine) as session:
        row = session.exec(select(Code).where(col(Code.code) == code)).one()
        assert row.email == "bob@example.com"  # the binding followed the code
    # Bob now has his code: a claim for him answers it; Ann gets another
    assert api.post(f"/campaigns/{campaign_id}/claims", {"email": "bob@example.com"}).json()["code"] == code
    other = api.post(f"/campaigns/{campaign_id}/claims", {"email": "ann@example.com"}).json()["code"]
    (used,) = set(stored) - {code, other}
    taken = api.post(f"/codes/{other}/reassign", {"recipient": "bob@example.com"})
    assert taken.status_code == 409 and taken.json()["reason"] == "recipient_has_code"
    assert api.redeem(used, "order-1").status_code == 201
    refused = api.post(f"/codes/{used}/reassign", {"recipient": "cy@example.com"})
    assert refused.status_code == 409 and refused.json()["reason"] == "code_used"
    assert api.post(f"/codes/{other}/void").status_code == 200
    voided = api.post(f"/codes/{other}/reassign", {"recipient": "cy@example.com"})
    assert voided.status_code == 409 and voided.json()["reason"] == "code_voided"
    story = [e["event"] for e in api.get(f"/codes/{code}").json()["events"]]
    assert story.count("assigned") == 1  # the claim's assignment is told by the reassign's audit


def test_reassign_refuses_a_held_or_expired_code(api: Api, engine: Engine, shop_id: int) -> None:
    _, (held, lapsed) = make_campaign(engine, shop_id, rules(), codes=2)
    assert api.reserve(held, "co-1").status_code == 201
    answer = api.post(f"/codes/{held}/reassign", {"recipient": "+447700900123"})
    assert answer.status_code == 409 and answer.json()["reason"] == "code_held"
    set_code(engine, shop_id, lapsed, expires_at=utcnow() - timedelta(minutes=1))
    answer = api.post(f"/codes/{lapsed}/reassign", {"recipient": "+447700900123"})
    assert answer.status_code == 409 and answer.json()["reason"] == "code_expired"


def test_void_is_idempotent_and_refused_by_validation(api: Api, engine: Engine, shop_id: int) -> None:
    _, (code,) = make_campaign(engine, shop_id, rules(), codes=1)
    assert api.validate(code).json()["valid"] is True
    for _ in range(2):
        answer = api.post(f"/codes/{code}/void", {"reason": "leaked"})
        assert answer.status_code == 200 and answer.json()["status"] == "voided"
    assert _audits(engine, "code.voided") == 1
    with session_scope(engine) as session:  # never synced: no platform job to queue
        assert session.exec(select(func.count()).select_from(Job)).one() == 0
    assert api.validate(code).json()["reason"] == "voided"
    assert api.redeem(code, "order-9").status_code == 409
    extended = api.post(f"/codes/{code}/extend", {"expires_at": (utcnow() + timedelta(days=1)).isoformat()})
    assert extended.status_code == 409 and extended.json()["reason"] == "code_voided"


def test_another_shops_key_finds_nothing(api: Api, other_api: Api, engine: Engine, shop_id: int) -> None:
    _, (code,) = make_campaign(engine, shop_id, rules(), codes=1)
    future = (utcnow() + timedelta(days=1)).isoformat()
    answers = [
        other_api.get(f"/codes/{code}"),
        other_api.post(f"/codes/{code}/void"),
        other_api.post(f"/codes/{code}/extend", {"expires_at": future}),
        other_api.post(f"/codes/{code}/reassign", {"recipient": "ann@example.com"}),
    ]
    assert [a.status_code for a in answers] == [404] * 4
    assert all("suggestion" not in (a.json().get("details") or {}) for a in answers)
    assert api.get(f"/codes/{code}").json()["status"] == "active"
    assert _audits(engine, "code.voided") == 0


def test_bad_input_gets_a_clear_4xx(api: Api, client: object, engine: Engine, shop_id: int) -> None:
    _, (code,) = make_campaign(engine, shop_id, rules(), codes=1)
    typo = code[:3] + ("A" if code[3] != "A" else "B") + code[4:]
    missing = api.get(f"/codes/{typo}")
    assert missing.status_code == 404 and missing.json()["reason"] in ("code_not_found", "mistyped_code")
    past = api.post(f"/codes/{code}/extend", {"expires_at": (utcnow() - timedelta(days=1)).isoformat()})
    assert past.status_code == 422 and past.json()["reason"] == "invalid_expiry"
    naive = api.post(f"/codes/{code}/extend", {"expires_at": "2099-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["reason"] == "invalid_expiry"
    garbage = api.post(f"/codes/{code}/extend", {"expires_at": "soon"})
    assert garbage.status_code == 422
    nobody = api.post(f"/codes/{code}/reassign", {"recipient": "not a person"})
    assert nobody.status_code == 422 and nobody.json()["reason"] == "invalid_recipient"
    extra = api.post(f"/codes/{code}/void", {"why": "x"})
    assert extra.status_code == 422
    checkout_only = Api(api.client, make_key(engine, shop_id, ("checkout",)))
    assert checkout_only.post(f"/codes/{code}/void").status_code == 403
    assert api.get(f"/codes/{code}").json()["status"] == "active"


def test_a_likely_typo_gets_a_suggestion(api: Api, engine: Engine, shop_id: int) -> None:
    _, (code,) = make_campaign(engine, shop_id, rules(), codes=1, code_format={"length": 10})
    i = next(i for i in range(len(code) - 1) if code[i] != code[i + 1])
    swapped = code[:i] + code[i + 1] + code[i] + code[i + 2 :]
    answer = api.get(f"/codes/{swapped.lower()}")
    assert answer.status_code == 404 and answer.json()["reason"] == "code_not_found"
    assert answer.json()["details"]["suggestion"] == code
    shown = api.get(f"/codes/{code[:5].lower()}-{code[5:]}")
    assert shown.status_code == 200 and shown.json()["code"] == code


def test_customers_redact_forgets_the_recipients_of_reassigned_codes(api: Api, engine: Engine, shop_id: int) -> None:
    _, (code, _) = make_campaign(engine, shop_id, rules(), codes=2)
    assert api.post(f"/codes/{code}/reassign", {"recipient": "ann@example.com"}).status_code == 200
    assert api.post(f"/codes/{code}/reassign", {"recipient": "id:42"}).status_code == 200
    with session_scope(engine) as session:
        privacy.redact_customer(session, shop_id, email="ann@example.com", customer_id=None, actor="test")
    with session_scope(engine) as session:
        query = select(AuditEvent).where(col(AuditEvent.action) == "code.reassigned").order_by(col(AuditEvent.id))
        details = [a.details for a in session.exec(query)]
    assert [(d["recipient"], d["previous"]) for d in details] == [("redacted", None), ("id:42", "redacted")]
