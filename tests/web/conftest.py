"""Fixtures for the JSON API: the app on the test database, API keys of two shops, and helpers
that set up campaigns and codes through the services (fast) so each test drives the API."""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.applications import Starlette

from plugin.campaigns import campaigns, issuing
from plugin.checkout.ratelimit import GuessLimits
from plugin.settings import Settings
from plugin.shops import apikeys
from plugin.shops.shops import ensure_local_shop
from plugin.store.db import session_scope
from plugin.store.models import Code, Shop, utcnow

with warnings.catch_warnings():
    # Starlette nudges TestClient users towards httpx2; httpx is what the app ships with.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

REDIS_URL = os.environ.get("COUPONRY_TEST_REDIS_URL")

GBP = "GBP"
FORMAT = {"length": 10, "check_chars": 1}  # display form XXXX-XXXX-XX style codes with a check character


def basket(*lines: tuple[str, int, int], currency: str = GBP, **extra: Any) -> dict[str, Any]:
    """A basket: (product_id, quantity, unit_price) per line."""
    return {
        "currency": currency,
        "lines": [{"product_id": p, "quantity": q, "unit_price": u} for p, q, u in lines],
        **extra,
    }


BASKET = basket(("p1", 2, 2500))  # £50.00


def rules(**parts: Any) -> dict[str, Any]:
    """Campaign rules: 10% off in GBP unless `parts` say otherwise (nested dicts merge shallowly)."""
    base: dict[str, Any] = {"currency": GBP, "discount": {"type": "percentage", "percent": "10"}}
    base.update(parts)
    return base


@dataclass
class Api:
    """A TestClient bound to one API key."""

    client: TestClient
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get("/api/v1" + path, headers=self.headers, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.client.post("/api/v1" + path, headers=self.headers, json=json, **kw)

    def patch(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.client.patch("/api/v1" + path, headers=self.headers, json=json, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.delete("/api/v1" + path, headers=self.headers, **kw)

    def validate(self, code: str, basket_: dict[str, Any] | None = None, **extra: Any) -> httpx.Response:
        return self.post("/validate", {"code": code, "basket": basket_ or BASKET, **extra})

    def redeem(self, code: str, order_id: str, basket_: dict[str, Any] | None = None, **extra: Any) -> httpx.Response:
        return self.post("/redemptions", {"code": code, "order_id": order_id, "basket": basket_ or BASKET, **extra})

    def reserve(self, code: str, checkout_id: str, **extra: Any) -> httpx.Response:
        return self.post("/reservations", {"code": code, "checkout_id": checkout_id, **extra})


def make_key(engine: Engine, shop_id: int, scopes: tuple[str, ...] = ("admin", "checkout")) -> str:
    with session_scope(engine) as session:
        _, key = apikeys.create_key(session, shop_id=shop_id, name="test", scopes=scopes)
    return key


@pytest.fixture
def other_shop_id(engine: Engine, shop_id: int) -> int:
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, "other.couponry.test")
        assert shop.id is not None and shop.id != shop_id
        return shop.id


@pytest.fixture
def key(engine: Engine, shop_id: int) -> str:
    return make_key(engine, shop_id)


@pytest.fixture
def other_key(engine: Engine, other_shop_id: int) -> str:
    return make_key(engine, other_shop_id)


def make_app(
    settings: Settings,
    engine: Engine,
    *,
    limit: str = "10000/minute",
    unnamed: str = "10000/minute",
    alarm: str = "1000000/hour",
) -> Starlette:
    """The app on the test database; failed guesses are allowed generously unless the
    rate-limit tests ask for real limits. Its counters get a namespace of their own, so runs
    sharing a Redis never see each other's failures."""
    from plugin.web.app import create_app

    app = create_app(settings, engine=engine)
    app.state.limiter = GuessLimits(
        settings.redis_url,
        per_shopper=limit,
        per_unnamed_key=unnamed,
        shop_alarm=alarm,
        namespace=f"test-{secrets.token_hex(6)}",
    )
    return app


@pytest.fixture
def app(settings: Settings, engine: Engine) -> Starlette:
    return make_app(settings, engine)


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def api(client: TestClient, key: str) -> Api:
    return Api(client, key)


@pytest.fixture
def other_api(client: TestClient, other_key: str) -> Api:
    return Api(client, other_key)


# --- setting up campaigns and codes through the services ----------------------------------


def make_campaign(
    engine: Engine,
    shop_id: int,
    rule_set: dict[str, Any] | None = None,
    *,
    codes: int = 0,
    code_format: dict[str, Any] | None = None,
    status: str | None = None,
    name: str = "Campaign",
) -> tuple[int, list[str]]:
    """A campaign with `codes` generated codes; returns its id and the stored codes (sorted)."""
    with session_scope(engine) as session:
        campaign = campaigns.create_campaign(
            session,
            shop_id=shop_id,
            name=name,
            code_format=code_format or FORMAT,
            currency=GBP,
            rules=rule_set,
            status=status,
        )
        campaign_id = campaign.id
    assert campaign_id is not None
    stored: list[str] = []
    if codes:
        batch = issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=codes)
        with Session(engine) as session:
            stored = list(session.exec(select(Code.code).where(col(Code.batch_id) == batch.id).order_by(col(Code.code))).all())
    return campaign_id, stored


def set_code(engine: Engine, shop_id: int, code: str, **values: Any) -> None:
    """Change a stored code directly (bind it, void it, give it an expiry...)."""
    with session_scope(engine) as session:
        row = session.exec(select(Code).where(col(Code.shop_id) == shop_id, col(Code.code) == code)).one()
        for name, value in values.items():
            setattr(row, name, value)
        session.add(row)


def get_code(engine: Engine, shop_id: int, code: str) -> Code:
    with Session(engine) as session:
        return session.exec(select(Code).where(col(Code.shop_id) == shop_id, col(Code.code) == code)).one()


def set_preferences(engine: Engine, shop_id: int, **prefs: Any) -> None:
    with session_scope(engine) as session:
        shop = session.get_one(Shop, shop_id)
        shop.preferences = {**shop.preferences, **prefs}
        session.add(shop)


def now() -> datetime:
    return utcnow()
