"""Webhook ingestion and code push throughput.

    .venv/bin/python bench/webhooks.py [--orders 20000] [--connections 50] [--codes 20000]
        [--only webhooks|push] [--processing web|worker] [--repeat N]

1. Signed sandbox order webhooks (10% duplicates), ingested end to end by the real app
   (verify, store, dedupe, redeem: the clock stops once no delivery is left `received` or
   `processing`, i.e. every redemption is committed, not when the last 200 came back) against a bare
   Starlette route that only verifies the HMAC, run right before and right after each app run.
   All run under uvicorn (httptools, asyncio) on SQLite, loaded by the same minimal keep-alive
   client (raw asyncio sockets, so the client is not the bottleneck the way an httpx client
   would be). The app runs in the two layouts it ships with:
   - one process: it receives, stores and processes, recording each group commit's orders
     in the transaction that stores them (`couponry serve`, the embedded default);
   - web + worker: the web process verifies and stores, a worker process processes
     (the Procfile, with COUPONRY_WEBHOOK_PROCESSING=worker).
   Each server's CPU time per request is printed too.
2. Codes pushed per second to the sandbox store (its default limits: 40 requests/s,
   250 codes per request) by the sync job, over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECRET_KEY = "bench-secret-key-0123456789-abcdefgh"
SHOP = "local.couponry.test"


def settings_for(db_url: str, port: int, sandbox: bool, processing: str = "web"):  # type: ignore[no-untyped-def]
    from plugin.settings import Secret, Settings

    return Settings(
        database_url=db_url,
        secret_key=Secret(SECRET_KEY),
        run_worker_in_process=False,
        webhook_processing=processing,
        sandbox_enabled=sandbox,
        public_url=f"http://127.0.0.1:{port}",
        log_level="warning",
    )


# --- servers (child processes) --------------------------------------------------------------


def serve_bare(port: int, secret: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from bench.loadgen import LOOP

    async def hook(request: Request) -> Response:
        body = await request.body()
        expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
        given = request.headers.get("x-sandbox-hmac-sha256", "").encode()
        return Response(status_code=200 if hmac.compare_digest(expected, given) else 401)

    app = Starlette(routes=[Route("/webhooks/sandbox", hook, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, loop=LOOP, http="httptools", log_level="warning", access_log=False)


def serve_app(port: int, db_url: str, sandbox: bool, processing: str = "web") -> None:
    import uvicorn

    from bench.loadgen import LOOP
    from plugin.runtime import settle_heap
    from plugin.store.db import make_engine
    from plugin.web.app import create_app

    settings = settings_for(db_url, port, sandbox, processing)
    app = create_app(settings, engine=make_engine(db_url))
    settle_heap()  # as `couponry serve` does
    uvicorn.run(app, host="127.0.0.1", port=port, loop=LOOP, http="httptools", log_level="warning", access_log=False)


def serve_worker(port: int, db_url: str) -> None:
    """`couponry worker`, as the Procfile's worker runs it beside the web process."""
    from plugin.jobs.worker import serve_worker
    from plugin.runtime import settle_heap
    from plugin.store.db import make_engine

    engine = make_engine(db_url)
    settle_heap()  # as `couponry worker` does
    asyncio.run(serve_worker(settings_for(db_url, port, False, "worker"), engine))


# --- client ---------------------------------------------------------------------------------


async def _connection(port: int, requests: list[bytes], statuses: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for raw in requests:
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        statuses.append(int(head[9:12]))
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
    writer.close()


async def load(port: int, requests: list[bytes], connections: int) -> tuple[float, list[int]]:
    statuses: list[int] = []
    shares = [requests[i::connections] for i in range(connections)]
    start = time.perf_counter()
    await asyncio.gather(*(_connection(port, share, statuses) for share in shares))
    return time.perf_counter() - start, statuses


def cpu_seconds(pid: int | None) -> float:
    """CPU time a process has used so far (user + system, all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def build_requests(settings, codes: list[str], duplicates: float) -> list[bytes]:  # type: ignore[no-untyped-def]
    from plugin import shared_secrets as keys
    from plugin.sandbox.deliverer import sign

    secret = keys.webhook_secret(settings)
    out: list[bytes] = []
    for i, code in enumerate(codes):
        body = json.dumps(
            {
                "id": 100000 + i,
                "status": "paid",
                "email": f"shopper{i}@example.com",
                "customer_id": f"c{i}",
                "currency": "USD",
                "subtotal": "80.00",
                "total": "72.00",
                "channel": "web",
                "discount_codes": [{"code": code, "amount": "8.00"}],
                "created_at": "2025-01-01T00:00:00+00:00",
            }
        ).encode()
        head = (
            f"POST /webhooks/sandbox HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Sandbox-Topic: orders/create\r\nX-Sandbox-Shop-Domain: {SHOP}\r\n"
            f"X-Sandbox-Delivery-Id: bench-{i}\r\nX-Sandbox-Hmac-Sha256: {sign(secret, body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    dupes = out[: int(len(out) * duplicates)]
    return out + dupes


def prepare_db(db_url: str, codes: int) -> tuple[int, int]:
    from sqlmodel import SQLModel

    from plugin.campaigns.campaigns import create_campaign
    from plugin.campaigns.issuing import generate_codes
    from plugin.shops.shops import ensure_local_shop
    from plugin.store.db import make_engine, session_scope

    engine = make_engine(db_url)
    SQLModel.metadata.create_all(engine)
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, SHOP)
        campaign = create_campaign(
            session, shop_id=shop.id or 0, name="bench", rules={"discount": {"type": "percentage", "percent": "10"}}
        )
    generate_codes(engine, shop_id=shop.id or 0, campaign_id=campaign.id or 0, count=codes)
    engine.dispose()
    return shop.id or 0, campaign.id or 0


def bench_webhooks(args: argparse.Namespace, tmp: Path) -> None:
    import shutil

    from sqlmodel import Session, col, select

    from plugin import shared_secrets as keys
    from plugin.store.db import make_engine
    from plugin.store.models import Code

    template = tmp / "template.db"
    _, campaign_id = prepare_db(f"sqlite:///{template}", args.orders)
    engine = make_engine(f"sqlite:///{template}")
    with Session(engine) as session:
        codes = list(session.exec(select(Code.code).where(col(Code.campaign_id) == campaign_id)).all())
    engine.dispose()
    settings = settings_for(f"sqlite:///{template}", 8702, sandbox=False)
    requests = build_requests(settings, codes, duplicates=0.1)
    ctx = multiprocessing.get_context("spawn")

    # This machine's speed drifts from one minute to the next, so the bare route runs right
    # before and right after each app run, and each ratio is against the mean of the two.
    secret = keys.webhook_secret(settings)
    bare = _run_bare(ctx, requests, args.connections, secret)
    ratios: dict[str, list[float]] = {}
    for n in range(args.repeat):
        for processing in args.processing:
            db = tmp / f"webhooks-{processing}-{n}.db"
            shutil.copy(template, db)  # the same fresh codes for every run
            db_url = f"sqlite:///{db}"
            servers = [ctx.Process(target=serve_app, args=(8702, db_url, False, processing), daemon=True)]
            if processing == "worker":
                servers.append(ctx.Process(target=serve_worker, args=(8702, db_url), daemon=True))
            label = {"web": "couponry, one process", "worker": "couponry, web + worker"}[processing]
            rate = _run_app(ctx, servers, requests, args.connections, db_url, label, len(codes))
            after = _run_bare(ctx, requests, args.connections, secret)
            ratio = 2 * rate / (bare + after)
            ratios.setdefault(label, []).append(ratio)
            print(f"ratio {label} / bare (mean of the runs before and after) = {ratio:.2f} (target >= 0.40)")
            bare = after
    for label, found in ratios.items():
        print(
            f"{label}: median ratio {statistics.median(found):.2f} over {len(found)} runs"
            f" ({min(found):.2f}-{max(found):.2f}; target >= 0.40)"
        )


def _run_bare(ctx, requests: list[bytes], connections: int, secret: str) -> float:  # type: ignore[no-untyped-def]
    proc = ctx.Process(target=serve_bare, args=(8701, secret), daemon=True)
    proc.start()
    try:
        wait_for(8701)
        asyncio.run(load(8701, requests[:200], 10))
        cpu = cpu_seconds(proc.pid)
        seconds, statuses = asyncio.run(load(8701, requests, connections))
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.join()
    rate = len(requests) / seconds
    bad = sum(1 for s in statuses if s != 200)
    print(f"{'bare HMAC route':32s} {len(requests):7d} requests in {seconds:6.2f}s = {rate:8.0f}/s  (non-200: {bad})")
    print(f"{'':32s} server CPU {cpu / len(requests) * 1e6:.0f} µs per request")
    return rate


def _run_app(ctx, servers: list, requests: list[bytes], connections: int, db_url: str, label: str, orders: int) -> float:  # type: ignore[no-untyped-def]
    from sqlalchemy import func
    from sqlmodel import Session, col, select

    from plugin.store.db import make_engine
    from plugin.store.models import Redemption, WebhookEvent

    engine = make_engine(db_url)
    for proc in servers:
        proc.start()
    try:
        wait_for(8702)
        asyncio.run(load(8702, requests[:200], 10))  # warm up (the app ignores these after: duplicates)
        cpu = [cpu_seconds(proc.pid) for proc in servers]
        start = time.perf_counter()
        answered, statuses = asyncio.run(load(8702, requests, connections))
        # end to end: the clock stops once every stored delivery is processed (its redemptions
        # committed), not when the last 200 came back
        while True:
            with Session(engine) as session:
                waiting = session.exec(
                    select(func.count()).select_from(WebhookEvent).where(col(WebhookEvent.status).in_(["received", "processing"]))
                ).one()
            if not waiting:
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        cpu = [cpu_seconds(proc.pid) - before for proc, before in zip(servers, cpu, strict=True)]
    finally:
        for proc in servers:
            proc.terminate()
            proc.join()
    bad = sum(1 for s in statuses if s != 200)
    rate = len(requests) / seconds
    print(
        f"{label:32s} {len(requests):7d} requests in {seconds:6.2f}s = {rate:8.0f}/s  (non-200: {bad}; "
        f"all answered after {answered:.2f}s)"
    )
    with Session(engine) as session:
        redemptions = session.exec(select(func.count()).select_from(Redemption)).one()
        events = session.exec(select(func.count()).select_from(WebhookEvent)).one()
    engine.dispose()
    print(f"{'':32s} stored deliveries {events}, redemptions {redemptions} (orders {orders})")
    per = ", ".join(f"{name} {used / len(requests) * 1e6:.0f}" for name, used in zip(("web", "worker"), cpu, strict=False))
    print(f"{'':32s} CPU µs per request: {per}")
    return rate


def bench_push(args: argparse.Namespace, tmp: Path) -> None:
    import httpx

    from plugin.jobs.worker import Worker
    from plugin.platforms import sync
    from plugin.store import outbox
    from plugin.store.db import make_engine, session_scope
    from plugin.store.jobcontext import JobContext

    db_url = f"sqlite:///{tmp / 'push.db'}"
    shop_id, campaign_id = prepare_db(db_url, args.codes)
    port = 8703
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=serve_app, args=(port, db_url, True), daemon=True)
    proc.start()
    try:
        wait_for(port)
        engine = make_engine(db_url)
        settings = settings_for(db_url, port, sandbox=True)
        with session_scope(engine) as session:
            sync.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)

        async def go() -> float:
            async with httpx.AsyncClient() as http:
                worker = Worker(JobContext(engine, settings, http), sweeps=())
                start = time.perf_counter()
                while await worker.run_once():
                    pass
                return time.perf_counter() - start

        seconds = asyncio.run(go())
        with session_scope(engine) as session:
            counts = sync.sync_counts(session, shop_id=shop_id, campaign_id=campaign_id)
            jobs = [(j.status, j.attempts) for j in outbox.list_jobs(session)]
        print(f"push: {args.codes} codes in {seconds:.2f}s = {args.codes / seconds:,.0f} codes/s  {counts} jobs {jobs}")
    finally:
        proc.terminate()
        proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--codes", type=int, default=20000)
    parser.add_argument("--only", choices=["webhooks", "push"], default=None)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each layout (webhooks)")
    parser.add_argument(
        "--processing",
        choices=["web", "worker"],
        action="append",
        help="who processes deliveries: the web process (embedded default) or a worker process beside it "
        "(the Procfile); both unless given",
    )
    args = parser.parse_args()
    args.processing = args.processing or ["web", "worker"]
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        if args.only in (None, "webhooks"):
            bench_webhooks(args, Path(tmp))
        if args.only in (None, "push"):
            bench_push(args, Path(tmp))


if __name__ == "__main__":
    main()
