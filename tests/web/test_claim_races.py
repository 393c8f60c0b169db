"""Promise 2 under real concurrency, over HTTP: uvicorn server processes on the test database
(one on SQLite, two on PostgreSQL, as tests/web/test_races.py runs them), hammered by a pool of
client threads. Every figure is checked in the answers and again in the database."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from plugin.store.models import Code
from tests.web.conftest import make_campaign, make_key, rules
from tests.web.test_races import Fleet, servers  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def test_1000_concurrent_claims_for_500_codes(servers: list[str], engine: Engine, shop_id: int) -> None:  # noqa: F811
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=500)
    fleet = Fleet(servers, make_key(engine, shop_id, ("distribution",)))
    people = [f"person{i}@example.com" for i in range(1000)]
    jobs = [(f"/campaigns/{campaign_id}/claims", {"email": p}) for p in people]
    results = fleet.fire(jobs)
    outcome = Counter((status, body.get("reason")) for status, body in results)
    assert outcome == {(201, None): 500, (409, "pool_exhausted"): 500}, outcome
    given = {body["recipient"]: body["stored_code"] for status, body in results if status == 201}
    assert len(set(given.values())) == 500  # 500 recipients, 500 distinct codes
    with Session(engine) as session:
        held = dict(session.exec(select(Code.recipient, Code.code).where(col(Code.recipient).is_not(None))).all())
    assert held == given


def test_the_same_recipients_claiming_at_once_get_one_code_each(servers: list[str], engine: Engine, shop_id: int) -> None:  # noqa: F811
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=300)
    fleet = Fleet(servers, make_key(engine, shop_id, ("distribution",)))
    people = [f"person{i}@example.com" for i in range(100)]
    jobs = [(f"/campaigns/{campaign_id}/claims", {"email": p}) for p in people for _ in range(5)]  # each 5 times at once
    results = fleet.fire(jobs)
    assert {status for status, _ in results} <= {200, 201}
    created = Counter(body["recipient"] for status, body in results if status == 201)
    assert created == Counter(people)  # exactly one call per recipient assigned a code
    codes_by_person: dict[str, set[str]] = {}
    for _, body in results:
        codes_by_person.setdefault(body["recipient"], set()).add(body["stored_code"])
    assert all(len(c) == 1 for c in codes_by_person.values())
    with Session(engine) as session:
        assigned = session.exec(select(func.count()).where(col(Code.recipient).is_not(None))).one()
    assert assigned == 100
