"""Browser tests: skipped with a reason where Debian's Chromium or Playwright is missing,
failed instead when COUPONRY_REQUIRE_BROWSER=1 (CI installs both)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.harness import CHROMIUM, REQUIRED, Running, chromium, running_app


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent (apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _missing()
    if missing:
        if REQUIRED:
            pytest.fail(f"browser tests are required here (COUPONRY_REQUIRE_BROWSER=1) but {missing}")
        pytest.skip(f"browser tests need Debian's Chromium: {missing}")
    with chromium() as b:
        yield b


@pytest.fixture
def app(tmp_path: Path, browser: Any) -> Iterator[Running]:
    with running_app(tmp_path) as run:
        yield run
