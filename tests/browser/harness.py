"""A real Couponry server (uvicorn, SQLite file, sandbox store, in-process worker) on a free
loopback port, and a headless Debian Chromium driven by Playwright. Shared by the browser tests
and bench/admin_vitals.py.

Chromium: /usr/bin/chromium (Debian's `chromium` package; never `playwright install`). Where it
is absent the browser tests skip, unless COUPONRY_REQUIRE_BROWSER=1 (set by .ci/run) makes that
a failure."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from plugin.settings import Secret, Settings
from plugin.shops.shops import ensure_local_shop
from plugin.store.db import session_scope
from plugin.store.migrate import upgrade
from plugin.store.units import open_engine
from plugin.web.app import create_app

CHROMIUM = Path(os.environ.get("COUPONRY_CHROMIUM", "/usr/bin/chromium"))
REQUIRED = os.environ.get("COUPONRY_REQUIRE_BROWSER") == "1"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SECRET = "browser-test-secret-key-0123456789abcdef"
SHOPIFY = {"client_id": "api-key", "client_secret": "shopify-app-secret-0123456789abcdef0123"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    url: str
    settings: Settings
    shop_id: int
    engine: Any


@contextmanager
def running_app(tmp: Path, database_url: str | None = None, **overrides: Any) -> Iterator[Running]:
    """The app as `couponry serve` runs it, on its own port, until the block ends (on a fresh
    SQLite file in `tmp` unless `database_url` names a database, e.g. a seeded benchmark shop)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        database_url=database_url or f"sqlite:///{tmp / 'browser.db'}",
        secret_key=Secret(SECRET),
        public_url=url,
        port=port,
        run_worker_in_process=True,
        sandbox_enabled=True,
        connector_config={"shopify": SHOPIFY},
        **overrides,
    )
    engine = open_engine(settings.database_url)
    upgrade(engine)  # the schema as `couponry migrate` makes it
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, settings.default_shop_domain)
        shop_id = shop.id
    assert shop_id is not None
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="browser-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the app did not start")
        time.sleep(0.05)
    try:
        yield Running(url=url, settings=settings, shop_id=shop_id, engine=engine)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        engine.dispose()


@contextmanager
def chromium() -> Iterator[Any]:
    """A fresh headless Chromium (its own profile directory) through Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True
        )  # Playwright gives each launch a new empty profile directory (--user-data-dir)
        try:
            yield browser
        finally:
            browser.close()


def wait_until(check: Any, *, timeout: float = 20.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(every)


def api(run: Running, key: str) -> httpx.Client:
    return httpx.Client(base_url=f"{run.url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=10)
