"""manifest.json (the app's listing) says what the connectors really declare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors import SHOP_CONNECTORS, shop_connector_class
from plugin import __version__

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
