"""Brute force: failed validations are limited per shop and shopper (a storefront key's
connection address; for server keys the address and customer they name), in memory by default
and in Redis when configured; a 429 says when to come back. tests/web/test_guessing.py covers
whom failures count against and which refusals count."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import Engine

from plugin.settings import Settings
from tests.web.conftest import REDIS_URL, Api, TestClient, make_app, make_campaign, make_key, rules

LIMIT = 5


@pytest.fixture(params=["memory", "redis"])
def limited_app(request: pytest.FixtureRequest, settings: Settings, engine: Engine):  # type: ignore[no-untyped-def]
    if request.param == "redis":
        if not REDIS_URL:
            pytest.skip("Redis rate-limit storage: set COUPONRY_TEST_REDIS_URL (as .ci/run does on its PostgreSQL pass)")
        settings = replace(settings, redis_url=REDIS_URL)
    app = make_app(settings, engine, limit=f"{LIMIT}/minute")
    storage = type(app.state.limiter.storage).__name__
    assert storage == ("RedisStorage" if request.param == "redis" else "MemoryStorage")
    return app


def random_ip() -> str:
    """A fresh client address per test, so counters left in a shared Redis never interfere."""
    return "10." + ".".join(str(b) for b in secrets.token_bytes(3))


@pytest.fixture
def client_from(limited_app) -> Iterator:  # type: ignore[no-untyped-def]
    # One lifespan for the app (as a server runs it); the clients for each address send
    # requests without starting a second copy of the app's background tasks.
    with TestClient(limited_app):
        yield lambda ip: TestClient(limited_app, client=(ip, 40000))


def test_failed_validations_per_ip_get_429_with_retry_after(
    client_from, engine: Engine, shop_id: int, other_shop_id: int
) -> None:  # type: ignore[no-untyped-def]
    key, other_key = make_key(engine, shop_id, ("storefront",)), make_key(engine, other_shop_id, ("storefront",))
    ip = random_ip()
    api = Api(client_from(ip), key)
    for _ in range(LIMIT):
        assert api.validate("WRONG-CODE").status_code == 200
    blocked = api.validate("WRONG-CODE")
    assert blocked.status_code == 429
    assert blocked.headers["content-type"] == "application/problem+json"
    assert blocked.json()["reason"] == "too_many_attempts"
    assert 1 <= int(blocked.headers["retry-after"]) <= 61
    # blocked for valid-looking attempts too, until the window passes
    assert api.validate("ANOTHER-CODE").status_code == 429
    # another address, and the same address at another shop, are counted apart
    assert Api(client_from(random_ip()), key).validate("WRONG-CODE").status_code == 200
    assert Api(client_from(ip), other_key).validate("WRONG-CODE").status_code == 200


def test_successes_do_not_count(client_from, engine: Engine, shop_id: int) -> None:  # type: ignore[no-untyped-def]
    _, codes = make_campaign(engine, shop_id, rules(), codes=1)
    api = Api(client_from(random_ip()), make_key(engine, shop_id, ("storefront",)))
    for _ in range(LIMIT * 3):
        assert api.validate(codes[0]).json()["valid"] is True
    for _ in range(LIMIT):
        assert api.validate("WRONG-CODE").status_code == 200
    assert api.validate(codes[0]).status_code == 429


def test_failed_validations_per_customer_across_addresses(client_from, key: str) -> None:  # type: ignore[no-untyped-def]
    customer = {"email": f"{secrets.token_hex(6)}@example.com"}
    for _ in range(LIMIT):  # one attempt from each of LIMIT addresses, as a botnet would
        assert Api(client_from(random_ip()), key).validate("WRONG-CODE", customer=customer).status_code == 200
    fresh = Api(client_from(random_ip()), key)
    blocked = fresh.validate("WRONG-CODE", customer=customer)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    # another customer, or a call naming no shopper (the key's own ceiling), is not blocked
    assert fresh.validate("WRONG-CODE", customer={"id": secrets.token_hex(6)}).status_code == 200
    assert fresh.validate("WRONG-CODE").status_code == 200
