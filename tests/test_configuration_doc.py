"""docs/configuration.md stays complete: every variable the settings read, every COUPONRY_ name the
code mentions, and every connector, appear in it; and no setting lacks a variable."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

from plugin import settings as settings_module
from plugin.settings import Settings

ROOT = Path(__file__).parents[1]
DOC = (ROOT / "docs" / "configuration.md").read_text()
FROM_ENV = inspect.getsource(Settings.from_env)


def variables_read_by_the_settings() -> set[str]:
    names = {f"COUPONRY_{name}" for name in re.findall(r'\bget\("([A-Z_]+)"', FROM_ENV)}
    names |= set(re.findall(r'"(COUPONRY_[A-Z_]+)"', FROM_ENV))
    names |= set(re.findall(r'env\.get\("([A-Z_]+)"\)', FROM_ENV))
    names |= {"PORT"} if '"PORT"' in FROM_ENV else set()
    return names


def test_the_scan_finds_the_settings() -> None:
    """The patterns above still read from_env (a rewrite of it must not make the next test vacuous)."""
    found = variables_read_by_the_settings()
    assert {"DATABASE_URL", "REDIS_URL", "PORT", "COUPONRY_SECRET_KEY", "COUPONRY_SYNC_CHUNK", "COUPONRY_LOG_LEVEL"} <= found
    assert len(found) >= 30


def test_every_variable_the_settings_read_is_documented() -> None:
    missing = sorted(name for name in variables_read_by_the_settings() if f"`{name}`" not in DOC)
    assert missing == []


def test_every_setting_is_read_from_the_environment() -> None:
    """A field of Settings that from_env never sets could not be configured, nor documented."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    unset = sorted(name for name in fields if not re.search(rf"\b{name}=", FROM_ENV))
    assert unset == []


def test_every_couponry_variable_named_in_the_code_is_documented() -> None:
    named: set[str] = set()
    for package in ("plugin", "connectors"):
        for path in (ROOT / package).rglob("*.py"):
            named |= set(re.findall(r"\b(COUPONRY_[A-Z][A-Z0-9_]*[A-Z0-9]|PROMETHEUS_MULTIPROC_DIR)\b", path.read_text()))
    connector_options = {n for n in named if n.split("_")[1].lower() in settings_module._CONNECTOR_NAMES}
    for name in sorted(connector_options):  # documented as the option in its connector's row
        option = name.split("_", 2)[2]
        assert f"`{option}`" in DOC or f"`…_{option}`" in DOC, name
    missing = sorted(n for n in named - connector_options if f"`{n}`" not in DOC)
    assert missing == []


def test_every_connector_has_its_row() -> None:
    for name in settings_module._CONNECTOR_NAMES:
        assert f"`{name.upper()}`" in DOC, name


def test_the_readme_links_the_reference_and_keeps_its_first_lines() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/configuration.md" in readme and "docs/deploy.md" in readme
    assert readme.startswith(
        "```sh\npython3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/couponry serve\n"
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest\n```\n"
    )
