"""Many processes behave as one app (issue 17): the Procfile's topology as real processes on
127.0.0.1 against one fresh PostgreSQL database (a new schema) and one Redis: two `release`s at
once, then two `web` (`couponry serve`, webhooks only stored) and two `worker` (`couponry
worker`), a fake Shopify enforcing its cost bucket in real time (tests/fake_platform.py).

Through both web processes at once: checkouts racing for single-use codes (validate, reserve,
redeem), claims of the same recipients, signed order webhooks (every delivery twice, some
cancellations before their order), an admin session, failed guesses; meanwhile the workers push
two campaigns to the Shopify shop. Then: release migrated once; no job ran twice at once (the
fake's bulk creations of one campaign never overlap); the guess limit and the Shopify cost
bucket are shared (Redis); a session from one web process works on the other; every effect
happened exactly once; never over-redeemed; the counters equal the rows. Again with a worker
SIGKILLed mid-push: its job is taken over after the lease.

Runs on PostgreSQL with COUPONRY_TEST_REDIS_URL (as .ci/run's second pass does).
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, func, update
from sqlmodel import col, select

from bench.fake_shopify import DISCOUNT_ID
from plugin import shared_secrets as keys
from plugin.campaigns import figures
from plugin.platforms import sync
from plugin.sandbox.deliverer import sign
from plugin.settings import Secret, Settings
from plugin.shops import apikeys, tokens, users
from plugin.shops.shops import ensure_local_shop
from plugin.store.db import make_engine, session_scope
from plugin.store.models import Campaign, Code, Job, Redemption, Shop, WebhookEvent
from plugin.store.ratestate import shopify_key
from tests.ingest import campaign_codes, make_campaign
from tests.processes import (
    Processes,
    child_env,
    couponry_command,
    free_port,
    fresh_postgres_schema,
    healthy,
    wait_until,
)
from tests.store.test_release import assert_migrated_once, finish, start_release

REDIS_URL = os.environ.get("COUPONRY_TEST_REDIS_URL")
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(not REDIS_URL, reason="the scale-out shares state in Redis: set COUPONRY_TEST_REDIS_URL"),
]

SECRET = "scaleout-test-secret-0123456789-abcdef"
LOCAL = "local.couponry.test"
GUESS_LIMIT = 6  # failed guesses a minute per shopper (COUPONRY_FAILED_CODE_LIMIT)
LEASE = 3  # COUPONRY_WORKER_LEASE_SECONDS: a dead worker's job is taken over this soon
CHUNK = 100  # COUPONRY_SYNC_CHUNK: each push job sends one Shopify batch, then queues the rest
BUCKET, RESTORE = 500, 250  # the fake's cost bucket: two pushes at once must share it
PASSWORD = "correct horse battery staple"
BASKET = {"currency": "USD", "lines": [{"product_id": "p1", "quantity": 2, "unit_price": 2500}]}


@dataclass
class Topology:
    """The processes, the database they share, and what the test set up in it."""

    def phase(self, what: str) -> None:
        """Print how long the test has run (shown by pytest when it fails, or with -s)."""
        print(f"{time.monotonic() - self.started:6.1f}s  {what}", flush=True)

    url: str
    engine: Engine
    settings: Settings
    processes: Processes
    releases: list[tuple[int, str, str]]
    webs: list[str] = field(default_factory=list)  # base URLs
    fake: str = ""
    shopify_domain: str = ""
    shopify_shop: int = 0
    local_shop: int = 0
    api_key: str = ""
    pushes: list[int] = field(default_factory=list)  # the Shopify shop's campaigns
    run: Run | None = None
    started: float = field(default_factory=time.monotonic)

    def env(self, **extra: str) -> dict[str, str]:
        assert REDIS_URL
        return child_env(
            DATABASE_URL=self.url,
            REDIS_URL=REDIS_URL,
            COUPONRY_SECRET_KEY=SECRET,
            COUPONRY_LOG_LEVEL="warning",
            COUPONRY_WEBHOOK_PROCESSING="worker",  # as the Procfile: web stores, workers process
            COUPONRY_SHOPIFY_BASE_URL=f"{self.fake}/admin/api/{{version}}/graphql.json",
            COUPONRY_SHOPIFY_CLIENT_ID="scaleout",
            COUPONRY_SHOPIFY_CLIENT_SECRET="scaleout-secret",
            COUPONRY_RECONCILE_HOURS="0",  # the fake answers pushes only
            COUPONRY_FAILED_CODE_LIMIT=f"{GUESS_LIMIT}/minute",
            COUPONRY_FAILED_CODE_LIMIT_UNNAMED="100000/minute",
            COUPONRY_WORKER_CONCURRENCY="1",  # two pushes at once run in two processes
            COUPONRY_SYNC_CHUNK=str(CHUNK),
            COUPONRY_WORKER_LEASE_SECONDS=str(LEASE),
            **extra,
        )

    def start_web(self, name: str) -> None:
        port = free_port()
        env = self.env(COUPONRY_IN_PROCESS_WORKER="false")
        self.processes.start(name, couponry_command("serve", "--port", str(port)), env)
        self.webs.append(f"http://127.0.0.1:{port}")

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        return self.processes.start(name, couponry_command("worker", "--poll", "0.1"), self.env())

    def worker_pid(self, locked_by: str) -> int:
        return int(locked_by.split(":")[-2])  # "host:pid:random" (plugin.jobs.worker)


@contextmanager
def topology(server_url: str, tmp_path: Path, *, push_sizes: tuple[int, int], hooks: int) -> Iterator[Topology]:
    """The processes up, the campaigns made, the pushes queued (as `couponry codes sync` does)."""
    processes = Processes(tmp_path)
    with fresh_postgres_schema(server_url, "couponry_scaleout") as url:
        engine = make_engine(url)
        try:
            fake_port = free_port()
            fake = f"http://127.0.0.1:{fake_port}"
            processes.start(
                "fake-shopify",
                [
                    sys.executable,
                    "-m",
                    "tests.fake_platform",
                    "--port",
                    str(fake_port),
                    "--bucket",
                    str(BUCKET),
                    "--restore-rate",
                    str(RESTORE),
                ],
                child_env(),
            )
            # two releases at once, as a retried deploy does: one migrates, the other waits and finds nothing to do
            releases = finish([start_release(url), start_release(url)])
            settings = Settings(database_url=url, secret_key=Secret(SECRET), redis_url=REDIS_URL)
            top = Topology(url, engine, settings, processes, releases, fake=fake)
            top.phase("released")
            seed(top)
            top.pushes = shopify_campaigns(top, push_sizes)
            top.run = prepare(top, hooks=hooks)
            top.phase("prepared")
            queue_syncs(top, top.pushes)
            top.start_web("web-1")
            top.start_web("web-2")
            top.start_worker("worker-1")
            top.start_worker("worker-2")
            for base in top.webs:
                port = int(base.rsplit(":", 1)[1])
                wait_until(partial(healthy, port), 60, f"the web process at {base}", 0.05)
            wait_until(lambda: _up(fake), 60, "the fake Shopify", 0.05)
            top.phase("processes up")
            yield top
        except AssertionError as exc:  # with what each process said
            raise AssertionError(f"{exc}\n{processes.logs()}") from None
        finally:
            processes.stop_all()
            engine.dispose()


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/stats", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def seed(top: Topology) -> None:
    """The shops, an API key; the campaigns are made by each test."""
    top.shopify_domain = f"scaleout-{secrets.token_hex(4)}.myshopify.com"  # its own bucket key in a shared Redis
    with session_scope(top.engine) as session:
        local = ensure_local_shop(session, LOCAL)
        shopify = Shop(
            platform="shopify",
            domain=top.shopify_domain,
            name="Scale-out",
            access_token_encrypted=tokens.encrypt(top.settings, "shpat_scaleout"),
            scopes="write_discounts read_orders",
        )
        session.add(shopify)
        session.flush()
        assert local.id is not None and shopify.id is not None
        top.local_shop, top.shopify_shop = local.id, shopify.id
        _, top.api_key = apikeys.create_key(
            session, shop_id=local.id, name="scaleout", scopes=("admin", "checkout", "distribution")
        )


def shopify_campaigns(top: Topology, sizes: tuple[int, ...]) -> list[int]:
    """Campaigns of the Shopify shop whose platform discount exists already (the fake's one)."""
    ids = [make_campaign(top.engine, top.shopify_shop, count=n, name=f"push {i}") for i, n in enumerate(sizes)]
    with session_scope(top.engine) as session:
        session.execute(update(Campaign).where(col(Campaign.id).in_(ids)).values(platform_discount_id=DISCOUNT_ID))
    return ids


def queue_syncs(top: Topology, campaign_ids: list[int]) -> None:
    """What `couponry codes sync --campaign N` does for each campaign."""
    with session_scope(top.engine) as session:
        for campaign_id in campaign_ids:
            sync.enqueue_push(session, shop_id=top.shopify_shop, campaign_id=campaign_id)


# --- the traffic ------------------------------------------------------------------------------


class Clients:
    """One keep-alive client per thread and web process; request n goes to process n % 2."""

    def __init__(self, webs: list[str], api_key: str) -> None:
        self.webs = webs
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.local = threading.local()
        self.all: list[httpx.Client] = []
        self.lock = threading.Lock()

    def on(self, index: int) -> httpx.Client:
        clients: list[httpx.Client] | None = getattr(self.local, "clients", None)
        if clients is None:
            clients = self.local.clients = [httpx.Client(base_url=b, headers=self.headers, timeout=60) for b in self.webs]
            with self.lock:
                self.all.extend(clients)
        return clients[index % len(clients)]

    def close(self) -> None:
        for client in self.all:
            client.close()


@dataclass
class Traffic:
    """What was sent, and what came back."""

    answers: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)  # (kind, code or key, status, body)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, key: str, response: httpx.Response) -> None:
        body = response.json() if response.headers.get("content-type", "").endswith("json") else {}
        with self.lock:
            self.answers.append((kind, key, response.status_code, body))


def checkout_calls(codes: list[str], rng: random.Random) -> list[Callable[[Clients, Traffic, int], None]]:
    """For each single-use code: validations, reservations by rival checkouts and redemptions on
    rival orders, shuffled."""
    calls: list[Callable[[Clients, Traffic, int], None]] = []
    for code in codes:
        for n in range(3):

            def validate(c: Clients, t: Traffic, i: int, code: str = code) -> None:
                t.record("validate", code, c.on(i).post("/api/v1/validate", json={"code": code, "basket": BASKET}))

            def reserve(c: Clients, t: Traffic, i: int, code: str = code, n: int = n) -> None:
                body = {"code": code, "checkout_id": f"chk-{code}-{n}"}
                t.record("reserve", code, c.on(i).post("/api/v1/reservations", json=body))

            def redeem(c: Clients, t: Traffic, i: int, code: str = code, order: str = f"order-{code}-{n}") -> None:
                body = {"code": code, "order_id": order, "basket": BASKET}
                t.record("redeem", code, c.on(i).post("/api/v1/redemptions", json=body))

            rival = partial(redeem, order=f"order-{code}-{n}-rival")
            calls += [validate, reserve, redeem, rival]
    rng.shuffle(calls)
    return calls


def claim_calls(campaign_id: int, recipients: list[str]) -> list[Callable[[Clients, Traffic, int], None]]:
    calls: list[Callable[[Clients, Traffic, int], None]] = []
    for _ in range(3):  # each recipient asks three times, through both processes
        for who in recipients:

            def claim(c: Clients, t: Traffic, i: int, who: str = who) -> None:
                t.record("claim", who, c.on(i).post(f"/api/v1/campaigns/{campaign_id}/claims", json={"email": who}))

            calls.append(claim)
    return calls


def webhook_calls(settings: Settings, codes: list[str]) -> tuple[list[Callable[[Clients, Traffic, int], None]], set[int]]:
    """One order per code, each delivery sent twice (platforms retry); every fourth order is
    cancelled, half of those before the order itself arrives. Returns the calls and the
    cancelled orders."""
    secret = keys.webhook_secret(settings)
    cancelled: set[int] = set()
    calls: list[Callable[[Clients, Traffic, int], None]] = []
    for n, code in enumerate(codes):
        order = 700_000 + n
        body = json.dumps(
            {
                "id": order,
                "status": "paid",
                "email": f"buyer{n}@example.com",
                "currency": "USD",
                "subtotal": "50.00",
                "total": "45.00",
                "discount_codes": [{"code": code, "amount": "5.00"}],
            }
        ).encode()
        steps = [("orders/create", f"create-{n}")] * 2
        if n % 4 == 0:
            cancelled.add(order)
            cancel = [("orders/cancelled", f"cancel-{n}")] * 2
            steps = cancel + steps if n % 8 == 0 else steps + cancel

        def deliver(c: Clients, t: Traffic, i: int, body: bytes = body, steps: list[tuple[str, str]] = steps) -> None:
            for k, (topic, delivery) in enumerate(steps):
                headers = {
                    "Content-Type": "application/json",
                    "X-Sandbox-Topic": topic,
                    "X-Sandbox-Shop-Domain": LOCAL,
                    "X-Sandbox-Delivery-Id": delivery,
                    "X-Sandbox-Hmac-Sha256": sign(secret, body),
                }
                t.record("webhook", delivery, c.on(i + k).post("/webhooks/sandbox", content=body, headers=headers))

        calls.append(deliver)
    return calls, cancelled


def fire(top: Topology, calls: list[Callable[[Clients, Traffic, int], None]], traffic: Traffic, threads: int = 12) -> None:
    clients = Clients(top.webs, top.api_key)
    try:
        with ThreadPoolExecutor(threads) as pool:
            for done in [pool.submit(call, clients, traffic, i) for i, call in enumerate(calls)]:
                done.result()
    finally:
        clients.close()


# --- the checks ---------------------------------------------------------------------------------


def guesses_are_limited_across_processes(top: Topology) -> None:
    """GUESS_LIMIT failed guesses of one shopper, alternating between the processes: the next is
    refused whichever process answers."""
    customer = {"email": f"guesser-{secrets.token_hex(4)}@example.com"}
    clients = Clients(top.webs, top.api_key)
    try:
        for n in range(GUESS_LIMIT):
            answer = clients.on(n).post("/api/v1/validate", json={"code": f"NOPE{n:06d}", "basket": BASKET, "customer": customer})
            assert answer.status_code == 200 and answer.json()["valid"] is False, answer.text
        for n in range(2):
            refused = clients.on(n).post("/api/v1/validate", json={"code": "NOPE999999", "basket": BASKET, "customer": customer})
            assert refused.status_code == 429 and refused.json()["reason"] == "too_many_attempts", (n, refused.text)
    finally:
        clients.close()


def a_session_from_one_process_works_on_the_other(top: Topology) -> None:
    first, second = top.webs
    link = users.setup_link(top.settings, top.local_shop).removeprefix(top.settings.public_url)
    with httpx.Client(base_url=first) as on_first, httpx.Client(base_url=second) as on_second:
        page = on_first.get(link)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert page.status_code == 200 and token, page.text
        form = {"csrf_token": token[1], "email": "owner@shop.example", "password": PASSWORD, "confirm": PASSWORD}
        made = on_first.post(link, data=form)
        assert made.status_code == 303, made.text
        cookie = made.cookies["couponry_admin"]
        assert on_second.get("/admin/").status_code == 303  # no session: to the sign-in page
        home = on_second.get("/admin/", headers={"Cookie": f"couponry_admin={cookie}"})
        assert home.status_code == 200 and "Key figures" in home.text


def settled(top: Topology, deliveries: int, shopify_codes: int) -> Callable[[], bool]:
    def check() -> bool:
        with session_scope(top.engine) as session:
            busy = session.exec(select(func.count()).select_from(Job).where(col(Job.status).in_(["queued", "running"]))).one()
            events = session.exec(select(WebhookEvent.status)).all()
            synced = session.exec(
                select(func.count())
                .select_from(Code)
                .where(col(Code.shop_id) == top.shopify_shop, col(Code.sync_status) == "synced")
            ).one()
        return busy == 0 and len(events) == deliveries and set(events) <= {"processed"} and synced == shopify_codes

    return check


def assert_releases_migrated_once(top: Topology) -> None:
    assert_migrated_once(top.releases, "postgresql")


def assert_never_over_redeemed(top: Topology, traffic: Traffic, codes: list[str]) -> None:
    """Each single-use code redeemed at most once (a rival checkout's hold may keep it from
    every order), and the database holds exactly the redemptions that were answered 201."""
    redeemed = Counter(key for kind, key, status, _ in traffic.answers if kind == "redeem" and status == 201)
    refused = Counter(body.get("reason") for kind, _, status, body in traffic.answers if kind != "claim" and status == 409)
    assert set(refused) <= {"already_redeemed", "held_by_other_checkout", "usage_limit_reached"}, refused
    assert {s for kind, _, s, _ in traffic.answers if kind in ("redeem", "reserve", "validate")} <= {200, 201, 409}
    assert set(redeemed.values()) <= {1} and len(redeemed) >= len(codes) // 3, redeemed
    with session_scope(top.engine) as session:
        rows = session.exec(select(Redemption.code).where(col(Redemption.code).in_(codes))).all()
        uses = dict(session.exec(select(Code.code, Code.uses).where(col(Code.code).in_(codes))).all())
    assert Counter(rows) == redeemed
    assert uses == {code: redeemed[code] for code in codes}


def assert_claims_once_each(traffic: Traffic, recipients: list[str]) -> None:
    given: dict[str, set[str]] = {}
    for kind, who, status, body in traffic.answers:
        if kind == "claim":
            assert status in (200, 201), body
            given.setdefault(who, set()).add(body["stored_code"])
    assert sorted(given) == sorted(recipients) and all(len(c) == 1 for c in given.values()), "one recipient, one code"
    handed = [next(iter(c)) for c in given.values()]
    assert len(set(handed)) == len(handed), "two recipients got the same code"
    created = Counter(who for kind, who, _, body in traffic.answers if kind == "claim" and body.get("created"))
    assert created == dict.fromkeys(recipients, 1)


def assert_orders_counted_once(top: Topology, traffic: Traffic, codes: list[str], cancelled: set[int]) -> None:
    assert {status for kind, _, status, _ in traffic.answers if kind == "webhook"} == {200}
    with session_scope(top.engine) as session:
        rows = session.exec(select(Redemption).where(col(Redemption.source) == "webhook")).all()
        uses = dict(session.exec(select(Code.code, Code.uses).where(col(Code.code).in_(codes))).all())
    by_order = Counter(r.order_id for r in rows)
    assert set(by_order.values()) == {1} and len(by_order) == len(codes), "one redemption per order"
    for r in rows:
        order = int(r.order_id)
        assert r.status == ("rolled_back" if order in cancelled else "active"), (order, r.status)
        assert uses[r.code] == (0 if order in cancelled else 1), (r.code, uses[r.code])


def assert_pushed_once_without_overlap(top: Topology, campaign_ids: list[int], *, in_flight_again: int = 0) -> dict[str, Any]:
    stats = httpx.get(top.fake + "/stats").json()
    creations = httpx.get(top.fake + "/creations").json()
    campaign_of: dict[str, int] = {}
    for campaign_id in campaign_ids:
        for code in campaign_codes(top.engine, campaign_id):
            campaign_of[code.code] = campaign_id
    # every code at the fake once; sent again only if a dead worker's batch was in flight
    assert stats["codes_stored"] == len(campaign_of), stats
    assert stats["codes_failed"] <= in_flight_again, stats
    # no job ran twice at once: one campaign's bulk creations never overlap in time
    spans: dict[int, list[tuple[float, float]]] = {}
    for creation in creations:
        (campaign_id,) = {campaign_of[c.replace("-", "").upper()] for c in creation["codes"]}
        spans.setdefault(campaign_id, []).append((creation["added_at"], creation["last_read_at"]))
    assert sorted(spans) == sorted(campaign_ids)
    for campaign_id, intervals in spans.items():
        intervals.sort()
        for (_, end), (start, _) in pairwise(intervals):
            assert start >= end, f"campaign {campaign_id}: a batch sent at {start} while another was read until {end}"
    # the shared cost bucket: two processes pushing to one shop never overdrew it
    assert stats["throttled"] == 0, stats
    assert REDIS_URL
    client = redis.Redis.from_url(REDIS_URL)
    try:
        state = json.loads(client.get(f"couponry:rate:{shopify_key(top.shopify_domain)}") or b"{}")
    finally:
        client.close()
    assert state.get("maximum") == BUCKET and state.get("rate") == RESTORE, state
    return stats


def running_jobs(top: Topology, worker_id: str) -> list[Job]:
    with session_scope(top.engine) as session:
        return list(session.exec(select(Job).where(col(Job.locked_by) == worker_id, col(Job.status) == "running")).all())


def push_workers(top: Topology) -> set[int]:
    with session_scope(top.engine) as session:
        owners = session.exec(select(Job.locked_by).where(col(Job.kind) == "sync.push", col(Job.status) == "done")).all()
    return {top.worker_pid(o) for o in owners if o}


def assert_counters_equal_rows(top: Topology) -> None:
    with session_scope(top.engine) as session:
        report = figures.recount(session)
        assert report.changed == [], report.changed
        campaigns = session.exec(select(Campaign)).all()
        active = dict(
            session.exec(
                select(Redemption.campaign_id, func.count())
                .where(col(Redemption.status) == "active")
                .group_by(col(Redemption.campaign_id))
            ).all()
        )
    assert {c.id: c.redemption_count for c in campaigns if c.redemption_count or c.id in active} == active


# --- the tests ----------------------------------------------------------------------------------


@dataclass
class Run:
    checkout: list[str]
    recipients: list[str]
    hooks: list[str]
    cancelled: set[int]
    calls: list[Callable[[Clients, Traffic, int], None]]
    deliveries: int


def prepare(top: Topology, *, hooks: int) -> Run:
    checkout_campaign = make_campaign(top.engine, top.local_shop, count=30, name="checkout")
    claim_campaign = make_campaign(top.engine, top.local_shop, count=60, name="claims")
    hook_campaign = make_campaign(top.engine, top.local_shop, count=hooks, name="orders")
    checkout = [c.code for c in campaign_codes(top.engine, checkout_campaign)]
    hook_codes = [c.code for c in campaign_codes(top.engine, hook_campaign)]
    recipients = [f"shopper{n}-{secrets.token_hex(2)}@example.com" for n in range(40)]
    rng = random.Random(17)
    hook_calls, cancelled = webhook_calls(top.settings, hook_codes)
    calls = checkout_calls(checkout, rng) + claim_calls(claim_campaign, recipients) + hook_calls
    rng.shuffle(calls)
    deliveries = len(hook_codes) + len(cancelled)  # distinct delivery ids: a create each, a cancel each
    return Run(checkout, recipients, hook_codes, cancelled, calls, deliveries)


def test_two_web_and_two_worker_processes_behave_as_one_app(postgres_engine: Engine | None, tmp_path: Path) -> None:
    assert postgres_engine is not None
    server = postgres_engine.url.render_as_string(hide_password=False)
    with topology(server, tmp_path, push_sizes=(400, 400), hooks=120) as top:
        pushes, run = top.pushes, top.run
        assert run is not None
        guesses_are_limited_across_processes(top)
        top.phase("guesses_are_limited_across_processes")
        a_session_from_one_process_works_on_the_other(top)
        top.phase("a_session_from_one_process_works_on_the_other")
        traffic = Traffic()
        fire(top, run.calls, traffic)
        top.phase("fire")
        wait_until(settled(top, run.deliveries, 800), 60, "every job done and every delivery processed", 0.1)
        top.phase("settled")
        assert_releases_migrated_once(top)
        assert_never_over_redeemed(top, traffic, run.checkout)
        assert_claims_once_each(traffic, run.recipients)
        assert_orders_counted_once(top, traffic, run.hooks, run.cancelled)
        assert_pushed_once_without_overlap(top, pushes)
        assert push_workers(top) == {p.pid for n, p in top.processes.started.items() if n.startswith("worker")}
        assert_counters_equal_rows(top)


def test_a_worker_killed_mid_run_leaves_its_jobs_to_the_other_and_everything_done_once(
    postgres_engine: Engine | None, tmp_path: Path
) -> None:
    assert postgres_engine is not None
    server = postgres_engine.url.render_as_string(hide_password=False)
    with topology(server, tmp_path, push_sizes=(800, 800), hooks=160) as top:
        pushes, run = top.pushes, top.run
        assert run is not None
        traffic = Traffic()
        sender = threading.Thread(target=fire, args=(top, run.calls, traffic))
        sender.start()
        try:
            synced = (
                select(func.count())
                .select_from(Code)
                .where(col(Code.shop_id) == top.shopify_shop, col(Code.sync_status) == "synced")
            )

            def victim() -> Job | None:
                """A push chunk running, once a quarter of the codes are synced."""
                with session_scope(top.engine) as session:
                    if session.exec(synced).one() < 400:
                        return None
                    return session.exec(select(Job).where(col(Job.kind) == "sync.push", col(Job.status) == "running")).first()

            # frozen first (SIGSTOP), so the job we pick is surely still its own when it dies
            held: list[Job] = []
            deadline = time.monotonic() + 60
            while not held:
                assert time.monotonic() < deadline, "no push under way to kill a worker in"
                job = victim()
                if job is None or not job.locked_by:
                    time.sleep(0.02)
                    continue
                dead_id = job.locked_by
                pid = top.worker_pid(dead_id)
                (name,) = [n for n, p in top.processes.started.items() if p.pid == pid]
                killed = top.processes.started[name]
                stopped_at = time.time()
                killed.send_signal(signal.SIGSTOP)
                held = running_jobs(top, dead_id)
                if not held:  # between two jobs: let it go on and pick again
                    killed.send_signal(signal.SIGCONT)
            killed.send_signal(signal.SIGKILL)
            killed.wait(10)
        finally:
            sender.join(120)
        with session_scope(top.engine) as session:
            at_kill = session.exec(synced).one()
        assert at_kill < 1600, "every code was synced before the kill: nothing tested"
        wait_until(settled(top, run.deliveries, 1600), 60, "every job done and every delivery processed", 0.1)
        top.phase("settled")
        survivor = next(p.pid for n, p in top.processes.started.items() if n.startswith("worker") and n != name)
        with session_scope(top.engine) as session:
            taken_over = [session.get_one(Job, j.id) for j in held]
        for after in taken_over:  # done once more by the other worker, after the dead one's lease
            assert after.status == "done" and top.worker_pid(after.locked_by or "") == survivor, after
            # not before its lease ran out: at least the lease less one renewal interval after it froze
            assert after.attempts >= 2 and after.finished_at is not None
            assert after.finished_at.timestamp() >= stopped_at + LEASE * 2 / 3, (after.finished_at, stopped_at)
        assert_releases_migrated_once(top)
        assert_never_over_redeemed(top, traffic, run.checkout)
        assert_claims_once_each(traffic, run.recipients)
        assert_orders_counted_once(top, traffic, run.hooks, run.cancelled)
        # the dead worker's batch in flight may have reached the fake: sent again, answered TAKEN, counted synced
        assert_pushed_once_without_overlap(top, pushes, in_flight_again=CHUNK)
        assert_counters_equal_rows(top)
