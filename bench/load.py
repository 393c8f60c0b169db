"""The latency a shop actually gets: an open-loop mix at fixed offered rates.

    .venv/bin/python -m bench.load [--seconds 15] [--rate 400] [--only sqlite|pg]
        [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--redis-url redis://127.0.0.1:6379/15]

The closed-loop benchmarks (bench/validate.py: 50 connections, each sending its next request
when the last one is answered) measure saturation; their p99 is queueing in front of a server
that is kept 100 % busy, not the latency a checkout sees. Here requests are sent on a fixed
schedule whatever the server does (open loop, like wrk2): each request's latency is counted
from the moment it was *due*, so a server that falls behind is charged for the wait it causes
(no coordinated omission). The load generator is one asyncio process on raw keep-alive
sockets, opening connections as needed; it prints how late it sent its requests, so a figure
limited by the generator shows itself.

Operations, each a real request against the real app:
- validate: `POST /api/v1/validate` of a live single-use code on a basket (no side effect);
- redeem: `POST /api/v1/redemptions`, a new order on an unlimited-use code (one write each);
- claim: `POST /api/v1/campaigns/{id}/claims` for a new recipient (assigns a code);
- webhook: a signed sandbox `orders/create` delivery redeeming a fresh code.

Topologies:
1. one process on SQLite, as `couponry serve` runs it (in-process worker, webhooks processed
   by the web process). First the ceiling, measured in the same run: the saturation rate of a
   bare JSON route in the same process (wrk, 50 connections). Then validate alone at half that
   rate (target: p99 < 10 ms), then at the `--sweep` rates (where it stays under 10 ms), and the
   mix at `--rate` requests/s.
2. The Procfile on PostgreSQL + Redis: `release` once, 2 `web` + 2 `worker` processes; the mix
   at `--rate` through both web processes, with the CPU time every process used (the app's,
   PostgreSQL's, Redis's) per request; then validate's saturation through 1 and through 2 web
   processes (wrk), the scaling a 2-core machine gives.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import ROOT, free_port
from bench.validate import LUA

SECRET_KEY = "bench-load-secret-0123456789-abcdefgh"
SHOP = "local.couponry.test"
BASKET = {"currency": "GBP", "lines": [{"product_id": "p1", "quantity": 2, "unit_price": 2500}]}
MIX = {"validate": 0.7, "redeem": 0.1, "claim": 0.1, "webhook": 0.1}  # a checkout-heavy shop
KEEP_ALIVE = 4.0  # seconds an idle connection is reused (uvicorn's keep-alive timeout is 5)
CONNECTION_CAP = 256  # per server: beyond it a due request waits for a connection (and is charged for it)

BARE_SERVER = """
import sys
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from plugin.runtime import settle_heap
from plugin.settings import Settings
from plugin.store.db import make_engine
from plugin.web.app import create_app
from plugin.web.server import server_options

settings = Settings.from_env()
app = create_app(settings, engine=make_engine(settings.database_url))


async def bare(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"valid": True, "code": "BARE", "campaign_id": 1})


app.router.routes.insert(0, Route("/bare", bare, methods=["POST"]))
options = server_options(settings)
options["log_level"] = "warning"
settle_heap()  # as `couponry serve` does
uvicorn.run(app, **options)
"""


# --- the data and the requests --------------------------------------------------------------------


@dataclass
class Prepared:
    key: str
    validate_codes: list[str]
    redeem_codes: list[str]
    claim_campaign: int
    webhook_codes: list[str]


def prepare(url: str, *, claims: int, webhooks: int) -> Prepared:
    """Migrate a fresh database and give it a shop, a key and one campaign per operation."""
    from plugin.campaigns import campaigns, issuing
    from plugin.shops import apikeys
    from plugin.shops.shops import ensure_local_shop
    from plugin.store.db import make_engine, session_scope
    from plugin.store.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    rules: dict[str, Any] = {"currency": "GBP", "discount": {"type": "percentage", "percent": "10"}}
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, SHOP)
        assert shop.id is not None
        shop_id = shop.id
        _, key = apikeys.create_key(session, shop_id=shop_id, name="load", scopes=["checkout", "distribution"])
        made = {
            name: campaigns.create_campaign(session, shop_id=shop_id, name=name, rules=r, code_format={"length": 12})
            for name, r in (
                ("validate", rules),
                ("redeem", {**rules, "usage": {"uses_per_code": None}}),
                ("claim", rules),
                ("webhook", rules),
            )
        }
    counts = {"validate": 1_000, "redeem": 100, "claim": claims + 1_000, "webhook": webhooks}
    codes: dict[str, list[str]] = {}
    for name, campaign in made.items():
        assert campaign.id is not None
        issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign.id, count=counts[name])
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT code FROM code WHERE campaign_id = {int(campaign.id)} ORDER BY id").all()
        codes[name] = [r[0] for r in rows]
    engine.dispose()
    claim_id = made["claim"].id
    assert claim_id is not None
    return Prepared(key, codes["validate"][:100], codes["redeem"], claim_id, codes["webhook"])


def _http(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body


def requests_for(op: str, count: int, data: Prepared, run: str) -> list[bytes]:
    """`count` requests of one operation; every write is new (a new order, recipient or delivery)."""
    auth = {"Authorization": f"Bearer {data.key}"}
    out: list[bytes] = []
    for i in range(count):
        if op == "validate":
            code = data.validate_codes[i % len(data.validate_codes)]
            body = {"code": code, "basket": BASKET, "customer": {"id": f"shopper{i % 50}"}}
            out.append(_http("POST", "/api/v1/validate", json.dumps(body).encode(), auth))
        elif op == "redeem":
            code = data.redeem_codes[i % len(data.redeem_codes)]
            body = {"code": code, "order_id": f"load-{run}-{i}", "basket": BASKET}
            out.append(_http("POST", "/api/v1/redemptions", json.dumps(body).encode(), auth))
        elif op == "claim":
            path = f"/api/v1/campaigns/{data.claim_campaign}/claims"
            out.append(_http("POST", path, json.dumps({"email": f"load-{run}-{i}@example.com"}).encode(), auth))
        else:
            out.append(_webhook(data.webhook_codes[i], f"{run}-{i}", 7_000_000 + i))
    return out


def _webhook(code: str, delivery: str, order_id: int) -> bytes:
    from plugin import shared_secrets
    from plugin.sandbox.deliverer import sign
    from plugin.settings import Secret, Settings

    secret = shared_secrets.webhook_secret(Settings(secret_key=Secret(SECRET_KEY)))
    body = json.dumps(
        {
            "id": order_id,
            "status": "paid",
            "email": f"buyer{order_id}@example.com",
            "customer_id": f"c{order_id}",
            "currency": "GBP",
            "subtotal": "50.00",
            "total": "45.00",
            "channel": "web",
            "discount_codes": [{"code": code, "amount": "5.00"}],
            "created_at": "2026-01-01T00:00:00+00:00",
        }
    ).encode()
    headers = {
        "X-Sandbox-Topic": "orders/create",
        "X-Sandbox-Shop-Domain": SHOP,
        "X-Sandbox-Delivery-Id": f"load-{delivery}",
        "X-Sandbox-Hmac-Sha256": sign(secret, body),
    }
    return _http("POST", "/webhooks/sandbox", body, headers)


def schedule(rate: float, seconds: float, mix: dict[str, float]) -> list[tuple[float, str]]:
    """(due offset, operation) at a uniform total `rate`, the operations interleaved in their
    shares (the one furthest behind its share goes next), so every operation's own rate is fixed."""
    total = int(rate * seconds)
    sent: dict[str, int] = defaultdict(int)
    out: list[tuple[float, str]] = []
    for i in range(total):
        op = max(mix, key=lambda o: mix[o] * (i + 1) - sent[o])
        sent[op] += 1
        out.append((i / rate, op))
    return out


# --- the open-loop client ---------------------------------------------------------------------


@dataclass
class Outcome:
    op: str
    status: int  # 0: the connection failed
    latency: float  # seconds from when the request was due to its answer's last byte
    late: float  # seconds the client sent it after it was due


class Connections:
    """Idle keep-alive connections to one server; a new one whenever none is idle, up to a cap."""

    def __init__(self, port: int) -> None:
        self.port = port
        # (connection, when it went idle): one idle for longer than the server keeps it (uvicorn
        # closes after 5 s) is dropped, not reused, so a request never fails on a closed socket
        self.idle: deque[tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], float]] = deque()
        self.open = 0
        self.waiting: deque[asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = deque()

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.perf_counter()
        while self.idle:
            conn, since = self.idle.pop()
            if now - since < KEEP_ALIVE:
                return conn
            conn[1].close()
            self.open -= 1
        if self.open < CONNECTION_CAP:
            self.open += 1
            try:
                return await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.open -= 1
                raise
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        return await waiter

    def give_back(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        if self.waiting:
            self.waiting.popleft().set_result(conn)
        else:
            self.idle.append((conn, time.perf_counter()))

    def lost(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is not None:
            conn[1].close()
        self.open -= 1

    def close(self) -> None:
        for (_, writer), _since in self.idle:
            writer.close()


async def _one(pool: Connections, op: str, raw: bytes, due: float, out: list[Outcome]) -> None:
    conn = None
    try:
        conn = await pool.take()
        late = time.perf_counter() - due
        reader, writer = conn
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await reader.readexactly(length)
        out.append(Outcome(op, int(head[9:12]), time.perf_counter() - due, late))
        if b"connection: close" in head.lower():
            pool.lost(conn)
        else:
            pool.give_back(conn)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        out.append(Outcome(op, 0, time.perf_counter() - due, 0.0))
        pool.lost(conn)


async def _run(ports: Sequence[int], plan: list[tuple[float, str, bytes]]) -> list[Outcome]:
    pools = [Connections(port) for port in ports]
    out: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.1
    for i, (offset, op, raw) in enumerate(plan):
        due = start + offset
        delay = due - time.perf_counter()
        if delay > 0.0002:
            await asyncio.sleep(delay)
        task = asyncio.create_task(_one(pools[i % len(pools)], op, raw, due, out))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    for pool in pools:
        pool.close()
    return out


def open_loop(
    ports: Sequence[int], rate: float, seconds: float, mix: dict[str, float], data: Prepared, run: str
) -> list[Outcome]:
    timeline = schedule(rate, seconds, mix)
    made = {op: iter(requests_for(op, sum(1 for _, o in timeline if o == op), data, run)) for op in mix}
    plan = [(offset, op, next(made[op])) for offset, op in timeline]
    return asyncio.run(_run(ports, plan))


# --- figures --------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(
    title: str, outcomes: list[Outcome], seconds: float, mix: dict[str, float], rate: float
) -> dict[str, dict[str, float]]:
    print(f"\n{title}")
    print(f"  {'operation':<10} {'offered/s':>9} {'done/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    figures: dict[str, dict[str, float]] = {}
    for op in mix:
        mine = [o for o in outcomes if o.op == op]
        ok = [o.latency * 1000 for o in mine if 200 <= o.status < 300]
        errors = len(mine) - len(ok)
        figures[op] = {"p50": percentile(ok, 0.5), "p99": percentile(ok, 0.99), "errors": errors, "done": len(ok) / seconds}
        print(
            f"  {op:<10} {rate * mix[op]:>9,.0f} {len(ok) / seconds:>8,.0f} {figures[op]['p50']:>8.2f} "
            f"{figures[op]['p99']:>8.2f} {errors:>7}"
        )
    statuses = sorted({o.status for o in outcomes if not 200 <= o.status < 300})
    late = [o.late * 1000 for o in outcomes]
    print(f"  client: sent p50 {percentile(late, 0.5):.2f} ms / p99 {percentile(late, 0.99):.2f} ms after due"
          + (f"; failed statuses {statuses}" if statuses else ""))  # fmt: skip
    return figures


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pids_named(*names: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if (entry / "comm").read_text().strip().startswith(names):
                    found.append(int(entry.name))
    return found


def saturation(ports: Sequence[int], path: str, bodies: list[dict[str, Any]], key: str, seconds: int, work: Path) -> float:
    """Requests/s through `ports` at once with wrk (50 connections in all), closed loop."""
    encoded = ", ".join(json.dumps(json.dumps(b)) for b in bodies)
    script = work / f"sat{abs(hash((path, tuple(ports))))}.lua"
    script.write_text(LUA.replace("{BODIES}", "{" + encoded + "}").replace("PATH", path))
    with tempfile.TemporaryDirectory() as out_dir:
        procs = []
        for port in ports:
            log = Path(out_dir) / f"{port}.json"
            conns = str(50 // len(ports))
            cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(script), f"http://127.0.0.1:{port}", "--", key]
            procs.append((subprocess.Popen(cmd, stdout=log.open("w")), log))
        total = 0.0
        for proc, log in procs:
            proc.wait()
            figures = json.loads(log.read_text().strip().splitlines()[-1])
            total += figures["requests"] / figures["seconds"]
    return total


# --- processes ------------------------------------------------------------------------------------


def _env(url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUPONRY_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        PYTHONPATH=str(ROOT), DATABASE_URL=url, PORT=str(port), COUPONRY_SECRET_KEY=SECRET_KEY,
        COUPONRY_PUBLIC_URL=f"http://127.0.0.1:{port}", COUPONRY_LOG_LEVEL="warning", **extra,
    )  # fmt: skip
    return env


def _wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    import httpx

    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"the server on {port} exited with {process.returncode}")
        with suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the server on {port} did not answer")


@contextmanager
def processes(commands: list[tuple[list[str], dict[str, str], int | None]]) -> Iterator[list[int]]:
    """Start each (argv, env, port to wait for); yield their pids; stop them all."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for argv, env, _port in commands:
            started.append(subprocess.Popen(argv, cwd=ROOT, env=env))
        for (_, _, port), process in zip(commands, started, strict=True):
            if port is not None:
                _wait_healthy(port, process)
        yield [p.pid for p in started]
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_drained(url: str, timeout: float = 120) -> float:
    """Seconds until no webhook delivery is left to process (the worker's share of the mix)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < timeout:
            with engine.connect() as conn:
                left = conn.execute(text("SELECT count(*) FROM webhookevent WHERE status = 'received'")).scalar()
            if not left:
                return time.perf_counter() - start
            time.sleep(0.2)
    finally:
        engine.dispose()
    return float("nan")


# --- the two topologies ---------------------------------------------------------------------------


def bench_sqlite(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="couponry-load-"))
    url = f"sqlite:///{work / 'load.db'}"
    mix_requests = int(args.rate * args.seconds)
    data = prepare(url, claims=mix_requests, webhooks=mix_requests)
    port = free_port()
    try:
        with processes([([sys.executable, "-c", BARE_SERVER], _env(url, port), port)]) as pids:
            basket_body = [{"code": "BARE", "basket": BASKET}]
            valid = [{"code": c, "basket": BASKET, "customer": {"id": "bench"}} for c in data.validate_codes]
            saturation([port], "/bare", basket_body, data.key, 3, work)  # warm up
            saturation([port], "/api/v1/validate", valid, data.key, 3, work)
            bare = saturation([port], "/bare", basket_body, data.key, args.wrk_seconds, work)
            validate_sat = saturation([port], "/api/v1/validate", valid, data.key, args.wrk_seconds, work)
            print("\n== one process on SQLite (couponry serve: in-process worker, webhooks processed by the web process)")
            print(f"  closed loop, wrk 50 connections: bare route {bare:,.0f} req/s, validate {validate_sat:,.0f} req/s "
                  f"= {validate_sat / bare:.2f}x bare (target >= 0.6)")  # fmt: skip
            half = bare / 2
            before = cpu_seconds(pids)
            outcomes = open_loop([port], half, args.seconds, {"validate": 1.0}, data, "v")
            used = cpu_seconds(pids) - before
            figures = report(f"validate alone at half the bare route's saturation ({half:,.0f}/s offered), open loop",
                             outcomes, args.seconds, {"validate": 1.0}, half)  # fmt: skip
            p99 = figures["validate"]["p99"]
            print(f"  target: p99 < 10 ms: {'met' if p99 < 10 else 'NOT met'} ({p99:.2f} ms); "
                  f"server CPU {used / max(1, len(outcomes)) * 1e6:.0f} us/request")  # fmt: skip
            # the rates a shop can offer with validate's p99 under 10 ms, and how late the client sent
            for rate in args.sweep:
                swept = open_loop([port], rate, args.seconds / 2, {"validate": 1.0}, data, f"s{rate:.0f}")
                ok = sorted(o.latency * 1000 for o in swept if 200 <= o.status < 300)
                late = sorted(o.late * 1000 for o in swept)
                print(f"  validate alone at {rate:,.0f}/s ({rate / bare:.2f}x the bare saturation): "
                      f"p50 {percentile(ok, 0.5):.2f} ms, p99 {percentile(ok, 0.99):.2f} ms; "
                      f"client sent p99 {percentile(late, 0.99):.2f} ms late")  # fmt: skip
            before = cpu_seconds(pids)
            outcomes = open_loop([port], args.rate, args.seconds, MIX, data, "m")
            drained = wait_drained(url)
            used = cpu_seconds(pids) - before
            report(f"the mix at {args.rate:,.0f}/s offered, open loop", outcomes, args.seconds, MIX, args.rate)
            print(
                f"  server CPU {used / len(outcomes) * 1e6:.0f} us/request; "
                f"webhooks all processed {drained:.1f} s after the last answer"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fresh_pg(admin_url: str, name: str) -> str:
    import psycopg

    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def bench_pg(args: argparse.Namespace) -> None:
    import redis

    url = _fresh_pg(args.pg_url, "couponry_load")
    redis.Redis.from_url(args.redis_url).flushdb()
    couponry = [str(Path(sys.executable).with_name("couponry"))]
    release = subprocess.run([*couponry, "migrate"], cwd=ROOT, env=_env(url, 0, REDIS_URL=args.redis_url), check=False)
    assert release.returncode == 0, "release (couponry migrate) failed"
    mix_requests = int(args.rate * args.seconds)
    data = prepare(url, claims=mix_requests, webhooks=mix_requests)
    web_ports = [free_port(), free_port()]
    procfile = {"REDIS_URL": args.redis_url, "COUPONRY_WEBHOOK_PROCESSING": "worker"}
    commands = [([*couponry, "serve"], _env(url, p, COUPONRY_IN_PROCESS_WORKER="false", **procfile), p) for p in web_ports] + [
        ([*couponry, "worker"], _env(url, 0, **procfile), None) for _ in range(2)
    ]
    work = Path(tempfile.mkdtemp(prefix="couponry-load-"))
    try:
        with processes(commands) as pids:
            time.sleep(1)
            shared = pids_named("postgres", "redis-server")
            valid = [{"code": c, "basket": BASKET, "customer": {"id": "bench"}} for c in data.validate_codes]
            saturation(web_ports, "/api/v1/validate", valid, data.key, 3, work)  # warm up
            before_app, before_shared = cpu_seconds(pids), cpu_seconds(shared)
            outcomes = open_loop(web_ports, args.rate, args.seconds, MIX, data, "m")
            drained = wait_drained(url)
            app_cpu, shared_cpu = cpu_seconds(pids) - before_app, cpu_seconds(shared) - before_shared
            print("\n== Procfile on PostgreSQL + Redis: release, 2 web + 2 worker processes, webhooks processed by the workers")
            report(f"the mix at {args.rate:,.0f}/s offered through both web processes, open loop",
                   outcomes, args.seconds, MIX, args.rate)  # fmt: skip
            n = len(outcomes)
            busy = (app_cpu + shared_cpu) / args.seconds
            print(f"  CPU per request: app processes {app_cpu / n * 1e6:.0f} us + PostgreSQL and Redis "
                  f"{shared_cpu / n * 1e6:.0f} us ({busy:.2f} of 2 cores busy); "
                  f"webhooks all processed {drained:.1f} s after")  # fmt: skip
            one = saturation(web_ports[:1], "/api/v1/validate", valid, data.key, args.wrk_seconds, work)
            two = saturation(web_ports, "/api/v1/validate", valid, data.key, args.wrk_seconds, work)
            print(f"  validate saturation (wrk, 50 connections): 1 web process {one:,.0f} req/s, 2 web processes "
                  f"{two:,.0f} req/s = {two / one:.2f}x")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15, help="length of each open-loop run")
    parser.add_argument("--wrk-seconds", type=int, default=10, help="length of each saturation run")
    parser.add_argument("--rate", type=float, default=400, help="offered requests/s of the mix")
    parser.add_argument("--only", choices=("sqlite", "pg"))
    parser.add_argument("--sweep", type=float, nargs="*", default=[500, 1000, 2000, 3000, 4000], help="validate-alone rates")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    print(f"{os.cpu_count()} CPUs; open-loop client: one asyncio process, raw keep-alive sockets")
    if args.only in (None, "sqlite"):
        bench_sqlite(args)
    if args.only in (None, "pg"):
        bench_pg(args)


if __name__ == "__main__":
    main()
