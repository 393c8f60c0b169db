"""Distribution over HTTP: claims, the pull endpoint (API key and signed URL), claim pages,
the assignments export, partners and their isolation, alerts."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.distribution import claimlinks
from plugin.settings import Settings
from plugin.shops import apikeys
from plugin.store import caches
from plugin.store.models import Redemption, utcnow
from tests.web.conftest import Api, TestClient, make_campaign, make_key, rules


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    """PostgreSQL tests share one engine and reuse ids after each truncation: start each test
    without the previous test's cached rows (a real database never reuses an id)."""
    caches.bump()


def put(api: Api, path: str, body: dict[str, object]) -> httpx.Response:
    return api.client.put("/api/v1" + path, headers=api.headers, json=body)


def test_claims_are_idempotent_per_recipient(api: Api, engine: Engine, shop_id: int) -> None:
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=3)
    first = api.post(f"/campaigns/{campaign_id}/claims", {"email": " Ann@Example.com"})
    assert first.status_code == 201, first.text
    again = api.post(f"/campaigns/{campaign_id}/claims", {"recipient": "ann@example.COM"})
    assert again.status_code == 200
    body, repeat = first.json(), again.json()
    assert body["created"] is True and repeat["created"] is False
    assert {k: v for k, v in body.items() if k != "created"} == {k: v for k, v in repeat.items() if k != "created"}
    assert body["recipient"] == "ann@example.com" and body["stored_code"] in stored
    phone = api.post(f"/campaigns/{campaign_id}/claims", {"phone": "+1 (555) 555-0100"}).json()
    assert phone["recipient"] == "+15555550100" and phone["stored_code"] != body["stored_code"]
    bad = api.post(f"/campaigns/{campaign_id}/claims", {"email": "a@b.io", "phone": "+15555550100"})
    assert bad.status_code == 422 and bad.json()["reason"] == "invalid_recipient"


def test_pull_answers_identically_and_refuses_clearly_when_empty(api: Api, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1)
    calls = [api.get(f"/campaigns/{campaign_id}/pull", params={"recipient": "a@example.com"}) for _ in range(3)]
    assert [c.status_code for c in calls] == [200, 200, 200]
    assert calls[0].content == calls[1].content == calls[2].content  # byte for byte (Braze caches by URL)
    empty = api.get(f"/campaigns/{campaign_id}/pull", params={"recipient": "b@example.com"})
    assert empty.status_code == 409
    assert empty.headers["content-type"] == "application/problem+json"
    assert empty.json()["reason"] == "pool_exhausted"
    kinds = {a["kind"] for a in api.get("/alerts").json()["data"]}
    assert kinds == {"pool_low", "pool_empty"}
    missing = api.get(f"/campaigns/{campaign_id}/pull")
    assert missing.status_code == 422 and missing.json()["reason"] == "invalid_recipient"


def test_signed_pull_url(api: Api, client: TestClient, engine: Engine, shop_id: int, settings: Settings) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2)
    minted = api.post(f"/campaigns/{campaign_id}/pull-url")
    assert minted.status_code == 201, minted.text
    url, prefix = minted.json()["url"], minted.json()["key_prefix"]
    assert api.key.split("_")[1] == prefix
    path = urlsplit(url).path
    first = client.get(path, params={"recipient": "id:42"})
    assert first.status_code == 200 and first.json()["recipient"] == "id:42"
    assert client.get(path, params={"recipient": "id:42"}).content == first.content
    via_key = api.get(f"/campaigns/{campaign_id}/pull", params={"recipient": "id:42"})
    assert via_key.content == first.content
    forged = client.get(path[:-3] + "abc", params={"recipient": "id:42"})
    assert forged.status_code == 403 and forged.json()["reason"] == "bad_link"
    grant = claimlinks.PullGrant(shop_id, campaign_id, prefix, utcnow() + timedelta(days=1))
    other_token = claimlinks.pull_token("another-secret-0123456789-abcdefgh", grant)
    assert client.get(f"/pull/{other_token}", params={"recipient": "id:42"}).status_code == 403


def test_a_pull_url_expires(api: Api, client: TestClient, engine: Engine, shop_id: int, settings: Settings) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2)
    minted = api.post(f"/campaigns/{campaign_id}/pull-url", {"expires_in_days": 7}).json()
    expires_at = datetime.fromisoformat(minted["expires_at"])
    assert timedelta(days=6, hours=23) < expires_at - utcnow() <= timedelta(days=7)
    prefix = minted["key_prefix"]
    past = claimlinks.pull_token(settings.secret_key, claimlinks.PullGrant(shop_id, campaign_id, prefix, utcnow()))
    gone = client.get(f"/pull/{past}", params={"recipient": "id:1"})
    assert gone.status_code == 410 and gone.json()["reason"] == "link_expired"
    for days in (0, 401, "soon"):
        refused = api.post(f"/campaigns/{campaign_id}/pull-url", {"expires_in_days": days})
        assert refused.status_code == 422, refused.text
    # a URL signed before pull URLs carried a key and an expiry is refused, not honoured forever
    legacy = claimlinks._serializer(settings.secret_key, "pull").dumps({"s": shop_id, "c": campaign_id})
    assert client.get(f"/pull/{legacy}", params={"recipient": "id:1"}).json()["reason"] == "bad_link"


def test_revoking_the_minting_key_revokes_its_pull_urls(client: TestClient, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    sender = Api(client, make_key(engine, shop_id, ("distribution",)))
    kept = Api(client, make_key(engine, shop_id, ("distribution",)))
    doomed_path = urlsplit(sender.post(f"/campaigns/{campaign_id}/pull-url").json()["url"]).path
    kept_path = urlsplit(kept.post(f"/campaigns/{campaign_id}/pull-url").json()["url"]).path
    assert client.get(doomed_path, params={"recipient": "id:1"}).status_code == 200
    with Session(engine) as session:
        assert apikeys.revoke_key(session, shop_id=shop_id, prefix=sender.key.split("_")[1])
        session.commit()
    caches.bump()  # what another process sees once its key cache expires
    revoked = client.get(doomed_path, params={"recipient": "id:2"})
    assert revoked.status_code == 403 and revoked.json()["reason"] == "link_revoked"
    assert client.get(kept_path, params={"recipient": "id:2"}).status_code == 200


def test_a_pull_url_naming_another_shops_key_is_refused(
    client: TestClient, engine: Engine, shop_id: int, other_shop_id: int, settings: Settings
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1)
    outsider_prefix = make_key(engine, other_shop_id, ("distribution",)).split("_")[1]
    grant = claimlinks.PullGrant(shop_id, campaign_id, outsider_prefix, utcnow() + timedelta(days=1))
    token = claimlinks.pull_token(settings.secret_key, grant)
    assert client.get(f"/pull/{token}", params={"recipient": "id:1"}).json()["reason"] == "link_revoked"


def test_claim_links_reveal_the_code_once_per_recipient(
    api: Api, client: TestClient, engine: Engine, shop_id: int, settings: Settings
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    got = api.post(f"/campaigns/{campaign_id}/claims", {"email": "a@example.com"}).json()
    path = urlsplit(got["claim_url"]).path
    page = client.get(path)
    assert page.status_code == 200 and got["code"] in page.text
    assert client.get(path).text == page.text  # opening it again shows the same code
    # forged: signed with another key; swapped: another recipient's payload with this signature
    token = path.rsplit("/", 1)[1]
    later = utcnow() + timedelta(days=1)
    forged = claimlinks.claim_token(
        "not-our-secret-0123456789", claimlinks.ClaimLink(shop_id, campaign_id, "a@example.com", later)
    )
    assert client.get(f"/claim/{forged}").status_code == 403
    bob = claimlinks.claim_token(
        "not-our-secret-0123456789", claimlinks.ClaimLink(shop_id, campaign_id, "bob@example.com", later)
    )
    swapped = bob.partition(".")[0] + "." + token.partition(".")[2]
    refused = client.get(f"/claim/{swapped}")
    assert refused.status_code == 403 and got["code"] not in refused.text
    expired = claimlinks.claim_token(
        settings.secret_key, claimlinks.ClaimLink(shop_id, campaign_id, "c@example.com", utcnow() - timedelta(seconds=1))
    )
    gone = client.get(f"/claim/{expired}")
    assert gone.status_code == 410 and "expired" in gone.text
    assert api.get(f"/campaigns/{campaign_id}/pool").json() == {
        "campaign_id": campaign_id,
        "partner_id": None,
        "total": 3,
        "assigned": 1,
        "free": 2,
    }


def test_assignments_export(api: Api, engine: Engine, shop_id: int, settings: Settings) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=4)
    claims = [api.post(f"/campaigns/{campaign_id}/claims", {"recipient": r}).json() for r in ("a@example.com", "id:9")]
    response = api.get(f"/campaigns/{campaign_id}/assignments")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["recipient"], r["code"], r["link"]) for r in rows] == [(c["recipient"], c["code"], c["claim_url"]) for c in claims]
    assert api.get("/campaigns/999/assignments").status_code == 404


def test_partners_see_only_their_own_codes_and_results(
    api: Api, client: TestClient, engine: Engine, shop_id: int, other_key: str
) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=6)
    acme = api.post("/partners", {"name": "Acme"}).json()
    beta = api.post("/partners", {"name": "Beta"}).json()
    assert api.post("/partners", {"name": "Acme"}).status_code == 409
    assert api.post(f"/partners/{acme['id']}/campaigns/{campaign_id}/allocations", {"count": 2}).json()["allocated"] == 2
    assert api.post(f"/partners/{beta['id']}/campaigns/{campaign_id}/allocations", {"count": 10}).json()["allocated"] == 4
    acme_api = Api(client, api.post(f"/partners/{acme['id']}/keys").json()["key"])
    beta_api = Api(client, api.post(f"/partners/{beta['id']}/keys").json()["key"])

    mine = [acme_api.post(f"/campaigns/{campaign_id}/claims", {"email": f"p{i}@example.com"}) for i in range(3)]
    assert [m.status_code for m in mine] == [201, 201, 409]  # only its block of two
    assert mine[2].json()["reason"] == "pool_exhausted"
    assert {m.json()["partner_id"] for m in mine[:2]} == {acme["id"]}
    # a recipient who holds Acme's code is not handed out by Beta, nor shown to Beta
    taken = beta_api.get(f"/campaigns/{campaign_id}/pull", params={"recipient": "p0@example.com"})
    assert taken.status_code == 409 and taken.json()["reason"] == "recipient_has_other_code"
    assert "stored_code" not in taken.text
    beta_api.post(f"/campaigns/{campaign_id}/claims", {"email": "q@example.com"})

    acme_rows = list(csv.DictReader(io.StringIO(acme_api.get(f"/campaigns/{campaign_id}/assignments").text)))
    assert sorted(r["recipient"] for r in acme_rows) == ["p0@example.com", "p1@example.com"]
    assert acme_api.get(f"/campaigns/{campaign_id}/pool").json()["total"] == 2
    # redemptions of a partner's code are attributed to the partner
    code = mine[0].json()["stored_code"]
    assert api.redeem(code, "order-1").status_code == 201
    with Session(engine) as session:
        assert session.exec(select(Redemption.partner_id).where(col(Redemption.order_id) == "order-1")).one() == acme["id"]
    assert acme_api.get(f"/campaigns/{campaign_id}/results").json()["redemptions"] == 1
    beta_results = beta_api.get(f"/campaigns/{campaign_id}/results").json()
    assert (beta_results["assigned"], beta_results["redemptions"]) == (1, 0)
    everyone = api.get(f"/campaigns/{campaign_id}/results").json()
    assert (everyone["assigned"], everyone["redemptions"]) == (3, 1)
    # a partner key reaches no admin or checkout endpoint, and no other shop's key sees anything
    assert acme_api.get("/campaigns").status_code == 403
    assert acme_api.post("/partners", {"name": "Mine"}).status_code == 403
    assert acme_api.redeem(mine[1].json()["stored_code"], "order-2").status_code == 403
    outsider = Api(client, other_key)
    assert outsider.get(f"/campaigns/{campaign_id}/pull", params={"recipient": "p0@example.com"}).status_code == 404
    assert outsider.get(f"/campaigns/{campaign_id}/assignments").status_code == 404
    assert outsider.post(f"/partners/{acme['id']}/keys").status_code == 404


def test_partner_slot_links(api: Api, client: TestClient, engine: Engine, shop_id: int, settings: Settings) -> None:
    from plugin.distribution import claims as distribution

    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    partner = api.post("/partners", {"name": "Print shop"}).json()
    api.post(f"/partners/{partner['id']}/campaigns/{campaign_id}/allocations", {"count": 2})
    links = list(
        distribution.slot_links(
            settings.public_url,
            settings.secret_key,
            shop_id=shop_id,
            campaign_id=campaign_id,
            partner_id=partner["id"],
            slots=range(1, 4),
            expires_at=utcnow() + timedelta(days=7),
        )
    )
    pages = [client.get(urlsplit(link).path) for _, link in links]
    assert [p.status_code for p in pages] == [200, 200, 409]  # the block holds two codes
    rows = list(csv.DictReader(io.StringIO(api.get(f"/campaigns/{campaign_id}/assignments").text)))
    assert [r["recipient"] for r in rows] == [f"slot:{partner['id']}:1", f"slot:{partner['id']}:2"]
    assert {r["partner_id"] for r in rows} == {str(partner["id"])}


def test_distribution_scope_keys(client: TestClient, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=1)
    sender = Api(client, make_key(engine, shop_id, ("distribution",)))
    assert sender.get(f"/campaigns/{campaign_id}/pull", params={"recipient": "a@example.com"}).status_code == 200
    assert sender.get("/campaigns").status_code == 403
    checkout_only = Api(client, make_key(engine, shop_id, ("checkout",)))
    assert checkout_only.get(f"/campaigns/{campaign_id}/pull", params={"recipient": "a@example.com"}).status_code == 403


def test_a_reissued_code_becomes_the_recipients_code(api: Api, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(on_cancel="reissue"), codes=3)
    got = api.post(f"/campaigns/{campaign_id}/claims", {"email": "a@example.com"}).json()
    redemption = api.redeem(got["stored_code"], "order-1").json()
    assert api.post(f"/redemptions/{redemption['id']}/rollback", {"reason": "cancelled"}).status_code == 200
    now_held = api.get(f"/campaigns/{campaign_id}/pull", params={"recipient": "a@example.com"}).json()
    assert now_held["stored_code"] != got["stored_code"]
    pool = api.get(f"/campaigns/{campaign_id}/pool").json()
    assert (pool["total"], pool["free"]) == (4, 2)  # the consumed code does not return to the pool
    others = {api.post(f"/campaigns/{campaign_id}/claims", {"email": f"{n}@example.com"}).json()["stored_code"] for n in "bc"}
    assert got["stored_code"] not in others and now_held["stored_code"] not in others


def test_pushes_deliveries_policies_and_referral_programs(api: Api, client: TestClient, engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=4)
    partner = api.post("/partners", {"name": "Acme"}).json()
    api.post(f"/partners/{partner['id']}/campaigns/{campaign_id}/allocations", {"count": 1})
    partner_api = Api(client, api.post(f"/partners/{partner['id']}/keys").json()["key"])
    api.post(f"/campaigns/{campaign_id}/claims", {"phone": "+15555550100"})
    partner_api.post(f"/campaigns/{campaign_id}/claims", {"phone": "+15555550101"})
    pushed = api.post(f"/campaigns/{campaign_id}/pushes", {"provider": "Twilio"})
    assert pushed.status_code == 202 and pushed.json() == {"provider": "twilio", "queued": 2}
    assert api.post(f"/campaigns/{campaign_id}/pushes", {"provider": "twilio"}).json()["queued"] == 0
    assert api.post(f"/campaigns/{campaign_id}/pushes", {"provider": "fax"}).json()["reason"] == "unknown_provider"
    listed = api.get(f"/campaigns/{campaign_id}/deliveries", params={"status": "queued"}).json()
    assert "data" in listed, listed
    assert sorted(d["recipient"] for d in listed["data"]) == ["+15555550100", "+15555550101"]
    assert listed["counts"] == {"twilio": {"queued": 2}}
    mine = partner_api.get(f"/campaigns/{campaign_id}/deliveries").json()
    assert [d["recipient"] for d in mine["data"]] == ["+15555550101"] and mine["counts"] == {}
    assert partner_api.post(f"/campaigns/{campaign_id}/pushes", {"provider": "twilio"}).status_code == 403
    assert api.get(f"/campaigns/{campaign_id}/deliveries", params={"status": "lost"}).status_code == 422

    policy = put(api, f"/campaigns/{campaign_id}/pool-policy", {"alert_below": 5, "topup_below": 2, "topup_count": 100})
    assert policy.status_code == 200 and policy.json()["topup_count"] == 100
    assert put(api, f"/campaigns/{campaign_id}/pool-policy", {"topup_below": 2}).json()["reason"] == "invalid_policy"

    reward_id, _ = make_campaign(engine, shop_id, rules(), name="Rewards")
    shareable = rules(usage={"uses_per_code": None})
    referral_id, _ = make_campaign(engine, shop_id, shareable, codes=2, name="Refer")
    made = api.post("/referral-programs", {"campaign_id": referral_id, "reward_campaign_id": reward_id, "provider": "twilio"})
    assert made.status_code == 201 and made.json()["provider"] == "twilio"
    assert api.post("/referral-programs", {"campaign_id": referral_id, "reward_campaign_id": 999}).status_code == 404
    assert api.get(f"/campaigns/{referral_id}/referrals").json() == {"data": []}


def test_referral_codes_at_the_checkout_api(api: Api, engine: Engine, shop_id: int) -> None:
    reward_id, _ = make_campaign(engine, shop_id, rules(), name="Rewards")
    referral_id, _ = make_campaign(engine, shop_id, rules(usage={"uses_per_code": None}), codes=2, name="Refer")
    api.post("/referral-programs", {"campaign_id": referral_id, "reward_campaign_id": reward_id})
    code = api.post(f"/campaigns/{referral_id}/claims", {"customer_id": "ref-1"}).json()["code"]
    own = api.redeem(code, "order-0", customer={"id": "ref-1", "email": "ref@example.com"})
    assert own.status_code == 409 and own.json()["reason"] == "self_referral"
    first = api.redeem(code, "order-1", customer={"id": "friend-1"})
    assert first.status_code == 201
    assert api.redeem(code, "order-1", customer={"id": "friend-1"}).status_code == 200  # a retry: no second reward
    assert api.redeem(code, "order-2", customer={"id": "friend-1"}).status_code == 201  # a second order: no reward
    rewards = api.get(f"/campaigns/{referral_id}/referrals").json()["data"]
    assert [(r["referrer"], r["friend"], r["order_id"]) for r in rewards] == [("id:ref-1", "id:friend-1", "order-1")]
    assert rewards[0]["reward_code"]


HOME = {"line1": "12 Main Street", "line2": "Apt 4", "postcode": "SW1A 1AA", "country": "GB"}
HOME_AGAIN = {"line1": "12, MAIN STREET apt. 4", "postcode": "sw1a1aa", "country": "gb"}  # the same place
ELSEWHERE = {"line1": "9 High Road", "postcode": "E1 6AN", "country": "GB"}


def referral_program(api: Api, engine: Engine, shop_id: int) -> int:
    reward_id, _ = make_campaign(engine, shop_id, rules(), name="Rewards")
    referral_id, _ = make_campaign(engine, shop_id, rules(usage={"uses_per_code": None}), codes=3, name="Refer")
    assert api.post("/referral-programs", {"campaign_id": referral_id, "reward_campaign_id": reward_id}).status_code == 201
    return referral_id


def rewarded(api: Api, referral_id: int) -> list[tuple[str, str, str]]:
    return [(r["referrer"], r["friend"], r["order_id"]) for r in api.get(f"/campaigns/{referral_id}/referrals").json()["data"]]


def test_a_friends_order_to_the_referrers_address_is_refused_at_the_checkout_api(api: Api, engine: Engine, shop_id: int) -> None:
    referral_id = referral_program(api, engine, shop_id)
    claimed = api.post(f"/campaigns/{referral_id}/claims", {"customer_id": "ref-1", "shipping_address": HOME})
    assert claimed.status_code == 201, claimed.text
    code = claimed.json()["code"]
    own = api.redeem(code, "order-0", customer={"id": "new-account"}, shipping_address=HOME_AGAIN)
    assert own.status_code == 409 and own.json()["reason"] == "self_referral"
    friend = api.redeem(code, "order-1", customer={"id": "friend-1"}, shipping_address=ELSEWHERE)
    assert friend.status_code == 201, friend.text
    assert api.redeem(code, "order-1", customer={"id": "friend-1"}, shipping_address=ELSEWHERE).status_code == 200
    assert rewarded(api, referral_id) == [("id:ref-1", "id:friend-1", "order-1")]  # once, for the friend elsewhere
    with Session(engine) as session:
        (kept,) = session.exec(select(Redemption).where(col(Redemption.order_id) == "order-1")).all()
    assert kept.address_key is not None and len(kept.address_key) == 64  # a fingerprint, not the address

    plain_id, _ = make_campaign(engine, shop_id, rules(), codes=1, name="Plain")
    not_referral = api.post(f"/campaigns/{plain_id}/claims", {"email": "x@example.com", "shipping_address": HOME})
    assert not_referral.status_code == 422 and not_referral.json()["reason"] == "not_a_referral_program"
    bad = {**HOME, "country": "GBR"}
    assert api.post(f"/campaigns/{referral_id}/claims", {"customer_id": "ref-2", "shipping_address": bad}).status_code == 422


def test_the_referrers_own_api_orders_tell_their_address(api: Api, engine: Engine, shop_id: int) -> None:
    referral_id = referral_program(api, engine, shop_id)
    code = api.post(f"/campaigns/{referral_id}/claims", {"email": "ref@example.com"}).json()["code"]
    _, (plain,) = make_campaign(engine, shop_id, rules(), codes=1, name="Plain")
    mine = api.redeem(plain, "order-0", customer={"id": "c-ref", "email": "Ref@Example.com"}, shipping_address=HOME)
    assert mine.status_code == 201, mine.text
    alias = api.redeem(code, "order-1", customer={"id": "alias"}, shipping_address=HOME_AGAIN)
    assert alias.status_code == 409 and alias.json()["reason"] == "self_referral"
    assert api.redeem(code, "order-2", customer={"id": "friend"}, shipping_address=ELSEWHERE).status_code == 201
    assert rewarded(api, referral_id) == [("ref@example.com", "id:friend", "order-2")]


def test_a_friend_the_caller_knows_has_ordered_before_earns_no_reward(api: Api, engine: Engine, shop_id: int) -> None:
    referral_id = referral_program(api, engine, shop_id)
    code = api.post(f"/campaigns/{referral_id}/claims", {"customer_id": "ref-1"}).json()["code"]
    regular = api.redeem(code, "order-1", customer={"id": "regular", "orders_count": 3})
    assert regular.status_code == 201  # the friend's discount is the campaign's rules' business
    assert api.redeem(code, "order-2", customer={"id": "newcomer", "orders_count": 0}).status_code == 201
    assert rewarded(api, referral_id) == [("id:ref-1", "id:newcomer", "order-2")]
