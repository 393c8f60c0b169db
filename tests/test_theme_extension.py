"""The Shopify theme app extension (extensions/couponry-storefront), checked for what Shopify's
CLI would refuse or warn about, since `shopify app deploy` is not run here (README: Storefront
script). Sources: "Configure theme app extensions" (file structure, app embed blocks with
`"target": "body"`), "Input settings" (setting types and their standard attributes), Theme
Check's AssetSizeAppBlockJavaScript (compressed JavaScript of an app block, 10,000 bytes) and
MaxFileSize (a `blocks/` file, 256 KB)."""

from __future__ import annotations

import gzip
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "extensions" / "couponry-storefront"
SERVED_SCRIPT = ROOT / "plugin" / "web" / "static" / "storefront" / "couponry.js"
BLOCKS = sorted((EXTENSION / "blocks").glob("*.liquid"))
# "Input settings": the basic input setting types (a block's merchant-facing settings)
BASIC_SETTING_TYPES = {"checkbox", "number", "radio", "range", "select", "text", "textarea"}
SCHEMA = re.compile(r"{%-?\s*schema\s*-?%}(.*?){%-?\s*endschema\s*-?%}", re.S)
ASSET_URL = re.compile(r"""['"]([^'"]+)['"]\s*\|\s*asset_url""")
JS_COMPRESSED_LIMIT = 10_000
BLOCK_FILE_LIMIT = 256 * 1024


def schema_of(path: Path) -> dict[str, Any]:
    found = SCHEMA.findall(path.read_text())
    assert len(found) == 1, f"{path.name}: one {{% schema %}} tag"
    parsed: dict[str, Any] = json.loads(found[0])
    return parsed


def test_the_extension_config_is_a_theme_extension() -> None:
    config = tomllib.loads((EXTENSION / "shopify.extension.toml").read_text())
    assert config["type"] == "theme"
    assert re.fullmatch(r"[a-z0-9-]{1,30}", config["name"])
    assert BLOCKS, "at least one block"
    # only the folders a theme app extension may hold
    assert {p.name for p in EXTENSION.iterdir() if p.is_dir()} <= {"assets", "blocks", "snippets", "locales"}


@pytest.mark.parametrize("path", BLOCKS, ids=lambda p: p.name)
def test_each_block_is_an_app_embed_with_valid_settings(path: Path) -> None:
    schema = schema_of(path)
    assert schema["target"] == "body"  # an app embed block: on every page, switched on in the theme editor
    assert isinstance(schema["name"], str) and schema["name"].strip()
    ids = [setting["id"] for setting in schema.get("settings", [])]
    assert len(ids) == len(set(ids)), "setting ids are unique"
    for setting in schema.get("settings", []):
        assert setting["type"] in BASIC_SETTING_TYPES, setting
        assert setting["label"] and re.fullmatch(r"[a-z0-9_]+", setting["id"])
        if setting["type"] == "select":
            values = [option["value"] for option in setting["options"]]
            assert all(option["label"] for option in setting["options"])
            assert setting["default"] in values
        if setting["type"] == "checkbox":
            assert isinstance(setting.get("default", False), bool)
        # every setting the block reads is declared, and every declared one is used
        assert f"block.settings.{setting['id']}" in path.read_text()
    used = set(re.findall(r"block\.settings\.(\w+)", SCHEMA.sub("", path.read_text())))
    assert used <= set(ids)
    assert path.stat().st_size <= BLOCK_FILE_LIMIT


@pytest.mark.parametrize("path", BLOCKS, ids=lambda p: p.name)
def test_every_asset_a_block_references_exists_and_is_small(path: Path) -> None:
    text = SCHEMA.sub("", path.read_text())
    referenced = ASSET_URL.findall(text) + [schema_of(path).get(k) for k in ("javascript", "stylesheet") if k in schema_of(path)]
    assert referenced, "the block loads the script"
    for name in referenced:
        asset = EXTENSION / "assets" / name
        assert asset.is_file(), name
        if name.endswith(".js"):
            assert len(gzip.compress(asset.read_bytes(), 9)) <= JS_COMPRESSED_LIMIT


def test_the_extensions_script_is_the_script_the_app_serves() -> None:
    """One script: the extension carries a copy (Shopify serves it from its CDN); refresh it with
    `cp plugin/web/static/storefront/couponry.js extensions/couponry-storefront/assets/`."""
    assert (EXTENSION / "assets" / "couponry.js").read_bytes() == SERVED_SCRIPT.read_bytes()


def test_the_block_talks_through_the_app_proxy_with_no_key() -> None:
    for path in BLOCKS:
        text = path.read_text()
        assert 'data-proxy="/apps/' in text
        assert "data-key" not in text and "cpy_" not in text  # no API key in a theme
