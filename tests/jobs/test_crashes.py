"""Crashes (issue 4): real processes on 127.0.0.1, killed with SIGKILL at a moment the test
picks by watching the database, then started again.

- A worker killed mid-push: after a new worker takes the job over (its lease ran out), every
  code is held by the sandbox store exactly once and marked synced; only the chunk that was
  in flight when the worker died may have been sent twice (the store answers it `existing`).
- The app killed while order webhooks stream in from the sandbox store (a separate process,
  as a platform is): after it is back and the store's retries are through, every order is
  recorded exactly once as a redemption.

On SQLite by default, on PostgreSQL with COUPONRY_TEST_DATABASE_URL (as CI runs both).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func
from sqlmodel import col, select

from plugin import shared_secrets as keys
from plugin.platforms import sync
from plugin.sandbox import store
from plugin.sandbox.deliverer import sign
from plugin.settings import Secret, Settings
from plugin.store.db import session_scope
from plugin.store.models import Campaign, Code, Job, Redemption, WebhookEvent
from plugin.store.sandbox_models import SandboxCode, SandboxDelivery
from tests.crash_proc import SECRET
from tests.ingest import SHOP, campaign_codes, make_campaign

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Child processes of one test, each logging to a file; all killed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with (self.tmp / f"{name}.log").open("ab") as log:  # the child keeps its own handle
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.crash_proc", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.started.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_http(port: int, timeout: float = 20.0) -> None:
    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout, f"the app on port {port}", interval=0.05)


def count(engine: Engine, stmt: object) -> int:
    with session_scope(engine) as session:
        return int(session.exec(stmt).one())  # type: ignore[call-overload]


def test_a_worker_killed_mid_push_leaves_every_code_synced_exactly_once(
    engine: Engine, shop_id: int, database_url: str, processes: Processes
) -> None:
    n, chunk = 3000, 250
    campaign_id = make_campaign(engine, shop_id, count=n)
    with session_scope(engine) as session:
        # 4 requests a second: the push takes a few seconds, time to kill the worker mid-way
        store.set_knobs(session, SHOP, {"rate_limit": 4})
        push_id = sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    port = free_port()
    platform_url = f"http://127.0.0.1:{port}"
    processes.start("platform", "app", "--db", database_url, "--port", str(port), "--sandbox")
    wait_http(port)
    worker_args = ("worker", "--db", database_url, "--public-url", platform_url, "--lease", "2")
    first = processes.start("worker-1", *worker_args)

    synced = select(func.count()).select_from(Code).where(col(Code.sync_status) == "synced")
    wait_until(lambda: count(engine, synced) >= n // 3, 30, "a third of the codes synced")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    at_kill = count(engine, synced)
    assert at_kill < n, "the push finished before the worker was killed: nothing was tested"
    with session_scope(engine) as session:
        job = session.get_one(Job, push_id)
        assert job.status == "running"  # left behind by the dead worker, under its lease

    processes.start("worker-2", *worker_args)

    def done() -> bool:
        with session_scope(engine) as session:
            # (the worker's periodic reconciliation may have queued jobs of its own meanwhile)
            return all(j.status == "done" for j in session.exec(select(Job)).all())

    wait_until(done, 35, "the push job done by the second worker", interval=0.05)
    ours = campaign_codes(engine, campaign_id)
    assert {c.sync_status for c in ours} == {"synced"}, processes.log("worker-2")
    with session_scope(engine) as session:
        held = session.exec(select(SandboxCode)).all()
        job = session.get_one(Job, push_id)
    # one attempt per worker at least: the second took it over after the lease (the store allows
    # 4 requests a second: an attempt that met its 429s after the connector's retries is retried)
    assert job.attempts >= 2
    # every code exactly once at the store (one row each, and nothing else)
    assert sorted(c.code_key for c in held) == sorted(c.code for c in ours)
    # sent once, except the chunk in flight when the worker died (the store said `existing`)
    again = [c for c in held if c.pushes > 1]
    assert len(again) <= chunk and all(c.pushes == 2 for c in again)
    assert sum(c.pushes for c in held) <= n + chunk


def test_the_app_killed_while_webhooks_stream_in_records_every_order_exactly_once(
    engine: Engine, shop_id: int, database_url: str, processes: Processes
) -> None:
    n = 400
    campaign_id = make_campaign(engine, shop_id, count=n)
    ours = campaign_codes(engine, campaign_id)
    app_port, platform_port = free_port(), free_port()
    with session_scope(engine) as session:
        discount, _ = store.save_discount(session, SHOP, {"kind": "percentage", "value": 10})
        assert discount.id is not None
        for start in range(0, n, 250):
            store.add_codes(session, SHOP, discount.id, [{"code": c.code} for c in ours[start : start + 250]], 250)
        store.set_knobs(
            session,
            SHOP,
            {
                "webhook_url": f"http://127.0.0.1:{app_port}/webhooks/sandbox",
                "duplicate": 0.2,
                "retry_base_seconds": 0.05,
                "max_retries": 60,
            },
        )
    app_args = ("app", "--db", database_url, "--port", str(app_port), "--in-process-worker")
    processes.start("app-1", *app_args)
    wait_until(lambda: _up(app_port), 20, "the app", interval=0.05)
    processes.start("platform", "app", "--db", database_url, "--port", str(platform_port), "--sandbox")

    placed: list[int] = []

    def shop_at_the_store() -> None:  # orders keep coming while the app dies and comes back
        for code in ours:
            with session_scope(engine) as session:
                order = store.place_order(session, SHOP, codes=[code.code], subtotal=5000, email="s@example.com")
                assert order.id is not None
                placed.append(order.id)
            time.sleep(0.01)

    shopper = threading.Thread(target=shop_at_the_store)
    shopper.start()
    try:
        recorded = select(func.count()).select_from(Redemption)
        wait_until(lambda: count(engine, recorded) >= n // 4, 30, "a quarter of the orders recorded")
        app = processes.started[0]
        app.send_signal(signal.SIGKILL)
        app.wait(10)
        at_kill = count(engine, recorded)
        time.sleep(0.5)  # deliveries fail meanwhile; the store retries them
        processes.start("app-2", *app_args)
    finally:
        shopper.join(60)
    assert at_kill < n, "every order was in before the kill: nothing was tested"
    wait_until(lambda: _up(app_port), 20, "the app again", interval=0.05)

    def settled() -> bool:
        with session_scope(engine) as session:
            pending = session.exec(
                select(func.count()).select_from(SandboxDelivery).where(col(SandboxDelivery.status) == "pending")
            ).one()
            waiting = session.exec(
                select(func.count()).select_from(WebhookEvent).where(col(WebhookEvent.status).in_(["received", "processing"]))
            ).one()
        return pending == 0 and waiting == 0

    # a delivery stored but not processed when the app died is swept a few seconds later
    wait_until(settled, 35, "every delivery delivered and processed", interval=0.1)
    with session_scope(engine) as session:
        deliveries = session.exec(select(SandboxDelivery)).all()
        events = session.exec(select(WebhookEvent)).all()
        rows = session.exec(select(Redemption)).all()
        campaign = session.get_one(Campaign, campaign_id)
        uses = session.exec(select(Code.uses).where(col(Code.campaign_id) == campaign_id)).all()
    assert len(placed) == n and len(deliveries) == n
    assert {d.status for d in deliveries} == {"delivered"}
    assert sum(d.attempts for d in deliveries) > n, "no delivery had to be retried: the kill missed the stream"
    assert len(events) == n and {e.status for e in events} == {"processed"}, processes.log("app-2")
    by_order = {r.order_id: r.code for r in rows}
    assert len(rows) == n and len(by_order) == n  # one redemption per order, none twice
    orders = {str(o): c.code for o, c in zip(placed, ours, strict=True)}
    assert by_order == orders
    assert set(uses) == {1} and campaign.redemption_count == n


def test_a_worker_killed_while_processing_webhooks_leaves_every_order_recorded_exactly_once(
    engine: Engine, shop_id: int, database_url: str, processes: Processes
) -> None:
    """The Procfile layout: the web process only stores, the workers process; one dies mid-stream."""
    n = 600
    campaign_id = make_campaign(engine, shop_id, count=n)
    ours = campaign_codes(engine, campaign_id)
    app_port = free_port()
    layout = ("--webhook-processing", "worker")
    processes.start("app", "app", "--db", database_url, "--port", str(app_port), *layout)
    wait_until(lambda: _up(app_port), 20, "the app", interval=0.05)
    worker_args = ("worker", "--db", database_url, "--public-url", f"http://127.0.0.1:{app_port}", *layout)
    processes.start("worker-1", *worker_args)
    secret = keys.webhook_secret(Settings(database_url=database_url, secret_key=Secret(SECRET)))

    def deliver_all() -> None:  # every order twice, as platforms retry
        with httpx.Client(base_url=f"http://127.0.0.1:{app_port}") as client:
            for again in (False, True):
                for n_, code in enumerate(ours):
                    body = json.dumps({"id": 90000 + n_, "discount_codes": [{"code": code.code, "amount": "1.00"}]}).encode()
                    headers = {
                        "X-Sandbox-Topic": "orders/create",
                        "X-Sandbox-Shop-Domain": SHOP,
                        "X-Sandbox-Delivery-Id": f"kill-{n_}",
                        "X-Sandbox-Hmac-Sha256": sign(secret, body),
                    }
                    assert client.post("/webhooks/sandbox", content=body, headers=headers).status_code == 200
                    if not again:
                        time.sleep(0.002)

    sender = threading.Thread(target=deliver_all)
    sender.start()
    try:
        recorded = select(func.count()).select_from(Redemption)
        wait_until(lambda: count(engine, recorded) >= n // 4, 30, "a quarter of the orders recorded")
        worker = processes.started[-1]
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        at_kill = count(engine, recorded)
        processes.start("worker-2", *worker_args)
    finally:
        sender.join(120)
    assert at_kill < n, "every order was in before the kill: nothing was tested"

    def settled() -> bool:
        waiting = select(func.count()).select_from(WebhookEvent).where(col(WebhookEvent.status).in_(["received", "processing"]))
        return count(engine, select(func.count()).select_from(WebhookEvent)) == n and count(engine, waiting) == 0

    wait_until(settled, 60, "every delivery processed", interval=0.1)
    with session_scope(engine) as session:
        events = session.exec(select(WebhookEvent)).all()
        rows = session.exec(select(Redemption)).all()
        campaign = session.get_one(Campaign, campaign_id)
        uses = session.exec(select(Code.uses).where(col(Code.campaign_id) == campaign_id)).all()
    assert {e.status for e in events} == {"processed"}, processes.log("worker-2")
    by_order = {r.order_id: r.code for r in rows}
    assert len(rows) == n and by_order == {str(90000 + i): c.code for i, c in enumerate(ours)}
    assert set(uses) == {1} and campaign.redemption_count == n


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
