"""Promise 5 through the API: a key of one shop reads or changes nothing of another's."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from plugin.store.db import session_scope
from plugin.store.models import Batch, Campaign, Code, Redemption, Reservation
from tests.web.conftest import Api, get_code, make_campaign, rules


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything the API could change, to compare before and after."""
    with Session(engine) as session:
        return {
            model.__name__: sorted(repr(row.model_dump()) for row in session.exec(select(model)).all())
            for model in (Campaign, Batch, Code, Reservation, Redemption)
        }


def test_a_key_of_one_shop_reads_and_changes_nothing_of_another(engine: Engine, api: Api, other_api: Api, shop_id: int) -> None:
    # shop A: a campaign, a batch, a reservation and a redemption
    a_campaign = api.post("/campaigns", {"name": "A only", "currency": "GBP", "rules": rules()}).json()["id"]
    batch = api.post(f"/campaigns/{a_campaign}/batches", {"count": 3}).json()["id"]
    with Session(engine) as session:
        a_codes = [c.code for c in session.exec(select(Code).where(Code.campaign_id == a_campaign)).all()]
    assert len(a_codes) == 3
    reservation = api.reserve(a_codes[0], "chk-a").json()["id"]
    redemption = api.redeem(a_codes[1], "order-a").json()["id"]
    before = snapshot(engine)

    b = other_api
    assert b.get("/campaigns").json() == {"data": [], "count": 0}
    attempts = [
        b.get(f"/campaigns/{a_campaign}"),
        b.patch(
            f"/campaigns/{a_campaign}", {"name": "stolen", "rules": rules(discount={"type": "percentage", "percent": "100"})}
        ),
        *(b.post(f"/campaigns/{a_campaign}/{action}") for action in ("pause", "end", "activate", "resume")),
        b.post(f"/campaigns/{a_campaign}/batches", {"count": 5}),
        b.get(f"/batches/{batch}"),
        b.post("/reservations", {"code": a_codes[2], "checkout_id": "chk-b"}),
        b.delete(f"/reservations/{reservation}"),
        b.redeem(a_codes[2], "order-b"),
        b.post(f"/redemptions/{redemption}/rollback", {"reason": "mine now"}),
    ]
    for response in attempts:
        assert response.status_code == 404, (response.request.method, response.request.url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert a_codes[2] not in response.text and "A only" not in response.text

    for code in a_codes:  # to shop B these codes don't exist, whatever state they are in
        decision = b.validate(code).json()
        assert decision["valid"] is False and decision["reason"] == "unknown_code"
        assert decision["campaign_id"] is None
    assert snapshot(engine) == before


def test_the_same_code_in_two_shops_is_two_codes(
    engine: Engine, api: Api, other_api: Api, shop_id: int, other_shop_id: int
) -> None:
    a_campaign, codes = make_campaign(engine, shop_id, rules(), codes=1)
    b_campaign, _ = make_campaign(engine, other_shop_id, rules(discount={"type": "fixed", "amount": 700}))
    with session_scope(engine) as session:
        session.add(Code(shop_id=other_shop_id, campaign_id=b_campaign, code=codes[0]))

    b_redeemed = other_api.redeem(codes[0], "order-1")
    assert b_redeemed.status_code == 201 and b_redeemed.json()["amount"] == 700
    assert b_redeemed.json()["campaign_id"] == b_campaign
    # A's code is untouched by B's redemption, and A redeems its own with A's rules
    assert get_code(engine, shop_id, codes[0]).uses == 0
    a_decision = api.validate(codes[0]).json()
    assert a_decision["valid"] is True and a_decision["campaign_id"] == a_campaign and a_decision["discount"]["amount"] == 500
    a_redeemed = api.redeem(codes[0], "order-1")
    assert a_redeemed.status_code == 201 and a_redeemed.json()["id"] != b_redeemed.json()["id"]
    # B's redemption is not A's to roll back, and the reverse
    assert api.post(f"/redemptions/{b_redeemed.json()['id']}/rollback", {}).status_code == 404
    assert other_api.post(f"/redemptions/{a_redeemed.json()['id']}/rollback", {}).status_code == 404
    assert get_code(engine, other_shop_id, codes[0]).uses == 1


def test_typo_suggestions_never_cross_shops(engine: Engine, api: Api, other_api: Api, shop_id: int) -> None:
    _, codes = make_campaign(engine, shop_id, rules(), codes=1, code_format={"length": 8})
    with session_scope(engine) as session:
        row = session.exec(select(Code).where(Code.code == codes[0])).one()
        row.customer_id = "shared-id"
        session.add(row)
    typo = codes[0][:-1] + ("A" if codes[0][-1] != "A" else "B")
    assert api.validate(typo, customer={"id": "shared-id"}).json()["details"]["suggestion"] == codes[0]
    decision = other_api.validate(typo, customer={"id": "shared-id"}).json()
    assert decision["reason"] == "unknown_code" and decision["details"] == {}
