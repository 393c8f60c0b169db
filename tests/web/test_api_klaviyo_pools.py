"""The Klaviyo pool over the API: set up with codes, counts per upload status, each code's
status, retry, thresholds; another shop sees nothing of it."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.store.models import Job
from tests.web.conftest import Api, make_campaign, rules


def test_a_pool_is_set_up_counted_and_reviewed(api: Api, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=5)
    body = {"campaign_id": campaign_id, "coupon_id": "SPRING10", "description": "Spring", "count": 3, "alert_below": 2}
    made = api.post("/klaviyo-pools", body)
    assert made.status_code == 201, made.text
    pool = made.json()
    assert (pool["added"], pool["counts"]["queued"], pool["binding"], pool["channel"]) == (3, 3, "none", "klaviyo")
    with Session(engine) as session:
        assert session.exec(select(Job.kind).where(col(Job.kind) == "klaviyo.upload")).all() == ["klaviyo.upload"]
    more = api.post(f"/klaviyo-pools/{pool['id']}/codes", {"count": 10})
    assert more.status_code == 201 and more.json()["added"] == 2  # all the campaign had left
    codes = api.get(f"/klaviyo-pools/{pool['id']}/codes", params={"status": "queued"}).json()
    assert len(codes["data"]) == 5 and codes["counts"]["queued"] == 5
    assert api.get(f"/klaviyo-pools/{pool['id']}/codes", params={"status": "nope"}).status_code == 422
    assert api.post(f"/klaviyo-pools/{pool['id']}/retry").json() == {"requeued": 0}
    policy = api.client.put(
        f"/api/v1/klaviyo-pools/{pool['id']}/policy",
        headers=api.headers,
        json={"alert_below": 7, "topup_below": 3, "topup_count": 50},
    )
    assert policy.status_code == 200 and (policy.json()["alert_below"], policy.json()["topup_count"]) == (7, 50)
    listed = api.get("/klaviyo-pools").json()["data"]
    assert [p["coupon_id"] for p in listed] == ["SPRING10"]
    bad = api.post("/klaviyo-pools", {"campaign_id": campaign_id, "coupon_id": "10 OFF"})
    assert bad.status_code in (400, 422)
    # the pool's codes are out of the campaign's claimable pool
    claim = api.post(f"/campaigns/{campaign_id}/claims", {"email": "ann@example.com"})
    assert claim.status_code == 409 and claim.json()["reason"] == "pool_exhausted"


def test_another_shop_cannot_see_or_feed_the_pool(api: Api, other_api: Api, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2)
    pool = api.post("/klaviyo-pools", {"campaign_id": campaign_id, "coupon_id": "SPRING10", "count": 1}).json()
    assert other_api.get(f"/klaviyo-pools/{pool['id']}").status_code == 404
    assert other_api.post(f"/klaviyo-pools/{pool['id']}/codes", {"count": 1}).status_code == 404
    assert other_api.get("/klaviyo-pools").json()["data"] == []
    assert other_api.post("/klaviyo-pools", {"campaign_id": campaign_id, "coupon_id": "X"}).status_code == 404
