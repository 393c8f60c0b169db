"""The admin on the test database: a TestClient, set-up links, signed-in users of two shops,
and session tokens as Shopify and BigCommerce sign them (shared/research/admin-ui.md §1)."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import jwt
import pytest
from sqlalchemy import Engine
from starlette.applications import Starlette

from plugin.settings import Settings
from plugin.shops import users
from plugin.store.db import session_scope
from plugin.store.models import Shop
from tests.web.conftest import make_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SHOPIFY = {"client_id": "api-key", "client_secret": "shopify-app-secret-0123456789abcdef0123"}
BIGCOMMERCE = {"client_id": "bc-client-id", "client_secret": "bc-client-secret-0123456789abcdef0123"}
SHOP = "test-shop.myshopify.com"
OTHER_SHOP = "other-shop.myshopify.com"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return replace(settings, sandbox_enabled=False, connector_config={"shopify": SHOPIFY, "bigcommerce": BIGCOMMERCE})


@pytest.fixture
def admin_app(admin_settings: Settings, engine: Engine) -> Starlette:
    return make_app(admin_settings, engine)


@pytest.fixture
def web(admin_app: Starlette) -> Iterator[TestClient]:
    with TestClient(admin_app, base_url="http://127.0.0.1:8000", follow_redirects=False) as c:
        yield c


def add_shop(engine: Engine, platform: str, domain: str, *, installed: bool = True) -> int:
    with session_scope(engine) as session:
        shop = Shop(platform=platform, domain=domain, name=domain, access_token_encrypted="x" if installed else None)
        session.add(shop)
        session.flush()
        assert shop.id is not None
        return shop.id


def session_token(*, shop: str = SHOP, secret: str = SHOPIFY["client_secret"], **overrides: Any) -> str:
    """An App Bridge ID token as Shopify signs it (HS256 with the app secret)."""
    now = int(time.time())
    claims = {
        "iss": f"https://{shop}/admin",
        "dest": f"https://{shop}",
        "aud": SHOPIFY["client_id"],
        "sub": "42",
        "exp": now + 60,
        "nbf": now - 1,
        "iat": now - 1,
        "jti": "jti-1",
        "sid": "sid-1",
        **overrides,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def form_token(page_text: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page_text)
    assert found, page_text
    return found[1]


def set_up_owner(client: TestClient, settings: Settings, shop_id: int, email: str = "owner@shop.example") -> None:
    """Create the shop's owner through the setup link and leave the client signed in."""
    link = users.setup_link(settings, shop_id).removeprefix(settings.public_url)
    page = client.get(link)
    assert page.status_code == 200, page.text
    answer = client.post(
        link, data={"csrf_token": form_token(page.text), "email": email, "password": PASSWORD, "confirm": PASSWORD}
    )
    assert answer.status_code == 303, answer.text
