"""The worker loop: dispatch by kind, retries honouring Retry-After, dead letters, `jobs retry`
by hand, lease renewal, and a graceful SIGTERM that lets the running job finish."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, update
from sqlmodel import col, select

from connectors.errors import RateLimited, Rejected
from plugin.cli import main
from plugin.errors import InvalidInput
from plugin.jobs.worker import Worker
from plugin.runtime import YOUNG_THRESHOLD
from plugin.settings import Settings
from plugin.shops.shops import ensure_local_shop
from plugin.store import migrate, outbox
from plugin.store.db import make_engine, session_scope
from plugin.store.jobcontext import Handler, JobContext
from plugin.store.models import AuditEvent, Job, utcnow
from plugin.store.outbox import ClaimedJob

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def enqueue(engine: Engine, shop_id: int | None, kind: str, payload: dict[str, object] | None = None, **kw: object) -> int:
    with session_scope(engine) as session:
        job_id = outbox.enqueue(session, kind, payload or {}, shop_id, **kw)  # type: ignore[arg-type]
    assert job_id is not None
    return job_id


def job(engine: Engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        return session.get_one(Job, job_id)


def make_due(engine: Engine) -> None:
    """Retries come due now instead of after their backoff (a zero wait)."""
    with session_scope(engine) as session:
        session.execute(update(Job).where(col(Job.status) == "queued").values(run_after=utcnow() - timedelta(seconds=1)))


def worker_for(engine: Engine, settings: Settings, http: httpx.AsyncClient, handlers: dict[str, Handler], **kw: object) -> Worker:
    return Worker(JobContext(engine, settings, http), handlers=handlers, sweeps=(), **kw)  # type: ignore[arg-type]


async def test_each_job_goes_to_its_kinds_handler_and_is_done(engine: Engine, shop_id: int, settings: Settings) -> None:
    seen: list[tuple[str, int, dict[str, object]]] = []

    def recorder(name: str) -> Handler:
        async def handle(ctx: JobContext, claimed: ClaimedJob) -> None:
            assert ctx.engine is engine
            seen.append((name, claimed.id, claimed.payload))

        return handle

    a = enqueue(engine, shop_id, "kind.a", {"n": 1})
    b = enqueue(engine, shop_id, "kind.b", {"n": 2})
    async with httpx.AsyncClient() as http:
        worker = worker_for(engine, settings, http, {"kind.a": recorder("a"), "kind.b": recorder("b")})
        assert await worker.run_once() and await worker.run_once()
        assert not await worker.run_once()  # nothing left
    assert seen == [("a", a, {"n": 1}), ("b", b, {"n": 2})]
    assert job(engine, a).status == job(engine, b).status == "done"


async def test_a_kind_without_a_handler_is_dead_at_once(engine: Engine, shop_id: int, settings: Settings) -> None:
    job_id = enqueue(engine, shop_id, "nobody.handles")
    async with httpx.AsyncClient() as http:
        assert await worker_for(engine, settings, http, {}).run_once()
    stored = job(engine, job_id)
    assert stored.status == "dead" and "no handler" in (stored.last_error or "")


async def test_a_rate_limited_job_waits_at_least_what_the_platform_asked(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    async def limited(ctx: JobContext, claimed: ClaimedJob) -> None:
        raise RateLimited("429 slow down", retry_after=90.0, status=429)

    job_id = enqueue(engine, shop_id, "push")
    async with httpx.AsyncClient() as http:
        before = utcnow()
        assert await worker_for(engine, settings, http, {"push": limited}).run_once()
    stored = job(engine, job_id)
    assert stored.status == "queued" and stored.attempts == 1 and "429" in (stored.last_error or "")
    # the backoff of a first retry is at most 2 s; the platform's 90 s win
    assert timedelta(seconds=90) <= stored.run_after - before <= timedelta(seconds=92)
    async with httpx.AsyncClient() as http:
        assert not await worker_for(engine, settings, http, {"push": limited}).run_once()  # not due yet


async def test_a_failing_job_is_retried_then_dead_after_max_attempts(engine: Engine, shop_id: int, settings: Settings) -> None:
    calls: list[int] = []

    async def flaky(ctx: JobContext, claimed: ClaimedJob) -> None:
        calls.append(claimed.attempts)
        raise RuntimeError(f"boom {claimed.attempts}")

    job_id = enqueue(engine, shop_id, "flaky", max_attempts=3)
    async with httpx.AsyncClient() as http:
        worker = worker_for(engine, settings, http, {"flaky": flaky})
        for _ in range(5):
            make_due(engine)
            await worker.run_once()
    assert calls == [1, 2, 3]  # exactly max_attempts calls, then no more
    stored = job(engine, job_id)
    assert (stored.status, stored.last_error) == ("dead", "RuntimeError: boom 3")


@pytest.mark.parametrize("error", [InvalidInput("the campaign is gone"), Rejected("credentials revoked")])
async def test_an_error_retrying_cannot_fix_is_dead_at_once(
    engine: Engine, shop_id: int, settings: Settings, error: Exception
) -> None:
    async def hopeless(ctx: JobContext, claimed: ClaimedJob) -> None:
        raise error

    job_id = enqueue(engine, shop_id, "k")
    async with httpx.AsyncClient() as http:
        await worker_for(engine, settings, http, {"k": hopeless}).run_once()
    assert job(engine, job_id).status == "dead"


async def test_the_lease_is_renewed_while_a_long_job_runs(engine: Engine, shop_id: int, settings: Settings) -> None:
    lease = timedelta(seconds=0.3)
    steals: list[list[ClaimedJob]] = []

    async def long(ctx: JobContext, claimed: ClaimedJob) -> None:
        for _ in range(4):  # 1.2 s: four leases long
            await asyncio.sleep(0.3)
            steals.append(outbox.claim(engine, "thief", lease))

    job_id = enqueue(engine, shop_id, "long")
    async with httpx.AsyncClient() as http:
        assert await worker_for(engine, settings, http, {"long": long}, lease=lease).run_once()
    assert steals == [[], [], [], []]  # never free for another worker while it ran
    stored = job(engine, job_id)
    assert (stored.status, stored.attempts) == ("done", 1)


async def test_a_worker_that_lost_its_lease_gives_the_job_up(engine: Engine, shop_id: int, settings: Settings) -> None:
    lease = timedelta(seconds=0.3)
    finished: list[bool] = []

    async def long(ctx: JobContext, claimed: ClaimedJob) -> None:
        with session_scope(engine) as session:  # someone else holds it now (our lease ran out meanwhile)
            session.execute(update(Job).where(col(Job.id) == claimed.id).values(locked_by="other-worker"))
        await asyncio.sleep(2)
        finished.append(True)

    job_id = enqueue(engine, shop_id, "long")
    async with httpx.AsyncClient() as http:
        started = time.monotonic()
        await worker_for(engine, settings, http, {"long": long}, lease=lease).run_once()
    assert finished == [] and time.monotonic() - started < 1.5  # cancelled at the first renewal
    stored = job(engine, job_id)
    assert (stored.status, stored.locked_by) == ("running", "other-worker")  # left to its new owner


# --- `couponry jobs retry` ---------------------------------------------------------------------


@pytest.fixture
def cli_engine(tmp_path: Path, postgres_engine: Engine | None, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The database the CLI opens: on SQLite a file it migrates itself, as `couponry` does."""
    if postgres_engine is not None:
        yield request.getfixturevalue("engine")
        return
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def test_jobs_retry_by_hand_queues_a_dead_job_again(cli_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", cli_engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("COUPONRY_SECRET_KEY", "test-secret-0123456789-abcdefghijklm")
    with session_scope(cli_engine) as session:
        shop = ensure_local_shop(session, "local.couponry.test")  # the CLI's default shop
        assert shop.id is not None
        shop_id = shop.id
    job_id = enqueue(cli_engine, shop_id, "k", max_attempts=1)
    (claimed,) = outbox.claim(cli_engine, "w", timedelta(seconds=30))
    assert outbox.fail(cli_engine, claimed, "w", "gave up") == "dead"
    cli = CliRunner()

    listed = cli.invoke(main, ["jobs", "list", "--status", "dead"], catch_exceptions=False)
    assert listed.exit_code == 0 and f"{job_id}\tk\tdead" in listed.stdout
    done = cli.invoke(main, ["jobs", "retry", str(job_id)], catch_exceptions=False)
    assert done.exit_code == 0 and f"job {job_id} queued again" in done.stdout
    stored = job(cli_engine, job_id)
    assert (stored.status, stored.attempts) == ("queued", 0)
    with session_scope(cli_engine) as session:
        audit = session.exec(select(AuditEvent).where(col(AuditEvent.subject) == f"job:{job_id}")).one()
        assert (audit.action, audit.actor) == ("job.retry", "cli")
    again = cli.invoke(main, ["jobs", "retry", str(job_id)])
    assert again.exit_code == 1 and "not dead" in again.output


# --- SIGTERM ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_lets_the_running_job_finish_then_the_worker_exits(
    engine: Engine, shop_id: int, database_url: str, tmp_path: Path
) -> None:
    running = enqueue(engine, shop_id, "test.slow", {"seconds": 1.5})
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_proc", "worker", "--db", database_url, "--slow-job"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while f"started {running}" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert f"started {running}" in log.read_text(), log.read_text()
        proc.send_signal(signal.SIGTERM)
        # due while the stopping worker still runs `running` (1.5 s, longer than its poll
        # interval) with free slots: a worker that kept claiming would start it
        waiting = enqueue(engine, shop_id, "test.slow", {"seconds": 0.1})
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert f"finished {running}" in text
    assert job(engine, running).status == "done"
    # it stopped claiming: the job that came due meanwhile waits for the next worker
    assert f"started {waiting}" not in text and job(engine, waiting).status == "queued"


def test_the_worker_command_settles_its_heap_before_it_runs(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, gc_state: None
) -> None:
    import plugin.jobs.worker

    seen: list[tuple[int, int]] = []

    async def serve(settings: Settings, engine: Engine, *, poll_interval: float = 1.0) -> None:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))

    monkeypatch.setattr(plugin.jobs.worker, "serve_worker", serve)
    plugin.jobs.worker.run_worker(settings, engine)
    [(threshold, frozen)] = seen
    assert threshold == YOUNG_THRESHOLD and frozen > 0


# --- jobs at once: the concurrency bound, serial keys, per-shop limits, graceful stop ----------


def other_shop(engine: Engine, domain: str = "other.couponry.test") -> int:
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, domain)
        assert shop.id is not None
        return shop.id


async def settled(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Let the worker's tasks run until `condition` holds (the limit only guards against a hang)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Gate:
    """A handler that records which jobs run at once and holds each until the gate opens."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.running: set[int] = set()
        self.started: list[int] = []
        self.most = 0

    async def handle(self, ctx: JobContext, claimed: ClaimedJob) -> None:
        self.started.append(claimed.id)
        self.running.add(claimed.id)
        self.most = max(self.most, len(self.running))
        try:
            await self.open.wait()
        finally:
            self.running.discard(claimed.id)


async def test_a_worker_runs_up_to_its_concurrency_at_once(engine: Engine, shop_id: int, settings: Settings) -> None:
    gate = Gate()
    ids = [enqueue(engine, shop_id, "gated", {"n": n}) for n in range(7)]  # no campaign: no serial key
    async with httpx.AsyncClient() as http:
        worker = worker_for(engine, settings, http, {"gated": gate.handle}, concurrency=3, shop_limit=10, poll_interval=0.01)
        task = asyncio.create_task(worker.run())
        await settled(lambda: len(gate.started) == 3, "three jobs to start")
        for _ in range(20):  # the loop goes round (polls, wakes) without room for a fourth
            worker.wake()
            await asyncio.sleep(0.01)
        assert (len(gate.started), worker.running) == (3, 3)
        gate.open.set()
        await settled(lambda: all(job(engine, i).status == "done" for i in ids), "every job to finish")
        worker.stop()
        await task
    assert gate.most == 3 and sorted(gate.started) == ids


async def test_stop_waits_for_every_running_job_and_claims_no_more(engine: Engine, shop_id: int, settings: Settings) -> None:
    gate = Gate()
    first, second = (enqueue(engine, shop_id, "gated", {"n": n}) for n in range(2))
    async with httpx.AsyncClient() as http:
        worker = worker_for(engine, settings, http, {"gated": gate.handle}, concurrency=2, shop_limit=10, poll_interval=0.01)
        task = asyncio.create_task(worker.run())
        await settled(lambda: len(gate.started) == 2, "both jobs to start")
        late = enqueue(engine, shop_id, "gated")
        worker.stop()
        for _ in range(10):
            await asyncio.sleep(0.01)
        assert not task.done()  # it waits for its running jobs
        gate.open.set()
        await asyncio.wait_for(task, 10)
    assert job(engine, first).status == job(engine, second).status == "done"
    assert job(engine, late).status == "queued" and late not in gate.started


def test_a_campaigns_jobs_of_one_domain_share_a_serial_key() -> None:
    assert outbox.serial_key_for("sync.push", {"campaign_id": 12}, 3) == "sync:3:12"
    assert outbox.serial_key_for("sync.deactivate", {"campaign_id": 12}, 3) == "sync:3:12"
    assert outbox.serial_key_for("sync.push", {"campaign_id": 13}, 3) != "sync:3:12"
    assert outbox.serial_key_for("distribution.push", {"campaign_id": 12, "provider": "klaviyo"}, 3) == "distribution:3:12"
    assert outbox.serial_key_for("reconcile", {}, 3) is None
    assert outbox.serial_key_for("sync.push", {"campaign_id": 12}, None) is None


def test_a_claim_never_hands_out_a_key_that_runs_anywhere(engine: Engine, shop_id: int) -> None:
    lease = timedelta(seconds=30)
    a1 = enqueue(engine, shop_id, "sync.push", {"campaign_id": 1})
    a2 = enqueue(engine, shop_id, "sync.deactivate", {"campaign_id": 1})
    b1 = enqueue(engine, shop_id, "sync.push", {"campaign_id": 2})
    # one claim: one job per key, the oldest first
    first = outbox.claim(engine, "w1", lease, limit=10)
    assert [j.id for j in first] == [a1, b1]
    # another worker process: campaign 1 runs in w1, so its second job waits
    assert outbox.claim(engine, "w2", lease, limit=10) == []
    assert outbox.complete(engine, first[0], "w1")
    assert [j.id for j in outbox.claim(engine, "w2", lease, limit=10)] == [a2]


def test_a_key_whose_lease_ran_out_is_free_and_its_job_is_claimed_again(engine: Engine, shop_id: int) -> None:
    lease = timedelta(seconds=30)
    first = enqueue(engine, shop_id, "sync.push", {"campaign_id": 1})
    second = enqueue(engine, shop_id, "sync.push", {"campaign_id": 1}, run_after=utcnow() + timedelta(seconds=1))
    (mine,) = outbox.claim(engine, "killed-worker", lease)
    assert mine.id == first
    later = utcnow() + lease + timedelta(seconds=5)
    # the killed worker's job comes back first (oldest), and the key still runs one job at a time
    assert [j.id for j in outbox.claim(engine, "w2", lease, limit=10, now=later)] == [first]
    assert outbox.claim(engine, "w3", lease, limit=10, now=later) == []
    assert job(engine, first).locked_by == "w2" and job(engine, second).status == "queued"


def test_a_shop_never_runs_more_than_its_limit_across_workers(engine: Engine, shop_id: int) -> None:
    lease = timedelta(seconds=30)
    other = other_shop(engine)
    mine = [enqueue(engine, shop_id, "sync.push", {"campaign_id": n}) for n in range(1, 5)]
    theirs = enqueue(engine, other, "sync.push", {"campaign_id": 9})
    first = outbox.claim(engine, "w1", lease, limit=10, shop_limit=2)
    # two of this shop (the oldest), and the other shop is not held up behind them
    assert [j.id for j in first] == [*mine[:2], theirs]
    assert outbox.claim(engine, "w2", lease, limit=10, shop_limit=2) == []
    assert outbox.complete(engine, first[0], "w1")
    assert [j.id for j in outbox.claim(engine, "w2", lease, limit=10, shop_limit=2)] == [mine[2]]
    assert outbox.claim(engine, "w3", lease, limit=10, shop_limit=2) == []


def test_workers_claiming_at_once_never_run_one_key_twice_nor_a_shop_over_its_limit(engine: Engine, shop_id: int) -> None:
    """Four workers (threads, a connection each) claim and complete 120 jobs of 6 keys over two
    shops: at no moment do two of them hold one key, nor three hold one shop's jobs."""
    lease = timedelta(seconds=60)
    other = other_shop(engine)
    with session_scope(engine) as session:
        for i in range(120):
            shop = shop_id if i % 2 else other
            outbox.enqueue(session, "sync.push", {"campaign_id": i % 3, "i": i}, shop)
    lock = threading.Lock()
    keys: set[str] = set()
    per_shop: dict[int, int] = {}
    broken: list[str] = []
    done: list[int] = []
    start = threading.Barrier(4)

    def work(name: str) -> None:
        start.wait()
        idle = 0
        while idle < 50:
            batch = outbox.claim(engine, name, lease, limit=2, shop_limit=2)
            if not batch:
                idle += 1
                time.sleep(0.002)
                continue
            idle = 0
            with lock:
                for j in batch:
                    key = f"{j.shop_id}:{j.payload['campaign_id']}"
                    if key in keys:
                        broken.append(f"key {key} twice")
                    keys.add(key)
                    per_shop[j.shop_id or 0] = per_shop.get(j.shop_id or 0, 0) + 1
                    if per_shop[j.shop_id or 0] > 2:
                        broken.append(f"shop {j.shop_id} over its limit")
            time.sleep(0.001)
            with lock:  # let go of them before the database does: a stale view is only stricter
                for j in batch:
                    keys.discard(f"{j.shop_id}:{j.payload['campaign_id']}")
                    per_shop[j.shop_id or 0] -= 1
            for j in batch:
                assert outbox.complete(engine, j, name)
                done.append(j.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert broken == []
    assert len(done) == len(set(done)) == 120
