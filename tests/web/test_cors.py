"""CORS for storefront keys, through the hot route (`App.__call__`, no middleware): the preflight
is answered, the real POST carries the CORS headers only for an origin its key's shop allows,
and another origin is refused with a reason. The shop's origins are set through the admin API
(validated) and the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine
from starlette.applications import Starlette

from plugin.cli import main
from plugin.web.cors import PREFLIGHT_MAX_AGE
from tests.cli.test_cli import cli, cli_database_url  # noqa: F401  (fixtures)
from tests.web.conftest import BASKET, Api, TestClient, make_campaign, make_key, rules

SHOP_PAGE = "https://shop.example"
VALIDATE = "/api/v1/validate"


def hot_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, anything the Starlette stack (middleware, router) would answer fails the
    test: what is answered is answered by the hot route. (The client has started: its lifespan
    went through Starlette already.)"""

    async def router_used(*_: Any) -> None:
        raise AssertionError("answered through the Starlette stack, not the hot route")

    monkeypatch.setattr(Starlette, "__call__", router_used)


def storefront_post(client: TestClient, key: str, origin: str | None, body: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {key}"}
    if origin is not None:
        headers["Origin"] = origin
    return client.post(VALIDATE, json=body, headers=headers)


def test_the_preflight_is_answered_on_the_hot_route(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    hot_only(monkeypatch)
    asked = {
        "Origin": SHOP_PAGE,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    answer = client.options(VALIDATE, headers=asked)
    assert answer.status_code == 204  # (405 before)
    assert answer.headers["access-control-allow-origin"] == SHOP_PAGE
    assert answer.headers["access-control-allow-methods"] == "POST"
    # named: a `*` would not cover Authorization
    assert answer.headers["access-control-allow-headers"] == "Authorization, Content-Type"
    assert answer.headers["access-control-max-age"] == str(PREFLIGHT_MAX_AGE)
    assert answer.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in answer.headers  # a bearer header, never cookies
    # not an origin we could ever allow (a sandboxed frame's "null", a path): no grant
    for origin in ("null", "https://shop.example/page", "http://shop.example"):
        refused = client.options(VALIDATE, headers={**asked, "Origin": origin})
        assert refused.status_code == 204 and "access-control-allow-origin" not in refused.headers
    plain = client.options(VALIDATE)  # no CORS request at all
    assert plain.status_code == 204 and plain.headers["allow"] == "POST, OPTIONS"


def test_the_storefront_post_carries_cors_headers_only_for_the_shops_origins(
    engine: Engine, client: TestClient, api: Api, shop_id: int, other_shop_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    assert api.client.put("/api/v1/shop/origins", headers=api.headers, json={"origins": [SHOP_PAGE]}).status_code == 200
    other_admin = make_key(engine, other_shop_id)
    other_origins = {"origins": ["https://other.example"]}
    assert (
        client.put("/api/v1/shop/origins", headers={"Authorization": f"Bearer {other_admin}"}, json=other_origins).status_code
        == 200
    )
    key = make_key(engine, shop_id, ("storefront",))
    body = {"code": stored[0], "basket": BASKET}
    hot_only(monkeypatch)

    allowed = storefront_post(client, key, SHOP_PAGE, body)
    assert allowed.status_code == 200 and allowed.json()["valid"] is True
    assert allowed.headers["access-control-allow-origin"] == SHOP_PAGE and allowed.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in allowed.headers
    # a refusal the page must be able to read carries them too (the body fails validation here)
    bad = storefront_post(client, key, SHOP_PAGE, {"code": 7})
    assert bad.status_code == 422 and bad.headers["access-control-allow-origin"] == SHOP_PAGE

    for origin in ("https://evil.example", "https://other.example", "https://shop.example:8443", "null"):
        refused = storefront_post(client, key, origin, body)
        assert refused.status_code == 403 and refused.json()["reason"] == "origin_not_allowed", origin
        assert "access-control-allow-origin" not in refused.headers and refused.headers["vary"] == "Origin"

    server = storefront_post(client, key, None, body)  # no Origin: not a browser, as before
    assert server.status_code == 200 and "access-control-allow-origin" not in server.headers
    checkout_key = make_key(engine, shop_id, ("checkout",))  # server keys are not for pages
    from_page = storefront_post(client, checkout_key, SHOP_PAGE, body)
    assert from_page.status_code == 200 and "access-control-allow-origin" not in from_page.headers


def test_a_shop_with_no_origins_allows_no_page(
    engine: Engine, client: TestClient, shop_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    key = make_key(engine, shop_id, ("storefront",))
    hot_only(monkeypatch)
    refused = storefront_post(client, key, SHOP_PAGE, {"code": stored[0], "basket": BASKET})
    assert refused.status_code == 403 and refused.json()["reason"] == "origin_not_allowed"


def test_allowed_origins_are_exact_https_origins(engine: Engine, api: Api, shop_id: int) -> None:
    def put(origins: list[str]) -> Any:
        return api.client.put("/api/v1/shop/origins", headers=api.headers, json={"origins": origins})

    assert api.get("/shop/origins").json() == {"origins": []}
    wrongs = ("https://*.shop.example", "*", "https://shop.example/", "https://shop.example/cart", "http://shop.example",
              "shop.example", "https://shop.example:0", "https://shop.example:99999", "https://user@shop.example")  # fmt: skip
    for wrong in wrongs:
        answer = put([SHOP_PAGE, wrong])
        assert answer.status_code == 422 and answer.json()["reason"] == "invalid_origin", wrong
    assert api.get("/shop/origins").json() == {"origins": []}  # nothing half-saved
    # as a browser names them: lower case, the default port left out; duplicates once
    chosen = put(["https://Shop.Example", "https://shop.example:443", "https://checkout.shop.example:8443"])
    assert chosen.status_code == 200
    assert chosen.json() == {"origins": [SHOP_PAGE, "https://checkout.shop.example:8443"]}
    assert api.get("/shop/origins").json() == chosen.json()
    storefront = Api(api.client, make_key(engine, shop_id, ("storefront",)))
    assert storefront.client.put("/api/v1/shop/origins", headers=storefront.headers, json={"origins": []}).status_code == 403
    assert put([]).json() == {"origins": []}


def test_the_cli_sets_the_allowed_origins(cli: CliRunner) -> None:  # noqa: F811
    def run(*args: str) -> Any:
        result = cli.invoke(main, ["shops", "origins", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["origins"]

    assert run() == []
    assert run(SHOP_PAGE, "https://shop.example:8443") == [SHOP_PAGE, "https://shop.example:8443"]
    assert run() == [SHOP_PAGE, "https://shop.example:8443"]
    refused = cli.invoke(main, ["shops", "origins", "https://*.example"])
    assert refused.exit_code != 0 and "not an origin" in refused.output
    assert run("--clear") == []
