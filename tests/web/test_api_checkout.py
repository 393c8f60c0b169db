"""The checkout calls through the API: every refusal reason with its key and status, typo
suggestions, shopper messages per shop preference, reservations and idempotent redemptions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from plugin.errors import InvalidInput
from plugin.formats import codes as codes_mod
from plugin.rules.refusals import CATALOGUE, Reason
from plugin.store.models import Campaign, CustomerUsage, Redemption
from tests.web.conftest import (
    BASKET,
    FORMAT,
    Api,
    TestClient,
    basket,
    get_code,
    make_campaign,
    make_key,
    now,
    rules,
    set_code,
    set_preferences,
)


def redemption_count(engine: Engine, code: str | None = None) -> int:
    with Session(engine) as session:
        stmt = select(func.count()).select_from(Redemption)
        if code is not None:
            stmt = stmt.where(col(Redemption.code) == code)
        return int(session.exec(stmt).one())


def mistype(code: str) -> str:
    """The code with its last (check) character swapped for another symbol of the alphabet."""
    alphabet = codes_mod.CodeFormat.from_dict(FORMAT).alphabet
    return code[:-1] + next(ch for ch in alphabet if ch != code[-1])


# --- every refusal reason, table-driven ----------------------------------------------------


@dataclass
class Ctx:
    engine: Engine
    api: Api
    shop_id: int
    campaign_id: int
    codes: list[str]


@dataclass
class Case:
    reason: Reason
    rules: dict[str, Any] | None = field(default_factory=rules)
    # prepares the database and returns (typed code, extra request fields)
    setup: Callable[[Ctx], tuple[str, dict[str, Any]]] = lambda ctx: (ctx.codes[0], {})
    status: int = 409  # of POST /redemptions


def _voided(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    set_code(ctx.engine, ctx.shop_id, ctx.codes[0], status="voided")
    return ctx.codes[0], {}


def _used(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    assert ctx.api.redeem(ctx.codes[0], "first-order").status_code == 201
    return ctx.codes[0], {}


def _used_twice(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    set_code(ctx.engine, ctx.shop_id, ctx.codes[0], uses=2)
    return ctx.codes[0], {}


def _expired(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    set_code(ctx.engine, ctx.shop_id, ctx.codes[0], expires_at=now() - timedelta(minutes=1))
    return ctx.codes[0], {}


def _held(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    assert ctx.api.reserve(ctx.codes[0], "checkout-a").status_code == 201
    return ctx.codes[0], {"checkout_id": "checkout-b"}


def _status(action: str) -> Callable[[Ctx], tuple[str, dict[str, Any]]]:
    def setup(ctx: Ctx) -> tuple[str, dict[str, Any]]:
        assert ctx.api.post(f"/campaigns/{ctx.campaign_id}/{action}").status_code == 200
        return ctx.codes[0], {}

    return setup


def _bound(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    set_code(ctx.engine, ctx.shop_id, ctx.codes[0], customer_id="alice")
    return ctx.codes[0], {"customer": {"id": "mallory"}}


def _customer_used_campaign(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    assert ctx.api.redeem(ctx.codes[1], "earlier", customer={"email": "Bob@Example.com"}).status_code == 201
    return ctx.codes[0], {"customer": {"email": "bob@example.com"}}


def _budget_spent(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    assert ctx.api.redeem(ctx.codes[1], "earlier").status_code == 201
    return ctx.codes[0], {}


def _with(**extra: Any) -> Callable[[Ctx], tuple[str, dict[str, Any]]]:
    return lambda ctx: (ctx.codes[0], extra)


LATER = (now() + timedelta(days=30)).isoformat()

CASES = [
    Case(Reason.UNKNOWN_CODE, setup=lambda ctx: ("NO-SUCH-CODE", {}), status=404),
    Case(Reason.MISTYPED_CODE, setup=lambda ctx: (mistype(ctx.codes[0]), {})),
    Case(Reason.VOIDED, setup=_voided),
    Case(Reason.ALREADY_REDEEMED, setup=_used),
    Case(Reason.USAGE_LIMIT_REACHED, rules(usage={"uses_per_code": 2}), _used_twice),
    Case(Reason.EXPIRED, setup=_expired),
    Case(Reason.HELD_BY_OTHER_CHECKOUT, setup=_held),
    Case(Reason.CAMPAIGN_DRAFT, None),
    Case(Reason.CAMPAIGN_PAUSED, setup=_status("pause")),
    Case(Reason.CAMPAIGN_ENDED, setup=_status("end")),
    Case(Reason.NOT_YET_VALID, rules(time={"starts_at": LATER})),
    Case(Reason.CHANNEL_NOT_ALLOWED, rules(allowed_channels=["pos"]), _with(channel="online_store")),
    Case(Reason.CUSTOMER_REQUIRED, rules(usage={"uses_per_customer": 1})),
    Case(Reason.BOUND_TO_OTHER_CUSTOMER, setup=_bound),
    Case(Reason.CUSTOMER_LIMIT_REACHED, rules(usage={"uses_per_customer": 1}), _customer_used_campaign),
    Case(Reason.FIRST_ORDER_ONLY, rules(usage={"first_order_only": True}), _with(customer={"id": "c", "orders_count": 3})),
    Case(Reason.CURRENCY_MISMATCH, setup=_with(basket=basket(("p1", 2, 2500), currency="EUR"))),
    Case(Reason.NOT_COMBINABLE, setup=_with(basket={**BASKET, "applied_codes": ["OTHERCODE"]})),
    Case(Reason.NO_ELIGIBLE_ITEMS, rules(basket={"eligible": {"product_ids": ["p9"]}})),
    Case(Reason.MINIMUM_QUANTITY_NOT_MET, rules(basket={"minimum_quantity": 5})),
    Case(Reason.MINIMUM_SUBTOTAL_NOT_MET, rules(basket={"minimum_subtotal": 10_000})),
    Case(Reason.BUNDLE_NOT_MET, rules(discount={"type": "bundle", "buy_quantity": 3, "get_quantity": 1})),
    Case(Reason.BUDGET_EXHAUSTED, rules(budget={"max_redemptions": 1}), _budget_spent),
]


def test_the_table_covers_every_reason() -> None:
    assert {case.reason for case in CASES} == set(Reason)


def _prepare(case: Case, engine: Engine, api: Api, shop_id: int) -> tuple[Ctx, str, dict[str, Any]]:
    campaign_id, stored = make_campaign(engine, shop_id, case.rules, codes=3)
    ctx = Ctx(engine, api, shop_id, campaign_id, stored)
    typed, extra = case.setup(ctx)
    return ctx, typed, extra


@pytest.mark.parametrize("case", CASES, ids=[c.reason.value for c in CASES])
def test_every_reason_through_validate(case: Case, engine: Engine, api: Api, shop_id: int) -> None:
    _, typed, extra = _prepare(case, engine, api, shop_id)
    extra = dict(extra)
    body_basket = extra.pop("basket", BASKET)
    response = api.validate(typed, body_basket, **extra)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is False
    assert body["reason"] == case.reason.value
    assert body["message"]
    assert set(body["details"]) <= set(CATALOGUE[case.reason].detail_keys)
    assert body["shopper"]["reason"] == case.reason.value  # detailed mode is the default


@pytest.mark.parametrize("case", CASES, ids=[c.reason.value for c in CASES])
def test_every_reason_through_redemptions(case: Case, engine: Engine, api: Api, shop_id: int) -> None:
    ctx, typed, extra = _prepare(case, engine, api, shop_id)
    extra = dict(extra)
    body_basket = extra.pop("basket", BASKET)
    before = redemption_count(engine)
    uses_before = get_code(engine, shop_id, ctx.codes[0]).uses
    response = api.redeem(typed, "order-under-test", body_basket, **extra)
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["reason"] == case.reason.value
    assert problem["status"] == case.status
    # a refusal leaves nothing behind
    assert redemption_count(engine) == before
    assert get_code(engine, shop_id, ctx.codes[0]).uses == uses_before


def test_minimum_subtotal_details_say_how_much_more(engine: Engine, api: Api, shop_id: int) -> None:
    _, stored = make_campaign(engine, shop_id, rules(basket={"minimum_subtotal": 6000}), codes=1)
    body = api.validate(stored[0].lower()).json()
    assert body["reason"] == "minimum_subtotal_not_met"
    assert body["details"]["missing_amount"] == 1000
    assert "£10.00" in body["message"]


def test_a_valid_code_gives_its_discount_typed_any_way(engine: Engine, api: Api, shop_id: int) -> None:
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=1)
    display = codes_mod.display(codes_mod.CodeFormat.from_dict(FORMAT), stored[0])
    body = api.validate(f"  {display.lower()} ").json()
    assert body["valid"] is True
    assert body["code"] == stored[0]
    assert body["campaign_id"] == campaign_id
    assert body["discount"]["amount"] == 500
    assert "reason" not in body


# --- typo suggestions ------------------------------------------------------------------------


def test_a_mistyped_code_is_suggested_from_the_same_customers_codes_only(engine: Engine, api: Api, shop_id: int) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=2)
    alices = stored[0]
    set_code(engine, shop_id, alices, customer_id="alice")
    display = codes_mod.display(codes_mod.CodeFormat.from_dict(FORMAT), alices)
    typo = mistype(alices)

    own = api.validate(typo, customer={"id": "alice"}).json()
    assert own["reason"] == "mistyped_code"
    assert own["details"]["suggestion"] == display
    assert display in own["message"]

    for stranger in ({"id": "mallory"}, {"email": "mallory@example.com"}, None):
        extra = {"customer": stranger} if stranger else {}
        other = api.validate(typo, **extra).json()
        assert other["reason"] == "mistyped_code"
        assert "suggestion" not in other["details"]
        assert alices not in str(other) and display not in str(other)

    # In generic mode the suggestion (found among codes bound to whoever the caller *claims*
    # to be) never reaches the shopper; the merchant's systems still get it.
    set_preferences(engine, shop_id, detailed_refusals=False)
    generic = api.validate(typo, customer={"id": "alice"}).json()
    assert generic["details"]["suggestion"] == display
    assert generic["shopper"]["reason"] == "mistyped_code"
    assert "suggestion" not in generic["shopper"]["details"]
    assert display not in generic["shopper"]["message"] and alices not in str(generic["shopper"])


def test_an_unknown_code_is_suggested_only_to_its_owner_and_hidden_in_generic_mode(
    engine: Engine, api: Api, shop_id: int
) -> None:
    plain = {"length": 8}  # no check characters: a typo is simply unknown
    _, stored = make_campaign(engine, shop_id, rules(), codes=1, code_format=plain)
    code = stored[0]
    set_code(engine, shop_id, code, email="ann@example.com")
    i = next(i for i in range(len(code) - 1) if code[i] != code[i + 1])
    typo = code[:i] + code[i + 1] + code[i] + code[i + 2 :]  # two adjacent, different characters swapped
    assert typo != code

    own = api.validate(typo, customer={"email": "ANN@example.com"}).json()
    assert own["reason"] == "unknown_code"
    assert own["details"]["suggestion"] == code
    assert own["shopper"]["details"]["suggestion"] == code

    other = api.validate(typo, customer={"email": "eve@example.com"}).json()
    assert other["reason"] == "unknown_code" and other["details"] == {}

    set_preferences(engine, shop_id, detailed_refusals=False)
    generic = api.validate(typo, customer={"email": "ann@example.com"}).json()
    assert generic["details"]["suggestion"] == code  # the merchant still sees it
    assert generic["shopper"]["details"] == {}
    assert code not in generic["shopper"]["message"]


# --- generic vs detailed messages for the shopper ----------------------------------------------


def test_generic_mode_hides_whether_a_code_is_live(engine: Engine, api: Api, shop_id: int) -> None:
    _, stored = make_campaign(engine, shop_id, rules(basket={"minimum_subtotal": 10_000}), codes=2)
    assert api.redeem(stored[0], "o-1", basket(("p1", 5, 2500))).status_code == 201

    detailed_used = api.validate(stored[0]).json()
    assert detailed_used["shopper"] == {
        "reason": "already_redeemed",
        "message": "This code has already been used.",
        "details": {},
    }

    set_preferences(engine, shop_id, detailed_refusals=False)
    used = api.validate(stored[0]).json()
    unknown = api.validate("NOT-A-CODE-AT-ALL").json()
    assert used["reason"] == "already_redeemed"  # the merchant's systems get the exact reason
    assert used["shopper"] == unknown["shopper"]
    assert used["shopper"]["reason"] == "unknown_code"
    # basket reasons are no oracle: they stay detailed for the shopper
    short = api.validate(stored[1]).json()
    assert short["shopper"]["reason"] == "minimum_subtotal_not_met"
    assert short["shopper"]["details"]["missing_amount"] == 5000


# --- reservations -----------------------------------------------------------------------------


def test_a_reservation_is_idempotent_per_checkout(engine: Engine, api: Api, shop_id: int) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    first = api.reserve(stored[0], "chk-1", ttl_seconds=60)
    assert first.status_code == 201, first.text
    again = api.reserve(stored[0].lower(), "chk-1", ttl_seconds=600)
    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["expires_at"] > first.json()["expires_at"]  # extended, not duplicated
    assert api.validate(stored[0], checkout_id="chk-1").json()["valid"] is True
    held = api.reserve(stored[0], "chk-2")
    assert held.status_code == 409 and held.json()["reason"] == "held_by_other_checkout"


def test_a_reservation_expires(engine: Engine, api: Api, shop_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    assert api.reserve(stored[0], "chk-1", ttl_seconds=30).status_code == 201
    assert api.validate(stored[0], checkout_id="chk-2").json()["reason"] == "held_by_other_checkout"
    assert api.redeem(stored[0], "o-2", checkout_id="chk-2").json()["reason"] == "held_by_other_checkout"

    later = now() + timedelta(seconds=31)
    monkeypatch.setattr("plugin.web.api.utcnow", lambda: later)
    assert api.validate(stored[0], checkout_id="chk-2").json()["valid"] is True
    taken = api.reserve(stored[0], "chk-2")
    assert taken.status_code == 201 and taken.json()["active"] is True
    # now the first checkout is the one held off
    assert api.reserve(stored[0], "chk-1").json()["reason"] == "held_by_other_checkout"


def test_releasing_a_reservation_frees_the_code(engine: Engine, api: Api, shop_id: int) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    held = api.reserve(stored[0], "chk-1").json()
    released = api.delete(f"/reservations/{held['id']}")
    assert released.status_code == 200
    assert released.json()["active"] is False and released.json()["released_at"] is not None
    again = api.delete(f"/reservations/{held['id']}")
    assert again.status_code == 200 and again.json()["released_at"] == released.json()["released_at"]
    assert api.reserve(stored[0], "chk-2").status_code == 201
    assert api.delete("/reservations/999999").json()["reason"] == "reservation_not_found"


def test_redeeming_with_its_checkout_uses_the_hold_and_releases_it(engine: Engine, api: Api, shop_id: int) -> None:
    _, stored = make_campaign(engine, shop_id, rules(usage={"uses_per_code": 2}), codes=1)
    assert api.reserve(stored[0], "chk-1").status_code == 201
    assert api.reserve(stored[0], "chk-2").status_code == 201  # two uses: two holds fit
    assert api.reserve(stored[0], "chk-3").json()["reason"] == "held_by_other_checkout"
    assert api.redeem(stored[0], "o-1", checkout_id="chk-1").status_code == 201
    # chk-1's hold became a use: still no room for a third checkout, chk-2 still fits
    assert api.reserve(stored[0], "chk-3").json()["reason"] == "held_by_other_checkout"
    assert api.redeem(stored[0], "o-2", checkout_id="chk-2").status_code == 201
    assert api.validate(stored[0], checkout_id="chk-3").json()["reason"] == "usage_limit_reached"


def test_reservation_ttl_is_bounded(engine: Engine, api: Api, shop_id: int) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    for ttl in (5, 10**6):
        response = api.reserve(stored[0], "chk", ttl_seconds=ttl)
        assert response.status_code == 422 and response.json()["reason"] == "invalid_input"


# --- redemptions and rollbacks ------------------------------------------------------------------


def test_a_redemption_is_idempotent_per_order_and_code(engine: Engine, api: Api, shop_id: int) -> None:
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=1)
    first = api.redeem(stored[0], "order-1", customer={"id": "c1"})
    assert first.status_code == 201
    assert first.json()["amount"] == 500 and first.json()["subtotal"] == 5000 and first.json()["duplicate"] is False
    retry = api.redeem(stored[0].lower(), "order-1", customer={"id": "c1"})
    assert retry.status_code == 200
    assert retry.json()["id"] == first.json()["id"] and retry.json()["duplicate"] is True
    other = api.redeem(stored[0], "order-2")
    assert other.status_code == 409 and other.json()["reason"] == "already_redeemed"
    assert get_code(engine, shop_id, stored[0]).uses == 1
    assert redemption_count(engine) == 1
    with Session(engine) as session:
        campaign = session.get_one(Campaign, campaign_id)
        assert (campaign.redemption_count, campaign.discount_total) == (1, 500)


def test_a_rollback_is_idempotent_and_gives_the_use_back(engine: Engine, api: Api, shop_id: int) -> None:
    campaign_id, stored = make_campaign(engine, shop_id, rules(usage={"uses_per_customer": 1}), codes=1)
    who = {"customer": {"id": "c1"}}
    redemption = api.redeem(stored[0], "order-1", **who).json()
    assert api.validate(stored[0], **who).json()["reason"] == "already_redeemed"
    for _ in range(2):
        rolled = api.post(f"/redemptions/{redemption['id']}/rollback", {"reason": "refunded"})
        assert rolled.status_code == 200
        assert rolled.json()["status"] == "rolled_back" and rolled.json()["rolled_back_at"] is not None
    assert get_code(engine, shop_id, stored[0]).uses == 0
    with Session(engine) as session:
        campaign = session.get_one(Campaign, campaign_id)
        assert (campaign.redemption_count, campaign.discount_total) == (0, 0)
        usage = session.exec(select(CustomerUsage)).one()
        assert usage.uses == 0
    assert api.validate(stored[0], **who).json()["valid"] is True
    assert api.redeem(stored[0], "order-2", **who).status_code == 201
    assert api.post("/redemptions/424242/rollback", {}).json()["reason"] == "redemption_not_found"


# --- input and auth -------------------------------------------------------------------------


def test_bad_input_is_a_problem_with_a_reason(api: Api) -> None:
    for body in ({}, {"code": "X", "basket": {"currency": "pounds"}}, {"code": "X", "basket": BASKET, "surprise": 1}):
        response = api.post("/validate", body)
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["reason"] == "invalid_input"
        assert response.json()["details"]["errors"]
    broken = api.client.post("/api/v1/validate", headers={**api.headers, "content-type": "application/json"}, content=b"{nope")
    assert broken.status_code == 422 and broken.json()["reason"] == "invalid_input"


def test_keys_are_required_and_scoped(engine: Engine, api: Api, shop_id: int) -> None:
    from tests.web.conftest import make_key

    assert api.client.post("/api/v1/validate", json={"code": "X", "basket": BASKET}).status_code == 401
    bad = api.client.get("/api/v1/campaigns", headers={"Authorization": "Bearer cpy_nope_nope"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    checkout_only = Api(api.client, make_key(engine, shop_id, ("checkout",)))
    assert checkout_only.validate("X").status_code == 200
    refused = checkout_only.get("/campaigns")
    assert refused.status_code == 403 and refused.json()["reason"] == "insufficient_scope"


# --- storefront keys: the shopper's view only ---------------------------------------------------


def test_a_storefront_key_gets_only_the_shopper_view(engine: Engine, client: TestClient, shop_id: int) -> None:
    storefront = Api(client, make_key(engine, shop_id, ("storefront",)))
    _, stored = make_campaign(engine, shop_id, rules(basket={"minimum_subtotal": 10000}), codes=2)
    set_code(engine, shop_id, stored[1], status="voided")

    ok = storefront.validate(stored[0], basket(("p1", 4, 2500))).json()
    assert set(ok) == {"valid", "discount", "shopper"}
    assert ok["valid"] is True and ok["discount"]["amount"] == 1000 and ok["shopper"] is None

    short = storefront.validate(stored[0]).json()
    assert set(short) == {"valid", "discount", "shopper"} and short["valid"] is False
    assert short["shopper"]["reason"] == "minimum_subtotal_not_met"

    set_preferences(engine, shop_id, detailed_refusals=False)
    voided = storefront.validate(stored[1]).json()
    unknown = storefront.validate("NO-SUCH-CODE").json()
    assert set(voided) == {"valid", "discount", "shopper"}
    assert voided == unknown  # nothing tells a live code apart from an unknown one
    assert "voided" not in str(voided) and stored[1] not in str(voided)


def test_a_storefront_key_can_only_validate(engine: Engine, client: TestClient, shop_id: int) -> None:
    storefront = Api(client, make_key(engine, shop_id, ("storefront",)))
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    for response in (
        storefront.redeem(stored[0], "order-1"),
        storefront.reserve(stored[0], "chk-1"),
        storefront.get("/campaigns"),
        storefront.get("/redemptions"),
    ):
        assert response.status_code == 403 and response.json()["reason"] == "insufficient_scope"
    assert get_code(engine, shop_id, stored[0]).uses == 0


def test_the_document_says_what_a_storefront_key_gets(client: TestClient) -> None:
    operation = client.get("/api/v1/openapi.json").json()["paths"]["/api/v1/validate"]["post"]
    assert "`storefront`" in operation["description"] and "never the exact reason" in operation["description"]
    decision = client.get("/api/v1/openapi.json").json()["components"]["schemas"]["Decision"]
    assert decision["required"] == ["valid"]


def test_a_storefront_key_carries_no_other_scope(engine: Engine, shop_id: int) -> None:
    with pytest.raises(InvalidInput, match="storefront"):
        make_key(engine, shop_id, ("storefront", "checkout"))
