"""Promise 1 under real concurrency: uvicorn server processes on the test database, hammered
through HTTP from a pool of client threads.

SQLite runs as deployed by default: one web process (its writes serialised on the event loop,
as DESIGN.md asks). PostgreSQL runs two web processes, each serving from its thread pool, as the
scale-out does. Every figure is checked twice: in the HTTP answers and in the database afterwards.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from plugin.store.models import Campaign, Code, CustomerUsage, Redemption, Reservation
from tests.web.conftest import BASKET, make_campaign, make_key, rules

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVER = """
import sys
import uvicorn
from plugin.settings import Secret, Settings
from plugin.web.app import create_app

url, port = sys.argv[1], int(sys.argv[2])
settings = Settings(database_url=url, secret_key=Secret("race-test-secret-0123456789-abcdefgh"), run_worker_in_process=False)
uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning", loop="uvloop", http="httptools")
"""
THREADS = 24


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def servers(engine: Engine, database_url: str) -> Iterator[list[str]]:
    """Base URLs of the server processes on the test database (its tables exist by now)."""
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = 1 if engine.dialect.name == "sqlite" else 2
    try:
        for _ in range(processes):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-c", SERVER, database_url, str(port)], cwd=ROOT, env=env)
            procs.append((proc, f"http://127.0.0.1:{port}"))
        for proc, base in procs:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, f"server {base} exited with {proc.returncode}"
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"server {base} did not start"
                time.sleep(0.1)
        yield [base for _, base in procs]
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Fleet:
    """Fires requests at the servers from a thread pool, each thread with its own keep-alive client."""

    def __init__(self, bases: list[str], key: str) -> None:
        self.bases = bases
        self.headers = {"Authorization": f"Bearer {key}"}
        self.local = threading.local()
        self.clients: list[httpx.Client] = []

    def _client(self) -> httpx.Client:
        client = getattr(self.local, "client", None)
        if client is None:
            base = self.bases[threading.get_ident() % len(self.bases)]
            client = self.local.client = httpx.Client(base_url=base, headers=self.headers, timeout=60)
            self.clients.append(client)
        return client

    def _one(self, job: tuple[str, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        path, body = job
        response = self._client().post("/api/v1" + path, json=body)
        return response.status_code, response.json()

    def fire(self, jobs: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
        try:
            with ThreadPoolExecutor(THREADS) as pool:
                return list(pool.map(self._one, jobs))
        finally:
            for client in self.clients:
                client.close()
            self.clients.clear()
            self.local = threading.local()


@pytest.fixture
def fleet(servers: list[str], engine: Engine, shop_id: int) -> Fleet:
    return Fleet(servers, make_key(engine, shop_id, ("checkout",)))


def tally(results: list[tuple[int, dict[str, Any]]]) -> Counter[tuple[int, str | None]]:
    return Counter((status, body.get("reason")) for status, body in results)


def count(engine: Engine, model: type, *where: Any) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(model).where(*where)).one())


def redeem(code: str, order_id: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return "/redemptions", {"code": code, "order_id": order_id, "basket": BASKET, **extra}


def test_10000_attempts_on_100_single_use_codes(fleet: Fleet, engine: Engine, shop_id: int) -> None:
    campaign_id, codes = make_campaign(engine, shop_id, rules(), codes=100)
    jobs = [redeem(code, f"order-{code}-{attempt}") for code in codes for attempt in range(100)]
    random.Random(7).shuffle(jobs)
    assert len(jobs) == 10_000
    results = fleet.fire(jobs)
    assert tally(results) == {(201, None): 100, (409, "already_redeemed"): 9_900}
    winners = Counter(body["code"] for status, body in results if status == 201)
    assert sorted(winners) == codes and set(winners.values()) == {1}
    with Session(engine) as session:
        uses = session.exec(select(Code.uses).where(col(Code.campaign_id) == campaign_id)).all()
        campaign = session.get_one(Campaign, campaign_id)
    assert sorted(uses) == [1] * 100
    assert count(engine, Redemption) == 100
    assert (campaign.redemption_count, campaign.discount_total) == (100, 100 * 500)


def test_per_customer_limits_hold_under_races(fleet: Fleet, engine: Engine, shop_id: int) -> None:
    _, codes = make_campaign(engine, shop_id, rules(usage={"uses_per_customer": 3}), codes=120)
    people = [{"id": "ann"}, {"email": "bob@example.com"}]
    jobs = [redeem(code, f"order-{i}", customer=people[i % 2]) for i, code in enumerate(codes)]
    results = fleet.fire(jobs)
    assert tally(results) == {(201, None): 6, (409, "customer_limit_reached"): 114}
    assert Counter(body["customer_id"] or body["email"] for status, body in results if status == 201) == {
        "ann": 3,
        "bob@example.com": 3,
    }
    with Session(engine) as session:
        usage = {u.customer_key: u.uses for u in session.exec(select(CustomerUsage)).all()}
    assert usage == {"id:ann": 3, "email:bob@example.com": 3}
    assert count(engine, Redemption) == 6
    assert count(engine, Code, col(Code.uses) > 0) == 6


def test_redemption_budget_holds_under_races(fleet: Fleet, engine: Engine, shop_id: int) -> None:
    campaign_id, codes = make_campaign(engine, shop_id, rules(budget={"max_redemptions": 7}), codes=100)
    results = fleet.fire([redeem(code, f"order-{code}") for code in codes])
    assert tally(results) == {(201, None): 7, (409, "budget_exhausted"): 93}
    with Session(engine) as session:
        assert session.get_one(Campaign, campaign_id).redemption_count == 7
    assert count(engine, Redemption) == 7 and count(engine, Code, col(Code.uses) > 0) == 7


def test_money_budget_holds_under_races(fleet: Fleet, engine: Engine, shop_id: int) -> None:
    fixed = rules(discount={"type": "fixed", "amount": 1000}, budget={"max_discount": 4500})
    campaign_id, codes = make_campaign(engine, shop_id, fixed, codes=100)
    results = fleet.fire([redeem(code, f"order-{code}") for code in codes])
    assert tally(results) == {(201, None): 4, (409, "budget_exhausted"): 96}
    with Session(engine) as session:
        campaign = session.get_one(Campaign, campaign_id)
    assert (campaign.redemption_count, campaign.discount_total) == (4, 4000)
    assert count(engine, Redemption) == 4


def test_one_checkout_wins_each_reservation(fleet: Fleet, engine: Engine, shop_id: int) -> None:
    _, codes = make_campaign(engine, shop_id, rules(), codes=10)
    jobs = [("/reservations", {"code": code, "checkout_id": f"chk-{i}"}) for code in codes for i in range(30)]
    random.Random(3).shuffle(jobs)
    results = fleet.fire(jobs)
    assert tally(results) == {(201, None): 10, (409, "held_by_other_checkout"): 290}
    assert sorted(body["code"] for status, body in results if status == 201) == codes
    assert count(engine, Reservation) == 10
    # the winners' holds then beat every other checkout's redemption
    losers = [redeem(code, f"late-{i}", checkout_id=f"late-{i}") for i, code in enumerate(codes * 3)]
    assert tally(fleet.fire(losers)) == {(409, "held_by_other_checkout"): 30}


def test_retries_of_one_order_record_one_redemption(fleet: Fleet, engine: Engine, shop_id: int) -> None:
    campaign_id, codes = make_campaign(engine, shop_id, rules(), codes=10)
    jobs = [redeem(code, f"order-{code}") for code in codes for _ in range(30)]
    random.Random(5).shuffle(jobs)
    results = fleet.fire(jobs)
    assert tally(results) == {(201, None): 10, (200, None): 290}
    ids: dict[str, set[int]] = {}
    for _, body in results:
        ids.setdefault(body["code"], set()).add(body["id"])
    assert all(len(found) == 1 for found in ids.values()) and sorted(ids) == codes
    assert sum(body["duplicate"] for _, body in results) == 290
    assert count(engine, Redemption) == 10
    with Session(engine) as session:
        assert session.get_one(Campaign, campaign_id).redemption_count == 10
        assert sorted(session.exec(select(Code.uses).where(col(Code.campaign_id) == campaign_id)).all()) == [1] * 10
