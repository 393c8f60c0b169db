"""Guessing and lock-outs (issue 12, section 5), through the hot routes.

One shopper's failures never refuse another shopper: a `storefront` key's shopper is the
connection's address; a server key (`checkout`, `admin`) names the shopper in the request
(`shopper.ip`, and the `customer` it identifies), and calls that name nobody share a high
per-key ceiling. Only guesses count: unknown, mistyped or dead codes, never a live code refused
for its basket. Failures across the shop raise one `guessing` alert. `/reservations` and
`/redemptions` are limited alike.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.applications import Starlette

from plugin.checkout.guessing import GUESSES, counts_as_guess
from plugin.checkout.ratelimit import GuessLimits
from plugin.formats.codes import CodeFormat, guess_probability
from plugin.rules.refusals import CATALOGUE, Reason, Stage
from plugin.settings import Settings
from plugin.store.models import Alert
from plugin.web.clientaddr import TrustedProxies, address_key, parse_networks
from tests.web.conftest import (
    REDIS_URL,
    Api,
    TestClient,
    basket,
    make_app,
    make_campaign,
    make_key,
    rules,
    set_code,
    set_preferences,
)

LIMIT = 5  # failures per shopper per minute
CEILING = 12  # failures per server key per minute when its calls name no shopper
ALARM = 8  # failures across the shop per hour before the merchant is alerted


@pytest.fixture(params=["memory", "redis"])
def guarded_app(request: pytest.FixtureRequest, settings: Settings, engine: Engine) -> Starlette:
    if request.param == "redis":
        if not REDIS_URL:
            pytest.skip("Redis rate-limit storage: set COUPONRY_TEST_REDIS_URL (as .ci/run does on its PostgreSQL pass)")
        settings = replace(settings, redis_url=REDIS_URL)
    return make_app(settings, engine, limit=f"{LIMIT}/minute", unnamed=f"{CEILING}/minute", alarm=f"{ALARM}/hour")


def random_ip() -> str:
    """A fresh address per test, so counters left in a shared Redis never interfere."""
    return "10." + ".".join(str(b) for b in secrets.token_bytes(3))


@pytest.fixture
def client_from(guarded_app: Starlette) -> Iterator[Callable[[str], TestClient]]:
    with TestClient(guarded_app):
        yield lambda ip: TestClient(guarded_app, client=(ip, 40000))


@pytest.fixture
def fresh_key(engine: Engine, shop_id: int) -> str:
    """A `checkout` key of its own per test: Redis counters per key never carry over."""
    return make_key(engine, shop_id, ("checkout",))


def shopper(ip: str | None = None) -> dict[str, Any]:
    return {"shopper": {"ip": ip or random_ip()}}


# --- 1. the limit is per shopper, never per merchant server -------------------------------------


def test_one_shopper_over_the_limit_never_refuses_another_shopper_of_the_server(  # the invariant
    client_from: Callable[[str], TestClient], fresh_key: str, engine: Engine, shop_id: int
) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    server = Api(client_from("192.0.2.10"), fresh_key)  # the merchant's server: one address for every shopper
    typist, other = shopper(), shopper()
    for _ in range(LIMIT):
        assert server.validate("WRONG-CODE", **typist).json()["valid"] is False
    blocked = server.validate("WRONG-CODE", **typist)
    assert blocked.status_code == 429 and blocked.json()["reason"] == "too_many_attempts"
    assert server.validate(stored[0], **typist).status_code == 429  # the typist waits, even with a good code
    answer = server.validate(stored[0], **other)  # same key, same connection address, another shopper
    assert answer.status_code == 200 and answer.json()["valid"] is True


def test_a_server_key_naming_the_customer_limits_that_customer_across_addresses(
    client_from: Callable[[str], TestClient], fresh_key: str
) -> None:
    server = Api(client_from(random_ip()), fresh_key)
    customer = {"email": f"{secrets.token_hex(6)}@example.com"}
    for _ in range(LIMIT):  # a botnet behind the merchant's checkout, one signed-in account
        assert server.validate("WRONG-CODE", customer=customer, **shopper()).status_code == 200
    assert server.validate("WRONG-CODE", customer=customer, **shopper()).status_code == 429
    assert server.validate("WRONG-CODE", customer={"id": secrets.token_hex(6)}, **shopper()).status_code == 200


def test_calls_naming_no_shopper_share_a_high_per_key_ceiling(
    client_from: Callable[[str], TestClient], fresh_key: str, engine: Engine, shop_id: int
) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    server = Api(client_from(random_ip()), fresh_key)
    for _ in range(LIMIT * 2):  # one careless shopper, well past the per-shopper limit: nobody is locked out
        assert server.validate("WRONG-CODE").status_code == 200
    assert server.validate(stored[0]).json()["valid"] is True
    for _ in range(CEILING - LIMIT * 2):
        server.validate("WRONG-CODE")
    assert server.validate("WRONG-CODE").status_code == 429  # a guesser through a server that names nobody
    assert server.validate(stored[0], **shopper()).json()["valid"] is True  # named shoppers are counted apart
    other_key = Api(client_from(random_ip()), make_key(engine, shop_id, ("checkout",)))
    assert other_key.validate("WRONG-CODE").status_code == 200


def test_a_storefront_shopper_is_its_connection_address(
    client_from: Callable[[str], TestClient], engine: Engine, shop_id: int
) -> None:
    key = make_key(engine, shop_id, ("storefront",))
    ip = random_ip()
    guesser = Api(client_from(ip), key)
    victim = {"email": f"{secrets.token_hex(6)}@example.com"}
    for _ in range(LIMIT):  # naming someone else's email only spends the guesser's own budget
        assert guesser.validate("WRONG-CODE", customer=victim).status_code == 200
    assert guesser.validate("WRONG-CODE").status_code == 429
    assert Api(client_from(random_ip()), key).validate("WRONG-CODE", customer=victim).status_code == 200


def test_a_storefront_key_can_not_name_the_shopper(
    client_from: Callable[[str], TestClient], engine: Engine, shop_id: int
) -> None:
    storefront = Api(client_from(random_ip()), make_key(engine, shop_id, ("storefront",)))
    refused = storefront.validate("WRONG-CODE", **shopper())
    assert refused.status_code == 403 and refused.json()["reason"] == "shopper_not_allowed"


@pytest.mark.parametrize("ip", ["not-an-ip", "10.0.0.1/8", "", "1" * 100])
def test_a_named_shopper_address_is_validated(client: TestClient, key: str, ip: str) -> None:
    refused = Api(client, key).validate("WRONG-CODE", shopper={"ip": ip})
    assert refused.status_code == 422 and refused.json()["reason"] == "invalid_input"
    assert refused.json()["details"]["errors"][0]["field"].startswith("shopper")


def test_the_document_describes_the_shopper(client: TestClient) -> None:
    schemas = client.get("/api/v1/openapi.json").json()["components"]["schemas"]
    for name in ("ValidateRequest", "ReservationRequest", "RedemptionRequest"):
        assert "shopper" in schemas[name]["properties"], name
    shopper_schema = schemas["Shopper"]
    assert shopper_schema["properties"]["ip"]["format"] in ("ipvanyaddress", "ip")
    assert "storefront" in shopper_schema["description"]


# --- 2. only guesses count ---------------------------------------------------------------------


def test_a_live_code_refused_for_its_basket_never_counts(
    client_from: Callable[[str], TestClient], fresh_key: str, engine: Engine, shop_id: int
) -> None:
    _, stored = make_campaign(engine, shop_id, rules(basket={"minimum_subtotal": 10000}), codes=1)
    server, who = Api(client_from(random_ip()), fresh_key), shopper()
    for _ in range(LIMIT * 3):  # "spend £50 more", again and again while the shopper fills the basket
        nudge = server.validate(stored[0], **who).json()
        assert nudge["reason"] == "minimum_subtotal_not_met"
    assert server.validate(stored[0], basket(("p1", 4, 2500)), **who).json()["valid"] is True
    assert server.validate(stored[0], basket(("p1", 1, 100), currency="EUR"), **who).json()["reason"] == "currency_mismatch"
    assert server.validate("WRONG-CODE", **who).status_code == 200  # the budget is untouched


def test_only_unknown_and_mistyped_codes_count(
    client_from: Callable[[str], TestClient], fresh_key: str, engine: Engine, shop_id: int
) -> None:
    _, live = make_campaign(engine, shop_id, rules(), codes=3)
    _, paused = make_campaign(engine, shop_id, rules(), codes=1, status="paused")
    set_code(engine, shop_id, live[0], status="voided")
    set_code(engine, shop_id, live[1], uses=1)
    mistyped = live[2][:-1] + ("A" if live[2][-1] != "A" else "B")
    server, who = Api(client_from(random_ip()), fresh_key), shopper()
    for _ in range(LIMIT * 2):  # codes that exist: nothing to guess, and crowds of honest shoppers meet them
        assert server.validate(live[0], **who).json()["reason"] == "voided"
        assert server.validate(live[1], **who).json()["reason"] == "already_redeemed"
        assert server.validate(paused[0], **who).json()["reason"] == "campaign_paused"
    assert server.validate(mistyped, **who).json()["reason"] == "mistyped_code"
    for _ in range(LIMIT - 2):
        assert server.validate("WRONG-CODE", **who).json()["reason"] == "unknown_code"
    assert server.validate("WRONG-CODE", **who).status_code == 200
    assert server.validate("WRONG-CODE", **who).status_code == 429


def test_a_race_for_held_codes_locks_nobody_out(
    client_from: Callable[[str], TestClient], fresh_key: str, engine: Engine, shop_id: int
) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    server = Api(client_from(random_ip()), fresh_key)  # a server naming no shopper: the shared ceiling
    assert server.reserve(stored[0], "chk-winner").status_code == 201
    for n in range(CEILING + 1):  # every other checkout of the drop
        assert server.reserve(stored[0], f"chk-{n}").json()["reason"] == "held_by_other_checkout"
    assert server.validate("WRONG-CODE").status_code == 200


# --- 3. the merchant hears of a guessing attack --------------------------------------------------


def guessing_alerts(engine: Engine, shop_id: int) -> list[Alert]:
    with Session(engine) as session:
        return list(session.exec(select(Alert).where(col(Alert.shop_id) == shop_id, col(Alert.kind) == "guessing")).all())


def test_failures_across_the_shop_raise_one_guessing_alert(
    client_from: Callable[[str], TestClient], fresh_key: str, engine: Engine, shop_id: int
) -> None:
    server = Api(client_from(random_ip()), fresh_key)
    for _ in range(ALARM - 1):  # a botnet: every address under its own limit
        server.validate("WRONG-CODE", **shopper())
    assert guessing_alerts(engine, shop_id) == []
    server.validate("WRONG-CODE", **shopper())
    (alert,) = guessing_alerts(engine, shop_id)
    assert alert.count == 1 and alert.open_key == f"guessing:{shop_id}" and alert.resolved_at is None
    assert alert.details["threshold"] == ALARM and "guess" in alert.message
    for _ in range(ALARM):  # the same window: nothing more is written
        server.validate("WRONG-CODE", **shopper())
    (again,) = guessing_alerts(engine, shop_id)
    assert again.count == 1
    listed = server.get("/alerts")
    assert listed.status_code == 403  # a checkout key: the merchant reads alerts with an admin key
    admin = Api(server.client, make_key(engine, shop_id, ("admin",)))
    assert [a["kind"] for a in admin.get("/alerts").json()["data"]] == ["guessing"]


# --- 5. reservations and redemptions are limited alike ------------------------------------------


@pytest.mark.parametrize("route", ["reserve", "redeem"])
def test_reservations_and_redemptions_are_limited_per_shopper(
    client_from: Callable[[str], TestClient], fresh_key: str, engine: Engine, shop_id: int, route: str
) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    server, typist, other = Api(client_from(random_ip()), fresh_key), shopper(), shopper()

    def attempt(code: str, who: dict[str, Any], n: int) -> Any:
        if route == "reserve":
            return server.reserve(code, f"chk-{n}", **who)
        return server.redeem(code, f"order-{n}", **who)

    for n in range(LIMIT):
        assert attempt("WRONG-CODE", typist, n).status_code == 404
    blocked = attempt(stored[0], typist, 99)
    assert blocked.status_code == 429 and blocked.json()["reason"] == "too_many_attempts"
    assert int(blocked.headers["retry-after"]) >= 1
    assert attempt(stored[0], other, 100).status_code in (200, 201)


def test_a_redemption_refused_for_its_basket_never_counts(
    client_from: Callable[[str], TestClient], fresh_key: str, engine: Engine, shop_id: int
) -> None:
    _, stored = make_campaign(engine, shop_id, rules(basket={"minimum_subtotal": 10000}), codes=1)
    server, who = Api(client_from(random_ip()), fresh_key), shopper()
    for n in range(LIMIT + 1):
        refused = server.redeem(stored[0], f"order-{n}", **who)
        assert refused.status_code == 409 and refused.json()["reason"] == "minimum_subtotal_not_met"
    assert server.redeem(stored[0], "order-ok", basket(("p1", 4, 2500)), **who).status_code == 201


# --- 7. storefront answers are generic unless the shop opts in ----------------------------------


def test_storefront_answers_are_generic_by_default(
    client_from: Callable[[str], TestClient], engine: Engine, shop_id: int
) -> None:
    _, stored = make_campaign(engine, shop_id, rules(currency="GBP", basket={"minimum_subtotal": 10000}), codes=3)
    set_code(engine, shop_id, stored[1], status="voided")
    storefront = Api(client_from(random_ip()), make_key(engine, shop_id, ("storefront",)))
    unknown = storefront.validate("NO-SUCH-CODE").json()
    voided = storefront.validate(stored[1]).json()
    assert voided == unknown and unknown["shopper"]["reason"] == "unknown_code"
    assert "voided" not in str(voided)
    nudge = storefront.validate(stored[0]).json()  # a live code's basket condition: the nudge stays
    assert nudge["shopper"]["reason"] == "minimum_subtotal_not_met" and nudge["shopper"]["details"]["missing_amount"]
    # the merchant's server still gets the exact reason, and a detailed shopper view
    server = Api(client_from(random_ip()), make_key(engine, shop_id, ("checkout",))).validate(stored[1]).json()
    assert server["reason"] == "voided" and server["shopper"]["reason"] == "voided"


def test_a_shop_may_opt_in_to_detailed_storefront_answers(
    client_from: Callable[[str], TestClient], engine: Engine, shop_id: int
) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    set_code(engine, shop_id, stored[0], status="voided")
    set_preferences(engine, shop_id, detailed_refusals=True)
    storefront = Api(client_from(random_ip()), make_key(engine, shop_id, ("storefront",)))
    assert storefront.validate(stored[0]).json()["shopper"]["reason"] == "voided"


# --- 4. the odds are stated per attacker identity and at the shop-wide alert ---------------------


def test_campaigns_state_the_guess_odds_at_the_configured_limits(settings: Settings, engine: Engine, shop_id: int) -> None:
    app = make_app(settings, engine, limit="20/minute", unnamed="120/minute", alarm="500/hour")
    with TestClient(app) as client:
        api = Api(client, make_key(engine, shop_id))
        campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=100)
        out = api.get(f"/campaigns/{campaign_id}").json()
    fmt = CodeFormat.from_dict(out["code_format"])
    year = 365 * 24 * 3600
    assert out["guess_probability"] == pytest.approx(guess_probability(fmt, 100, 20 * year // 60))
    assert out["guess_probability_below_alarm"] == pytest.approx(guess_probability(fmt, 100, 500 * year // 3600))
    assert out["guess_probability"] > out["guess_probability_below_alarm"] > 0  # 20/minute is more than 500/hour


def test_the_limits_are_settings(settings: Settings) -> None:
    env = {"COUPONRY_FAILED_CODE_LIMIT": "5/minute", "COUPONRY_FAILED_CODE_LIMIT_UNNAMED": "100/minute",
           "COUPONRY_GUESSING_ALERT": "50/hour", "COUPONRY_DATABASE_URL": "sqlite://"}  # fmt: skip
    configured = Settings.from_env(env)
    assert (configured.failed_code_limit, configured.failed_code_limit_unnamed, configured.guessing_alert) == (
        "5/minute", "100/minute", "50/hour",
    )  # fmt: skip
    defaults = Settings.from_env({"COUPONRY_DATABASE_URL": "sqlite://"})
    assert (defaults.failed_code_limit, defaults.failed_code_limit_unnamed, defaults.guessing_alert) == (
        "20/minute", "120/minute", "500/hour",
    )  # fmt: skip
    assert defaults.trusted_proxies == ()
    with pytest.raises(ValueError, match="COUPONRY_GUESSING_ALERT"):
        Settings.from_env({**env, "COUPONRY_GUESSING_ALERT": "lots"})
    limits = GuessLimits(per_shopper="5/minute", per_unnamed_key="100/minute", shop_alarm="50/hour")
    assert limits.attempts_per_shopper() == 5 * 60 * 24 * 365


def test_no_refusal_of_an_existing_code_counts_as_a_guess() -> None:
    """A nudge, a dead code, a held or bound one: the code exists, so the attempt is not a miss."""
    assert {reason for reason in Reason if counts_as_guess(reason)} == {Reason.UNKNOWN_CODE, Reason.MISTYPED_CODE}
    assert all(CATALOGUE[reason].stage is Stage.LOOKUP for reason in GUESSES)


# --- 6. X-Forwarded-For only from proxies the operator trusts ------------------------------------


class Forwarded(Api):
    """A storefront client whose every call says who it forwards for."""

    def via(self, forwarded_for: str) -> Any:
        body = {"code": "WRONG-CODE", "basket": basket(("p1", 2, 2500))}
        return self.client.post("/api/v1/validate", json=body, headers={**self.headers, "X-Forwarded-For": forwarded_for})


def _storefront_from(app: Starlette, engine: Engine, shop_id: int, peer: str) -> Forwarded:
    return Forwarded(TestClient(app, client=(peer, 40000)), make_key(engine, shop_id, ("storefront",)))


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(settings: Settings, engine: Engine, shop_id: int) -> None:
    app = make_app(settings, engine, limit=f"{LIMIT}/minute")  # default: no trusted proxies
    with TestClient(app):
        local = _storefront_from(app, engine, shop_id, "127.0.0.1")
        for _ in range(LIMIT):  # a guesser on loopback inventing a new address for every guess
            local.via(random_ip())
        assert local.via(random_ip()).status_code == 429


def test_a_trusted_proxy_names_the_shopper(settings: Settings, engine: Engine, shop_id: int) -> None:
    app = make_app(replace(settings, trusted_proxies=("127.0.0.1", "10.9.0.0/16")), engine, limit=f"{LIMIT}/minute")
    with TestClient(app):
        proxy = _storefront_from(app, engine, shop_id, "127.0.0.1")
        typist = "203.0.113.9"
        for _ in range(LIMIT):  # a shopper's own header is kept left of what our proxies add: it can't pose as another
            proxy.via(f"{random_ip()}, {typist}, 10.9.1.1")
        assert proxy.via(f"{typist}, 10.9.0.7").status_code == 429
        assert proxy.via("203.0.113.10").status_code == 200
        # an untrusted peer's header is ignored: it is the shopper
        stranger = _storefront_from(app, engine, shop_id, "198.51.100.1")
        assert stranger.via(typist).status_code == 200


def test_trusted_proxies_walk_and_address_keys() -> None:
    trusted = TrustedProxies(parse_networks(["127.0.0.1", "10.0.0.0/8", "::1"]))
    assert trusted.client("127.0.0.1", "1.2.3.4, 10.0.0.5") == "1.2.3.4"
    assert trusted.client("127.0.0.1", "6.6.6.6, 1.2.3.4") == "1.2.3.4"  # the spoofed left entry is not believed
    assert trusted.client("8.8.8.8", "1.2.3.4") == "8.8.8.8"
    assert trusted.client("::1", None) == "::1"
    assert not TrustedProxies(()).trusts("127.0.0.1")
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1" and address_key("192.0.2.1") == "192.0.2.1"
    with pytest.raises(ValueError, match="COUPONRY_TRUSTED_PROXIES"):
        Settings.from_env({"COUPONRY_DATABASE_URL": "sqlite://", "COUPONRY_TRUSTED_PROXIES": "10.0.0.0/8, proxy.local"})
    assert Settings.from_env(
        {"COUPONRY_DATABASE_URL": "sqlite://", "COUPONRY_TRUSTED_PROXIES": "10.0.0.0/8, ::1"}
    ).trusted_proxies == (
        "10.0.0.0/8",
        "::1",
    )


def test_ipv6_shoppers_count_per_64(client_from: Callable[[str], TestClient], fresh_key: str) -> None:
    server = Api(client_from(random_ip()), fresh_key)
    prefix = f"2001:db8:{secrets.randbelow(65536):x}:{secrets.randbelow(65536):x}:"
    for n in range(LIMIT):  # a fresh address of one /64 for every guess
        server.validate("WRONG-CODE", shopper={"ip": f"{prefix}{n}::1"})
    assert server.validate("WRONG-CODE", shopper={"ip": f"{prefix}ffff::1"}).status_code == 429


def test_the_document_states_the_limits(client: TestClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for path in ("/api/v1/validate", "/api/v1/reservations", "/api/v1/redemptions"):
        operation = paths[path]["post"]
        assert "429" in operation["responses"] and "too_many_attempts" in operation["description"], path
    assert "shopper_not_allowed" in paths["/api/v1/validate"]["post"]["description"]


def test_the_admin_api_sets_the_refusal_mode(client: TestClient, engine: Engine, shop_id: int) -> None:
    admin = Api(client, make_key(engine, shop_id, ("admin",)))
    storefront = Api(client, make_key(engine, shop_id, ("storefront",)))
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    set_code(engine, shop_id, stored[0], status="voided")
    assert admin.get("/shop/refusals").json() == {"mode": "default"}
    assert storefront.validate(stored[0]).json()["shopper"]["reason"] == "unknown_code"
    assert admin.client.put("/api/v1/shop/refusals", json={"mode": "detailed"}, headers=admin.headers).json() == {
        "mode": "detailed"
    }
    assert storefront.validate(stored[0]).json()["shopper"]["reason"] == "voided"
    generic = admin.client.put("/api/v1/shop/refusals", json={"mode": "generic"}, headers=admin.headers)
    assert generic.json() == {"mode": "generic"} and admin.get("/shop/refusals").json() == {"mode": "generic"}
    server = Api(client, make_key(engine, shop_id, ("checkout",))).validate(stored[0]).json()
    assert server["reason"] == "voided" and server["shopper"]["reason"] == "unknown_code"  # the exact reason stays
    wrong = admin.client.put("/api/v1/shop/refusals", json={"mode": "chatty"}, headers=admin.headers)
    assert wrong.status_code == 422 and wrong.json()["reason"] == "invalid_input"
    refused = storefront.client.put("/api/v1/shop/refusals", json={"mode": "detailed"}, headers=storefront.headers)
    assert refused.status_code == 403
