"""Failed standalone sign-ins are limited per (shop, email) and per client address, in memory or
in Redis (shared by every web process); a lock holds even for the right password, and says why
and for how long (429 with Retry-After, the message on the form)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.applications import Starlette

from plugin.settings import Settings
from plugin.shops.shops import get_shop
from plugin.web.admin.signinlimit import SignInLimits
from tests.web.admin.conftest import PASSWORD, TestClient, form_token, set_up_owner
from tests.web.conftest import REDIS_URL, make_app

PER_ACCOUNT = 3
PER_ADDRESS = 5

Client = Callable[[str], TestClient]


@pytest.fixture(params=["memory", "redis"])
def limited_app(request: pytest.FixtureRequest, admin_settings: Settings, engine: Engine) -> Starlette:
    settings = replace(
        admin_settings, sign_in_limit=f"{PER_ACCOUNT}/15 minutes", sign_in_address_limit=f"{PER_ADDRESS}/15 minutes"
    )
    if request.param == "redis":
        if not REDIS_URL:
            pytest.skip("Redis rate-limit storage: set COUPONRY_TEST_REDIS_URL")
        settings = replace(settings, redis_url=REDIS_URL)
    app = make_app(settings, engine)
    # a namespace per test: counters left in a shared Redis never lock another test out
    app.state.sign_in_limits = SignInLimits.from_settings(
        app.state.limiter.storage, settings, namespace=f"test-sign-in-{secrets.token_hex(6)}"
    )
    assert type(app.state.limiter.storage).__name__ == ("RedisStorage" if request.param == "redis" else "MemoryStorage")
    return app


@pytest.fixture
def client_from(limited_app: Starlette) -> Iterator[Client]:
    with TestClient(limited_app):
        yield lambda ip: TestClient(limited_app, base_url="http://127.0.0.1:8000", follow_redirects=False, client=(ip, 40000))


def sign_in(client: TestClient, email: str, password: str, shop: str = "") -> object:
    token = form_token(client.get("/admin/sign-in").text)
    return client.post("/admin/sign-in", data={"csrf_token": token, "email": email, "password": password, "shop": shop})


def owner_of(client_from: Client, settings: Settings, shop_id: int, email: str) -> None:
    set_up_owner(client_from("192.0.2.250"), settings, shop_id, email=email)


def test_a_locked_account_refuses_even_the_right_password(client_from: Client, admin_settings: Settings, shop_id: int) -> None:
    owner_of(client_from, admin_settings, shop_id, "owner@shop.example")
    web = client_from("198.51.100.7")
    for _ in range(PER_ACCOUNT):
        wrong = sign_in(web, "owner@shop.example", "not the password!")
        assert wrong.status_code == 422 and "wrong email or password" in wrong.text
    locked = sign_in(web, "owner@shop.example", PASSWORD)
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["retry-after"]) <= 15 * 60 + 1
    assert "too many failed sign-ins" in locked.text and 'class="form-error"' in locked.text
    assert "couponry_admin=" not in locked.headers.get("set-cookie", "")
    # from another address too: the account's own counter is locked, not just this address
    elsewhere = sign_in(client_from("203.0.113.9"), "OWNER@shop.example ", PASSWORD)
    assert elsewhere.status_code == 429


def test_the_lock_is_per_shop_and_email(
    client_from: Client, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    owner_of(client_from, admin_settings, shop_id, "ann@shop.example")
    owner_of(client_from, admin_settings, other_shop_id, "ann@shop.example")
    owner_of(client_from, admin_settings, shop_id, "bob@shop.example")
    with Session(engine) as session:
        mine, theirs = get_shop(session, shop_id).domain, get_shop(session, other_shop_id).domain
    web = client_from("198.51.100.8")
    for _ in range(PER_ACCOUNT):
        assert sign_in(web, "ann@shop.example", "not the password!", shop=mine).status_code == 422
    assert sign_in(web, "ann@shop.example", PASSWORD, shop=mine).status_code == 429
    # leaving the shop out can't get round it: the attempt could open the locked account
    assert sign_in(web, "ann@shop.example", PASSWORD).status_code == 429
    # the same person in another shop, and another person of this shop, are not locked
    assert sign_in(client_from("198.51.100.9"), "ann@shop.example", PASSWORD, shop=theirs).status_code == 303
    assert sign_in(client_from("198.51.100.9"), "bob@shop.example", PASSWORD).status_code == 303


def test_failures_from_one_address_lock_that_address(client_from: Client, admin_settings: Settings, shop_id: int) -> None:
    owner_of(client_from, admin_settings, shop_id, "owner@shop.example")
    guesser = client_from("198.51.100.20")
    for n in range(PER_ADDRESS):  # a different email each time: no single account reaches its limit
        assert sign_in(guesser, f"nobody{n}@shop.example", "guess guess guess").status_code == 422
    refused = sign_in(guesser, "owner@shop.example", PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    # the owner, from their own address, is not locked out by the guesser
    assert sign_in(client_from("198.51.100.21"), "owner@shop.example", PASSWORD).status_code == 303


def test_a_right_password_before_the_limit_signs_in(client_from: Client, admin_settings: Settings, shop_id: int) -> None:
    owner_of(client_from, admin_settings, shop_id, "owner@shop.example")
    web = client_from("198.51.100.30")
    for _ in range(PER_ACCOUNT - 1):
        assert sign_in(web, "owner@shop.example", "typo typo typo").status_code == 422
    assert sign_in(web, "owner@shop.example", PASSWORD).status_code == 303
