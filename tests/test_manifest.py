"""manifest.json (the app's listing) says what the connectors really declare."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Match

from connectors import SHOP_CONNECTORS, shop_connector_class
from plugin import __version__
from plugin.settings import Settings
from plugin.store.db import make_engine
from plugin.web.app import create_app

MANIFEST = json.loads((Path(__file__).resolve().parents[1] / "manifest.json").read_text())


def test_manifest_names_every_shop_connector_and_the_version() -> None:
    assert MANIFEST["version"] == __version__
    assert set(MANIFEST["platforms"]) == set(SHOP_CONNECTORS)


@pytest.mark.parametrize("name", sorted(SHOP_CONNECTORS))
def test_scopes_and_topics_match_the_connector(name: str) -> None:
    connector = shop_connector_class(name)
    listed = MANIFEST["platforms"][name]
    assert listed["scopes"] == list(connector.SCOPES)
    assert listed["webhook_topics"] == list(connector.WEBHOOK_TOPICS)
    assert listed["webhook_url"] == f"/webhooks/{name}"


URL_KEYS = ("webhook_url", "install_url", "callback_url", "return_url", "load_url", "uninstall_url", "remove_user_url")


def _routed(app: Starlette, path: str) -> bool:
    scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
    return any(route.matches(scope)[0] != Match.NONE for route in app.routes)


@pytest.mark.parametrize("name", sorted(set(SHOP_CONNECTORS) - {"sandbox"}))
def test_every_platform_lists_install_and_callback_urls_the_app_serves(name: str, settings: Settings) -> None:
    listed = MANIFEST["platforms"][name]
    assert listed["install_url"].startswith(f"/install/{name}")
    assert listed["callback_url"].startswith(f"/install/{name}")
    app = create_app(replace(settings, sandbox_enabled=False), engine=make_engine("sqlite://"))
    for key in URL_KEYS:
        if key in listed:
            assert _routed(app, listed[key]), f"{name} {key} {listed[key]} has no route"
    assert not _routed(app, "/install/nowhere")


def test_the_shopify_app_proxy_points_at_the_apps_proxy_routes(settings: Settings) -> None:
    """Shopify's rules for an App Proxy ("Display dynamic store data with app proxies"): a subpath
    of letters, numbers, underscores and hyphens up to 30 characters, not admin, services,
    password or login; configuring one needs the write_app_proxy access scope."""
    proxy = MANIFEST["platforms"]["shopify"]["app_proxy"]
    assert proxy["prefix"] == "apps"  # the prefix the documentation's examples use
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,30}", proxy["subpath"])
    assert proxy["subpath"] not in ("admin", "services", "password", "login")
    assert "write_app_proxy" in MANIFEST["platforms"]["shopify"]["scopes"]
    app = create_app(replace(settings, sandbox_enabled=False), engine=make_engine("sqlite://"))
    # what Shopify forwards /<prefix>/<subpath>/claims/<token> to
    assert _routed(app, f"{proxy['url']}/claims/some-token")
    assert not _routed(app, f"{proxy['url']}/nowhere")
    # the theme app extension's script talks to the same proxy path
    block = (Path(__file__).resolve().parents[1] / MANIFEST["platforms"]["shopify"]["theme_extension"] / "blocks").glob(
        "*.liquid"
    )
    assert any(f'data-proxy="/{proxy["prefix"]}/{proxy["subpath"]}"' in path.read_text() for path in block)
    assert _routed(app, MANIFEST["urls"]["storefront_script"])
