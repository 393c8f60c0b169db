"""GET /api/v1/campaigns/{id}/results: the totals partners have always read, the admin key's
partner filter, groupings, ranges, CSV of the table and of the redemption log, refusals with a
reason, and no other shop's or partner's figures."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from plugin.shops import timezones
from plugin.store.db import session_scope
from tests.web.conftest import Api, make_campaign, rules


def _setup(api: Api, client: TestClient, engine: Engine, shop_id: int) -> tuple[int, dict[str, int], Api, Api]:
    with session_scope(engine) as session:
        timezones.set_timezone(session, shop_id, "Europe/London")
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=6)
    acme = api.post("/partners", {"name": "Acme"}).json()
    beta = api.post("/partners", {"name": "Beta"}).json()
    api.post(f"/partners/{acme['id']}/campaigns/{campaign_id}/allocations", {"count": 2})
    api.post(f"/partners/{beta['id']}/campaigns/{campaign_id}/allocations", {"count": 2})
    acme_api = Api(client, api.post(f"/partners/{acme['id']}/keys").json()["key"])
    beta_api = Api(client, api.post(f"/partners/{beta['id']}/keys").json()["key"])
    a = [acme_api.post(f"/campaigns/{campaign_id}/claims", {"email": f"a{i}@example.com"}).json() for i in range(2)]
    b = beta_api.post(f"/campaigns/{campaign_id}/claims", {"email": "b@example.com"}).json()
    assert api.redeem(a[0]["stored_code"], "o1", channel="web").status_code == 201
    assert api.redeem(a[1]["stored_code"], "o2", channel="pos").status_code == 201
    assert api.redeem(b["stored_code"], "o3", channel="web").status_code == 201
    return campaign_id, {"acme": acme["id"], "beta": beta["id"]}, acme_api, beta_api


def test_totals_stay_what_partners_read_and_an_admin_key_filters_by_partner(
    api: Api, client: TestClient, engine: Engine, shop_id: int
) -> None:
    campaign_id, partners, acme_api, _ = _setup(api, client, engine, shop_id)
    mine = acme_api.get(f"/campaigns/{campaign_id}/results").json()
    assert set(mine) == {"campaign_id", "partner_id", "assigned", "redemptions", "revenue", "discount"}
    assert (mine["partner_id"], mine["assigned"], mine["redemptions"]) == (partners["acme"], 2, 2)
    everyone = api.get(f"/campaigns/{campaign_id}/results").json()
    assert (everyone["partner_id"], everyone["assigned"], everyone["redemptions"]) == (None, 3, 3)
    # the admin key's partner filter was ignored before: now it narrows the answer
    beta = api.get(f"/campaigns/{campaign_id}/results", params={"partner_id": partners["beta"]}).json()
    assert (beta["partner_id"], beta["assigned"], beta["redemptions"]) == (partners["beta"], 1, 1)
    assert beta["discount"] == everyone["discount"] - mine["discount"]


def test_grouped_by_channel_and_partner(api: Api, client: TestClient, engine: Engine, shop_id: int) -> None:
    campaign_id, partners, _, _ = _setup(api, client, engine, shop_id)
    report = api.get(f"/campaigns/{campaign_id}/results", params={"group_by": "channel"}).json()
    assert report["timezone"] == "Europe/London" and report["group_by"] == ["channel"]
    by_channel = {g["key"]["channel"]: g for g in report["groups"]}
    assert {k: g["redeemed"] for k, g in by_channel.items()} == {"web": 2, "pos": 1}
    assert all(g["assigned"] is None for g in report["groups"])  # codes have no channel
    assert report["totals"]["assigned"] == 3 and report["totals"]["issued"] == 6
    assert report["totals"]["redemption_rate"] == 1.0
    assert [m["currency"] for m in report["totals"]["money"]] == ["GBP"]
    total_discount = report["totals"]["money"][0]["discount"]
    assert sum(g["money"][0]["discount"] for g in report["groups"]) == total_discount
    by_partner = api.get(f"/campaigns/{campaign_id}/results", params={"group_by": "partner,day"}).json()
    assert sorted((g["key"]["partner"], g["assigned"], g["redeemed"]) for g in by_partner["groups"]) == sorted(
        [(partners["acme"], 2, 2), (partners["beta"], 1, 1)]
    )
    assert all(g["median_wait_seconds"] is not None for g in by_partner["groups"])


def test_a_partner_key_gets_its_own_groups_only(api: Api, client: TestClient, engine: Engine, shop_id: int) -> None:
    campaign_id, partners, acme_api, _ = _setup(api, client, engine, shop_id)
    report = acme_api.get(f"/campaigns/{campaign_id}/results", params={"group_by": "channel"}).json()
    assert report["partner_id"] == partners["acme"]
    assert {g["key"]["channel"]: g["redeemed"] for g in report["groups"]} == {"web": 1, "pos": 1}
    refused = acme_api.get(f"/campaigns/{campaign_id}/results", params={"partner_id": partners["beta"]})
    assert refused.status_code == 403 and refused.json()["reason"] == "partner_scope"
    log = acme_api.get(f"/campaigns/{campaign_id}/results/redemptions")
    assert sorted(r["order_id"] for r in csv.DictReader(io.StringIO(log.text))) == ["o1", "o2"]


def test_csv_of_the_table_and_of_the_log(api: Api, client: TestClient, engine: Engine, shop_id: int) -> None:
    campaign_id, _, _, _ = _setup(api, client, engine, shop_id)
    table = api.get(f"/campaigns/{campaign_id}/results", params={"group_by": "channel", "format": "csv"})
    assert table.status_code == 200 and table.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert {(r["channel"], r["redeemed"], r["currency"]) for r in rows} == {
        ("web", "2", "GBP"),
        ("pos", "1", "GBP"),
        ("total", "3", "GBP"),
    }
    log = api.get(f"/campaigns/{campaign_id}/results/redemptions")
    assert log.status_code == 200 and log.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(log.text)))
    assert sorted(r["order_id"] for r in lines) == ["o1", "o2", "o3"]
    assert {r["status"] for r in lines} == {"active"} and all(r["wait_seconds"] != "" for r in lines)
    outside = api.get(f"/campaigns/{campaign_id}/results/redemptions", params={"from": "2001-01-01", "to": "2001-01-31"})
    assert list(csv.DictReader(io.StringIO(outside.text))) == []


def test_a_range_outside_the_redemptions_is_empty(api: Api, client: TestClient, engine: Engine, shop_id: int) -> None:
    campaign_id, _, _, _ = _setup(api, client, engine, shop_id)
    report = api.get(f"/campaigns/{campaign_id}/results", params={"from": "2001-01-01", "to": "2001-12-31"}).json()
    assert (report["totals"]["redeemed"], report["totals"]["assigned"], report["totals"]["money"]) == (0, 0, [])
    assert report["from"] == "2001-01-01" and report["to"] == "2001-12-31"


@pytest.mark.parametrize(
    ("params", "status", "reason"),
    [
        ({"group_by": "colour"}, 422, "invalid_group_by"),
        ({"group_by": "day,channel,batch"}, 422, "invalid_group_by"),
        ({"from": "yesterday"}, 422, "invalid_date"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, 422, "invalid_range"),
        ({"partner_id": "abc"}, 422, "invalid_partner_id"),
        ({"partner_id": "999"}, 404, "partner_not_found"),
        ({"format": "xml"}, 422, "invalid_format"),
    ],
)
def test_bad_inputs_are_refused_with_a_reason(
    api: Api, engine: Engine, shop_id: int, params: dict[str, str], status: int, reason: str
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1)
    response = api.get(f"/campaigns/{campaign_id}/results", params=params)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["reason"] == reason


def test_another_shop_reads_nothing(api: Api, other_api: Api, client: TestClient, engine: Engine, shop_id: int) -> None:
    campaign_id, partners, _, _ = _setup(api, client, engine, shop_id)
    for path in (f"/campaigns/{campaign_id}/results", f"/campaigns/{campaign_id}/results/redemptions"):
        assert other_api.get(path).status_code == 404
        assert other_api.get(path, params={"group_by": "day"}).status_code == 404 if path.endswith("results") else True
    # nor with its own campaign and this shop's partner
    own, _ = make_campaign(engine, other_api_shop(engine), rules(), codes=1)
    refused = other_api.get(f"/campaigns/{own}/results", params={"partner_id": partners["acme"], "group_by": "day"})
    assert refused.status_code == 404 and refused.json()["reason"] == "partner_not_found"


def other_api_shop(engine: Engine) -> int:
    from plugin.shops.shops import ensure_local_shop

    with session_scope(engine) as session:
        return ensure_local_shop(session, "other.couponry.test").id or 0


def test_the_openapi_document_describes_the_query_and_both_answers(client: TestClient) -> None:
    document = client.get("/api/v1/openapi.json").json()
    operation = document["paths"]["/api/v1/campaigns/{campaign_id}/results"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"group_by", "from", "to", "partner_id", "format"}
    schemas = document["components"]["schemas"]
    assert {"ResultsOut", "ResultsReport", "ResultsFigures", "ResultsMoney"} <= set(schemas)
