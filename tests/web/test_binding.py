"""Issue 13, "bound where promised": the campaign's `distribution.binding` policy. Under
`claim` a claim binds the code to its recipient (validation refuses anyone else, a platform
order from anyone else is flagged on both webhook paths); under `shareable` (the default) the
code is a gift. The claim page says which. A CSV import's `email` / `customer_id` columns bind
the codes they name. On the real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.campaigns import issuing
from plugin.checkout.redemptions import record_redemption
from plugin.orders.bulk_redemptions import Use, record_webhook_redemptions
from plugin.rules import CampaignRules
from plugin.store import caches
from plugin.store.db import session_scope
from plugin.store.models import Code, utcnow
from tests.web.conftest import Api, TestClient, make_campaign, rules

BOUND = rules(distribution={"binding": "claim"})
SHAREABLE = rules(distribution={"binding": "shareable"})
REFUSED = "bound_to_other_customer"


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    caches.bump()  # PostgreSQL tests reuse ids after each truncation


def _claim(api: Api, campaign_id: int, **who: str) -> dict[str, Any]:
    got = api.post(f"/campaigns/{campaign_id}/claims", who)
    assert got.status_code == 201, got.text
    body: dict[str, Any] = got.json()
    return body


def _code(engine: Engine, stored: str) -> Code:
    with Session(engine) as session:
        return session.exec(select(Code).where(col(Code.code) == stored)).one()


def _valid(api: Api, code: str, customer: dict[str, str]) -> tuple[bool, str | None]:
    body = api.validate(code, customer=customer).json()
    return body["valid"], body.get("reason")


# --- the rule -------------------------------------------------------------------------------


def test_the_policy_is_a_validated_rule_shareable_by_default() -> None:
    plain = CampaignRules.model_validate(rules())
    assert plain.distribution.binding == "shareable"  # as before the rule existed
    assert CampaignRules.model_validate(BOUND).distribution.binding == "claim"
    with pytest.raises(ValidationError, match="binding"):
        CampaignRules.model_validate(rules(distribution={"binding": "mine"}))
    with pytest.raises(ValidationError):
        CampaignRules.model_validate(rules(distribution={"binding": "claim", "extra": 1}))


# --- validation -----------------------------------------------------------------------------


def test_a_claim_binds_the_code_to_its_email_recipient(api: Api, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, BOUND, codes=3)
    got = _claim(api, campaign_id, email="Ann@Example.com")
    code = _code(engine, got["stored_code"])
    assert (code.email, code.customer_id, code.recipient) == ("ann@example.com", None, "ann@example.com")
    assert _valid(api, got["code"], {"email": "bob@example.com"}) == (False, REFUSED)
    assert _valid(api, got["code"], {"email": "ANN@example.com"}) == (True, None)
    refused = api.redeem(got["code"], "order-bob", customer={"email": "bob@example.com"})
    assert refused.status_code == 409 and refused.json()["reason"] == REFUSED
    assert api.redeem(got["code"], "order-ann", customer={"email": "ann@example.com"}).status_code == 201


def test_a_claim_for_a_customer_id_binds_the_id(api: Api, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, BOUND, codes=3)
    got = _claim(api, campaign_id, customer_id="cust-7")
    code = _code(engine, got["stored_code"])
    assert (code.email, code.customer_id) == (None, "cust-7")
    assert _valid(api, got["code"], {"id": "cust-8"}) == (False, REFUSED)
    assert _valid(api, got["code"], {"id": "cust-7", "email": "whoever@example.com"}) == (True, None)


def test_a_shareable_code_is_valid_for_anyone(api: Api, engine: Engine, shop_id: int) -> None:
    for rule_set in (SHAREABLE, rules()):  # the default is shareable
        campaign_id, _ = make_campaign(engine, shop_id, rule_set, codes=2)
        got = _claim(api, campaign_id, email="ann@example.com")
        code = _code(engine, got["stored_code"])
        assert (code.email, code.customer_id) == (None, None)
        assert _valid(api, got["code"], {"email": "bob@example.com"}) == (True, None)
        assert _valid(api, got["code"], {"email": "ann@example.com"}) == (True, None)


def test_a_phone_recipient_binds_nothing(api: Api, engine: Engine, shop_id: int) -> None:
    """A checkout knows no phone: binding one would refuse everyone, the recipient too."""
    campaign_id, _ = make_campaign(engine, shop_id, BOUND, codes=2)
    got = _claim(api, campaign_id, phone="+1 555 555 0100")
    code = _code(engine, got["stored_code"])
    assert (code.email, code.customer_id, code.recipient) == (None, None, "+15555550100")
    assert _valid(api, got["code"], {"email": "bob@example.com"}) == (True, None)


def test_a_referrers_own_code_is_never_bound(api: Api, engine: Engine, shop_id: int) -> None:
    reward_id, _ = make_campaign(engine, shop_id, rules(), name="Rewards")
    referral_id, _ = make_campaign(engine, shop_id, rules(usage={"uses_per_code": None}, distribution={"binding": "claim"}),
                                   codes=2, name="Refer")  # fmt: skip
    api.post("/referral-programs", {"campaign_id": referral_id, "reward_campaign_id": reward_id})
    code = _claim(api, referral_id, customer_id="ref-1")["code"]
    assert api.redeem(code, "order-1", customer={"id": "friend-1"}).status_code == 201


# --- the claim page -------------------------------------------------------------------------


def _page(api: Api, client: TestClient, campaign_id: int, **who: str) -> str:
    got = _claim(api, campaign_id, **who)
    page = client.get(urlsplit(got["claim_url"]).path)
    assert page.status_code == 200 and got["code"] in page.text
    return page.text


def test_the_claim_page_promises_exclusivity_only_for_a_bound_code(
    api: Api, client: TestClient, engine: Engine, shop_id: int
) -> None:
    bound_id, _ = make_campaign(engine, shop_id, BOUND, codes=3, name="Bound")
    shared_id, _ = make_campaign(engine, shop_id, SHAREABLE, codes=3, name="Gift")
    bound = _page(api, client, bound_id, email="ann@example.com")
    assert "yours alone" in bound and "works only for" in bound
    assert "yours alone" in _page(api, client, bound_id, customer_id="cust-1")
    phone = _page(api, client, bound_id, phone="+15555550100")
    assert "yours alone" not in phone and "anyone who enters this code can use it" in phone
    gift = _page(api, client, shared_id, email="ann@example.com")
    assert "yours alone" not in gift and "pass it on as a gift" in gift
    # a repeat visit (the held claim, read back) says the same
    assert "yours alone" in _page_again(client, api, bound_id, "ann@example.com")


def _page_again(client: TestClient, api: Api, campaign_id: int, email: str) -> str:
    again = api.post(f"/campaigns/{campaign_id}/claims", {"email": email})
    assert again.status_code == 200
    return client.get(urlsplit(again.json()["claim_url"]).path).text


# --- platform orders: both webhook paths ----------------------------------------------------


def _bound_code(engine: Engine, shop_id: int, api: Api) -> str:
    campaign_id, _ = make_campaign(engine, shop_id, rules(usage={"uses_per_code": None}, distribution={"binding": "claim"}),
                                   codes=2)  # fmt: skip
    return str(_claim(api, campaign_id, email="ann@example.com")["stored_code"])


def test_a_platform_order_from_someone_else_is_flagged(api: Api, engine: Engine, shop_id: int) -> None:
    stored = _bound_code(engine, shop_id, api)
    flags = {}
    for order_id, email in (("o-bob", "bob@example.com"), ("o-ann", "Ann@Example.com")):
        with session_scope(engine) as session:
            done = record_redemption(session, shop_id=shop_id, code=stored, order_id=order_id, now=utcnow(), email=email)
            flags[order_id] = done.redemption.flagged_reason
    assert flags == {"o-bob": REFUSED, "o-ann": None}  # recorded (the platform took it), and flagged


def test_a_batch_of_platform_orders_flags_the_same(api: Api, engine: Engine, shop_id: int) -> None:
    stored = _bound_code(engine, shop_id, api)
    uses = [
        Use(shop_id=shop_id, code=stored, order_id="o-bob", email="bob@example.com"),
        Use(shop_id=shop_id, code=stored, order_id="o-ann", email="Ann@Example.com"),
        Use(shop_id=shop_id, code=stored, order_id="o-cid", customer_id="someone", email="ann@example.com"),
    ]
    with session_scope(engine) as session:
        recorded = record_webhook_redemptions(session, uses, now=utcnow())
    assert [r.flagged_reason if r else "missing" for r in recorded] == [REFUSED, None, None]


# --- CSV import -----------------------------------------------------------------------------


def _import(engine: Engine, shop_id: int, campaign_id: int, lines: list[str]) -> None:
    issuing.import_codes(engine, shop_id=shop_id, campaign_id=campaign_id, lines=[line + "\n" for line in lines])


def test_an_import_with_email_and_customer_id_columns_binds_its_codes(api: Api, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules())  # binding by import needs no policy
    lines = ["Customer_ID,code,Email", ",ANN10,Ann@Example.com", "c-2,BOB10,", "c-3,CAT10,cat@example.com", ",FREE10,"]
    _import(engine, shop_id, campaign_id, lines)
    got = {c: _code(engine, c) for c in ("ANN10", "BOB10", "CAT10", "FREE10")}
    assert {c: (k.email, k.customer_id, k.recipient) for c, k in got.items()} == {
        "ANN10": ("ann@example.com", None, "ann@example.com"),
        "BOB10": (None, "c-2", "id:c-2"),
        "CAT10": ("cat@example.com", "c-3", "id:c-3"),
        "FREE10": (None, None, None),
    }
    assert all(k.assigned_at is not None for c, k in got.items() if c != "FREE10")
    assert _valid(api, "ANN10", {"email": "bob@example.com"}) == (False, REFUSED)
    assert _valid(api, "ANN10", {"email": "ann@example.com"}) == (True, None)
    assert _valid(api, "BOB10", {"id": "c-9"}) == (False, REFUSED)
    assert _valid(api, "FREE10", {"id": "c-9"}) == (True, None)
    # an imported code is its person's: their claim answers with it, nobody else's claim takes it
    assert api.post(f"/campaigns/{campaign_id}/claims", {"email": "ann@example.com"}).json()["stored_code"] == "ANN10"
    assert _claim(api, campaign_id, email="dan@example.com")["stored_code"] == "FREE10"


def test_an_import_names_each_bad_binding_by_its_line_and_imports_nothing(api: Api, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1)
    _claim(api, campaign_id, email="held@example.com")
    lines = [
        "code,email,customer_id",
        "GOOD1,ann@example.com,",
        "BAD2,not-an-email,",
        "BAD3,ANN@example.com,",
        "BAD4,held@example.com,",
        "BAD5,,\x01",
        "GOOD6,,c-6",
    ]
    with pytest.raises(issuing.ImportRejected) as rejected:
        _import(engine, shop_id, campaign_id, lines)
    by_row = {e.row: e.reason for e in rejected.value.errors}
    assert set(by_row) == {3, 4, 5, 6}
    assert "not an email address" in by_row[3]
    assert by_row[4] == "names the same person as row 2 (one code per person)"
    assert by_row[5] == "this person already holds a code of this campaign"
    assert "customer id" in by_row[6]
    with Session(engine) as session:
        assert session.exec(select(Code).where(col(Code.code).in_(["GOOD1", "GOOD6"]))).all() == []
    with pytest.raises(issuing.InvalidInput, match="names no code column"):
        _import(engine, shop_id, campaign_id, ["email", "ann@example.com"])
