"""Sandbox sync throughput, and a small sync's wall time while a big one runs.

    .venv/bin/python -m bench.sync_concurrency [--sizes 20000 1000000] [--small 50]
        [--concurrency 4] [--shop-limit 2] [--chunk 10000]

The app (sandbox store mounted, its default limits: 40 requests/s, 250 codes per request) runs
in its own process on SQLite; the worker (`plugin.jobs.worker.Worker`, as `couponry worker` runs it)
runs here. For each size, a campaign of that many codes is pushed on a fresh database and its
codes/s printed. On the last size's database, a small campaign is pushed first alone (the
baseline), then again (another campaign of the same size) once the big push is under way: its
wall time from enqueue to its last code synced, against the target (< 60 s) and the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.webhooks import SHOP, serve_app, settings_for, wait_for

PORT = 8704
RULES = {"discount": {"type": "percentage", "percent": "10"}}


def prepare(db_url: str, sizes: dict[str, int]) -> tuple[int, dict[str, int]]:
    from sqlmodel import SQLModel

    from plugin.campaigns.campaigns import create_campaign
    from plugin.campaigns.issuing import generate_codes
    from plugin.shops.shops import ensure_local_shop
    from plugin.store.db import make_engine, session_scope

    engine = make_engine(db_url)
    SQLModel.metadata.create_all(engine)
    with session_scope(engine) as session:
        shop_id = ensure_local_shop(session, SHOP).id or 0
        ids = {name: create_campaign(session, shop_id=shop_id, name=name, rules=RULES).id or 0 for name in sizes}
    for name, count in sizes.items():
        generate_codes(engine, shop_id=shop_id, campaign_id=ids[name], count=count)
    engine.dispose()
    return shop_id, ids


class Run:
    """The app in a child process, a worker here, and probes that cost the worker nothing much."""

    def __init__(self, db_url: str, shop_id: int, args: argparse.Namespace) -> None:
        from plugin.store.db import make_engine

        self.db_url, self.shop_id, self.args = db_url, shop_id, args
        self.engine = make_engine(db_url)
        base = settings_for(db_url, PORT, sandbox=True)
        self.settings = replace(
            base, worker_concurrency=args.concurrency, worker_shop_concurrency=args.shop_limit, sync_chunk=args.chunk
        )

    def enqueue(self, campaign_id: int) -> None:
        from plugin.platforms import sync
        from plugin.store.db import session_scope

        with session_scope(self.engine) as session:
            sync.enqueue_push(session, shop_id=self.shop_id, campaign_id=campaign_id)

    def unfinished(self, campaign_id: int) -> bool:
        """A push job of the campaign is queued or running (cheap: the job table is small)."""
        from sqlmodel import Session, col, select

        from plugin.store.models import Job

        key = f"sync:{self.shop_id}:{campaign_id}"
        with Session(self.engine) as session:
            return (
                session.exec(select(Job.id).where(col(Job.serial_key) == key, col(Job.status).in_(["queued", "running"]))).first()
                is not None
            )

    def done_jobs(self, campaign_id: int) -> int:
        from sqlmodel import Session, col, func, select

        from plugin.store.models import Job

        key = f"sync:{self.shop_id}:{campaign_id}"
        with Session(self.engine) as session:
            return int(session.exec(select(func.count()).where(col(Job.serial_key) == key, col(Job.status) == "done")).one())

    def counts(self, campaign_id: int) -> dict[str, int]:
        from plugin.platforms import sync
        from plugin.store.db import session_scope

        with session_scope(self.engine) as session:
            return sync.sync_counts(session, shop_id=self.shop_id, campaign_id=campaign_id)

    async def until_done(self, campaign_id: int) -> float:
        """Seconds until the campaign's push jobs are all done, from now."""
        start = time.perf_counter()
        while self.unfinished(campaign_id):
            await asyncio.sleep(0.02)
        return time.perf_counter() - start


async def with_worker(run: Run, body):  # type: ignore[no-untyped-def]
    import httpx

    from plugin.jobs.worker import Worker
    from plugin.store.jobcontext import JobContext

    async with httpx.AsyncClient() as http:
        worker = Worker(JobContext(run.engine, run.settings, http), sweeps=(), poll_interval=0.05)
        task = asyncio.create_task(worker.run())
        try:
            return await body()
        finally:
            worker.stop()
            await task


def serve(db_url: str):  # type: ignore[no-untyped-def]
    proc = multiprocessing.get_context("spawn").Process(target=serve_app, args=(PORT, db_url, True), daemon=True)
    proc.start()
    wait_for(PORT)
    return proc


def throughput(tmp: Path, n: int, args: argparse.Namespace, *, small: int | None = None) -> None:
    db_url = f"sqlite:///{tmp / f'sync-{n}.db'}"
    sizes = {"big": n} if small is None else {"big": n, "small alone": small, "small during": small}
    t0 = time.perf_counter()
    shop_id, ids = prepare(db_url, sizes)
    print(f"prepared {sum(sizes.values()):,} codes in {time.perf_counter() - t0:.1f}s")
    proc = serve(db_url)
    run = Run(db_url, shop_id, args)
    try:

        async def body() -> None:
            alone = None
            if small is not None:
                run.enqueue(ids["small alone"])
                alone = await run.until_done(ids["small alone"])
                print(f"{small}-code sync alone:            {alone:6.2f} s  {run.counts(ids['small alone'])}")
            start = time.perf_counter()
            run.enqueue(ids["big"])
            if small is not None:
                while run.done_jobs(ids["big"]) < 1:  # the big push is under way: its first chunk is in
                    await asyncio.sleep(0.05)
                run.enqueue(ids["small during"])
                during = await run.until_done(ids["small during"])
                big_jobs = run.done_jobs(ids["big"])
                print(
                    f"{small}-code sync during {n:,}:  {during:6.2f} s  (target < 60 s; {during / (alone or 1):.1f}x alone; "
                    f"big push {big_jobs} chunk jobs in)  {run.counts(ids['small during'])}"
                )
            await run.until_done(ids["big"])
            seconds = time.perf_counter() - start
            print(f"sync of {n:>9,} codes:           {seconds:7.2f} s = {n / seconds:8,.0f} codes/s  {run.counts(ids['big'])}")

        asyncio.run(with_worker(run, body))
    finally:
        proc.terminate()
        proc.join()
        run.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 1_000_000])
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4, help="COUPONRY_WORKER_CONCURRENCY")
    parser.add_argument("--shop-limit", type=int, default=2, help="COUPONRY_WORKER_SHOP_CONCURRENCY")
    parser.add_argument("--chunk", type=int, default=10_000, help="COUPONRY_SYNC_CHUNK")
    args = parser.parse_args()
    print(f"worker: {args.concurrency} jobs at once, {args.shop_limit} per shop, {args.chunk:,} codes per push job")
    with tempfile.TemporaryDirectory() as tmp:
        for i, n in enumerate(args.sizes):
            throughput(Path(tmp), n, args, small=args.small if i == len(args.sizes) - 1 else None)


if __name__ == "__main__":
    main()
