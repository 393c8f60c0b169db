"""Listing redemptions and webhook deliveries: filters, cursor paging, validated queries, and
tenant isolation (promise 5)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from plugin.orders import webhooks
from plugin.store.db import session_scope
from plugin.store.models import Redemption, WebhookEvent
from tests.web.conftest import Api, TestClient, make_campaign, make_key, rules


def _pages(api: Api, path: str, **query: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        body = api.get(path, params=params).json()
        pages.append(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def _flag(engine: Engine, redemption_id: int, reason: str) -> None:
    with session_scope(engine) as session:
        row = session.get_one(Redemption, redemption_id)
        row.flagged_reason = reason
        session.add(row)


def test_redemptions_are_listed_newest_first_filtered_and_paged(engine: Engine, api: Api, shop_id: int) -> None:
    first, a_codes = make_campaign(engine, shop_id, rules(), codes=4)
    second, b_codes = make_campaign(engine, shop_id, rules(), codes=1)
    ids = [api.redeem(code, f"order-{i}").json()["id"] for i, code in enumerate(a_codes)]
    other = api.redeem(b_codes[0], "order-b").json()["id"]
    assert api.post(f"/redemptions/{ids[0]}/rollback", {"reason": "refund"}).status_code == 200
    _flag(engine, ids[1], "expired")

    everything = api.get("/redemptions").json()
    assert [r["id"] for r in everything["data"]] == [other, *reversed(ids)] and everything["next_cursor"] is None

    pages = _pages(api, "/redemptions", limit=2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [r["id"] for p in pages for r in p] == [other, *reversed(ids)]

    def listed(**query: Any) -> list[int]:
        return [r["id"] for r in api.get("/redemptions", params=query).json()["data"]]

    assert listed(campaign_id=second) == [other]
    assert listed(campaign_id=first, status="rolled_back") == [ids[0]]
    assert listed(campaign_id=first, status="active") == [ids[3], ids[2], ids[1]]
    assert listed(flagged="true") == [ids[1]]
    assert listed(flagged="false", campaign_id=first) == [ids[3], ids[2], ids[0]]
    assert api.get("/redemptions", params={"flagged": "true"}).json()["data"][0]["flagged_reason"] == "expired"


@pytest.mark.parametrize(
    "query",
    [
        {"status": "gone"},
        {"flagged": "yes"},
        {"campaign_id": "abc"},
        {"campaign_id": str(2**31)},
        {"limit": "0"},
        {"limit": "501"},
        {"cursor": "-1"},
        {"cursor": "x"},
        {"cursor": str(2**63)},
    ],
)
def test_redemption_filters_are_validated(api: Api, query: dict[str, str]) -> None:
    response = api.get("/redemptions", params=query)
    assert response.status_code == 422 and response.json()["reason"] == "invalid_query"


def _delivery(engine: Engine, shop_id: int, n: int, **values: Any) -> int:
    with session_scope(engine) as session:
        event_id, _ = webhooks.store_delivery(
            session, platform=values.pop("platform", "sandbox"), delivery_id=f"d-{shop_id}-{n}", topic="orders/create",
            shop_id=shop_id, payload="{}", headers={}, status=values.pop("status", "processed"),
        )  # fmt: skip
        if values:
            event = session.get_one(WebhookEvent, event_id)
            for name, value in values.items():
                setattr(event, name, value)
            session.add(event)
    return event_id


def test_webhook_deliveries_are_listed_filtered_and_paged(engine: Engine, api: Api, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules())
    plain = _delivery(engine, shop_id, 1)
    failed = _delivery(engine, shop_id, 2, status="failed", error="boom")
    flagged = _delivery(engine, shop_id, 3, flagged=True, campaign_id=campaign_id, order_id="o-3")
    shopify = _delivery(engine, shop_id, 4, platform="shopify")

    body = api.get("/webhooks").json()
    assert [d["id"] for d in body["data"]] == [shopify, flagged, failed, plain] and body["next_cursor"] is None
    assert "payload" not in body["data"][0]

    pages = _pages(api, "/webhooks", limit=3)
    assert [[d["id"] for d in p] for p in pages] == [[shopify, flagged, failed], [plain]]

    def listed(**query: Any) -> list[int]:
        return [d["id"] for d in api.get("/webhooks", params=query).json()["data"]]

    assert listed(status="failed") == [failed]
    assert listed(flagged="true") == [flagged]
    assert listed(campaign_id=campaign_id) == [flagged]
    assert listed(platform="shopify") == [shopify]
    assert listed(platform="sandbox", flagged="false") == [failed, plain]


@pytest.mark.parametrize(
    "query",
    [
        {"status": "lost"},
        {"flagged": "1"},
        {"platform": "Shop ify"},
        {"platform": "a" * 33},
        {"platform": "x\x00y"},
        {"campaign_id": "-3"},
        {"limit": "1000"},
        {"cursor": "abc"},
    ],
)
def test_webhook_filters_are_validated(api: Api, query: dict[str, str]) -> None:
    response = api.get("/webhooks", params=query)
    assert response.status_code == 422 and response.json()["reason"] == "invalid_query"


def test_listings_need_the_admin_scope(engine: Engine, client: TestClient, shop_id: int) -> None:
    checkout = Api(client, make_key(engine, shop_id, ("checkout",)))
    for path in ("/redemptions", "/webhooks"):
        response = checkout.get(path)
        assert response.status_code == 403 and response.json()["reason"] == "insufficient_scope"


def test_listings_never_show_another_shops_rows(
    engine: Engine, api: Api, other_api: Api, shop_id: int, other_shop_id: int
) -> None:
    campaign_id, codes = make_campaign(engine, shop_id, rules(), codes=1)
    redemption = api.redeem(codes[0], "order-a").json()["id"]
    _flag(engine, redemption, "expired")
    _delivery(engine, shop_id, 1, flagged=True, campaign_id=campaign_id)
    other_delivery = _delivery(engine, other_shop_id, 2)

    assert other_api.get("/redemptions").json() == {"data": [], "next_cursor": None}
    for query in ({"campaign_id": campaign_id}, {"flagged": "true"}, {"cursor": redemption + 1}):
        assert other_api.get("/redemptions", params=query).json()["data"] == []
    assert [d["id"] for d in other_api.get("/webhooks").json()["data"]] == [other_delivery]
    for query, expected in (
        ({"campaign_id": campaign_id}, []),
        ({"flagged": "true"}, []),
        ({"platform": "sandbox", "status": "processed"}, [other_delivery]),
    ):
        assert [d["id"] for d in other_api.get("/webhooks", params=query).json()["data"]] == expected
    assert codes[0] not in other_api.get("/redemptions").text
