"""HTTP throughput of the checkout API against its ceiling, in one run and one server process.

Starts uvicorn (httptools, the asyncio loop, one worker) on a fresh SQLite database, serving the real app
plus a bare Starlette JSON route (`POST /bare`, the ceiling), then loads it from a separate
process with `wrk` at 50 connections for a bounded time per route (10 s by default):

- `POST /bare`: a constant JSON answer;
- `POST /floor`: the request parsed with the validate model, one indexed SELECT of the code on
  a raw sqlite3 connection, a JSON answer: what any validation costs at least;
- `POST /api/v1/validate`: a full validation of a live code (API key, lookup, rules) — valid,
  so the brute-force limiter never steps in;
- `POST /api/v1/redemptions`: a redemption per request (unique order ids on codes without a
  per-code limit), i.e. an atomic write transaction each.

The three routes run in turn for several rounds (3 by default) and each figure is the median
round's, the ratio the median of the rounds' ratios: on a shared machine the speed drifts by
10-20 % over minutes, and one run of each route would carry that drift into the ratio.

The server runs as `couponry serve` runs it: the heap settled (`plugin.runtime.settle_heap`) and
uvicorn with serve's options (plugin.web.server), at log level warning (no access log line).

Prints req/s, p50 and p99 for each, and the validate/bare ratio against its target (>= 0.6);
beside them, the server process's CPU time per request (from /proc), the same ratio as the
machine's scheduler cannot blur it: the server shares two cores with wrk.
Run: `.venv/bin/python -m bench.validate [seconds] [--rounds N]`.
Needs `wrk` (`apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import SQLModel

import plugin.store.models  # noqa: F401  (registers tables)
from bench.loadgen import LUA_DONE, LUA_SETUP, Server, header, run_wrk, server, show
from plugin.campaigns import campaigns, issuing
from plugin.shops import apikeys
from plugin.shops.shops import ensure_local_shop
from plugin.store.db import make_engine, session_scope

CODES = 1_000

SERVER = """
import sqlite3
import sys
import uvicorn
from dataclasses import replace
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from plugin.runtime import settle_heap
from plugin.settings import Secret, Settings
from plugin.web.app import create_app
from plugin.web.schemas import ValidateRequest
from plugin.web.server import server_options

url, port = sys.argv[1], int(sys.argv[2])
settings = Settings(database_url=url, secret_key=Secret("bench-secret-0123456789-abcdefghij"), run_worker_in_process=False)
settings = replace(settings, host="127.0.0.1", port=port, log_level="warning")  # warning: no access log line per request
app = create_app(settings)


async def bare(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"valid": True, "code": "BARE", "campaign_id": 1})


# The floor: what any validation must do at least, with nothing of ours in between (no key,
# limiter, normalisation or rules): parse the request with the same model, one indexed SELECT
# on a connection of its own, encode an answer.
floor_db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
FLOOR_SQL = ("SELECT c.id, c.status, c.uses, k.status, CAST(k.rules AS TEXT) FROM code c"
             " JOIN campaign k ON k.id = c.campaign_id WHERE c.shop_id = 1 AND c.code = ?")


async def floor(request: Request) -> Response:
    body = ValidateRequest.model_validate_json(await request.body())
    found = floor_db.execute(FLOOR_SQL, (body.code,)).fetchall()
    return Response(to_json({"valid": bool(found), "code": body.code, "campaign_id": 1}), media_type="application/json")


app.router.routes.insert(0, Route("/bare", bare, methods=["POST"]))
app.router.routes.insert(0, Route("/floor", floor, methods=["POST"]))
# as `couponry serve` runs it: the heap settled (plugin.runtime), uvicorn with serve's options
settle_heap()
uvicorn.run(app, **server_options(settings))
"""

# wrk script: bodies come from a list (validate) or carry a unique order id (redemptions);
# done() prints the figures as JSON.
LUA = (
    LUA_SETUP
    + r"""
function init(args)
  thread_id = tonumber(wrk.thread:get("thread_id"))
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[1]
end
local bodies = {BODIES}
function request()
  counter = counter + 1
  local body = bodies[(counter % #bodies) + 1]
  body = string.gsub(body, "ORDER", thread_id .. "-" .. counter)
  return wrk.format("POST", "PATH", nil, body)
end
"""
    + LUA_DONE
)


def prepare(url: str) -> tuple[str, list[str], list[str]]:
    """A shop, a checkout key, a campaign of single-use codes to validate and one of unlimited
    codes to redeem; returns (key, validate codes, redeem codes)."""
    engine = make_engine(url)
    SQLModel.metadata.create_all(engine)
    rules: dict[str, Any] = {"currency": "GBP", "discount": {"type": "percentage", "percent": "10"}}
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, "bench.couponry.test")
        assert shop.id is not None
        shop_id = shop.id
        _, key = apikeys.create_key(session, shop_id=shop_id, name="bench", scopes=["checkout"])
        single = campaigns.create_campaign(session, shop_id=shop_id, name="validate", rules=rules, code_format={"length": 12})
        unlimited = campaigns.create_campaign(
            session, shop_id=shop_id, name="redeem", rules={**rules, "usage": {"uses_per_code": None}}, code_format={"length": 12}
        )
    found: list[list[str]] = []
    for campaign in (single, unlimited):
        assert campaign.id is not None
        issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign.id, count=CODES)
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT code FROM code WHERE campaign_id = ? LIMIT 100", (campaign.id,)).all()
        found.append([r[0] for r in rows])
    engine.dispose()
    return key, found[0], found[1]


def wrk(base: Server, path: str, bodies: list[dict[str, Any]], key: str, seconds: int, workdir: Path) -> dict[str, Any]:
    """One wrk run's figures, with the server's CPU time per request (`cpu_us`)."""
    encoded = ", ".join(json.dumps(json.dumps(b)) for b in bodies)
    script = workdir / f"load{abs(hash(path))}.lua"
    script.write_text(LUA.replace("{BODIES}", "{" + encoded + "}").replace("PATH", path))
    cpu = base.cpu_seconds()
    figures = run_wrk(script, base, key, seconds)
    figures["cpu_us"] = (base.cpu_seconds() - cpu) / max(figures["requests"], 1) * 1e6
    return figures


def main(seconds: int, rounds: int) -> int:
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="couponry-bench-"))
    url = f"sqlite:///{workdir / 'bench.db'}"
    key, validate_codes, redeem_codes = prepare(url)
    basket = {"currency": "GBP", "lines": [{"product_id": "p1", "quantity": 2, "unit_price": 2500}]}
    validate = [{"code": c, "basket": basket, "customer": {"id": "bench"}} for c in validate_codes]
    redeem = [{"code": c, "order_id": "order-ORDER", "basket": basket} for c in redeem_codes]
    routes = {"bare": ("/bare", [{"code": "BARE", "basket": basket}]), "floor": ("/floor", validate),
              "validate": ("/api/v1/validate", validate)}  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in routes}
    try:
        with server(SERVER, url) as base:
            check = httpx.post(base + "/api/v1/validate", json=validate[0], headers={"Authorization": f"Bearer {key}"})
            assert check.status_code == 200 and check.json()["valid"], check.text
            for path, bodies in routes.values():  # warm up
                wrk(base, path, bodies, key, 2, workdir)
            # Rounds of the three routes in turn: the machine's speed drifts (other tenants, the
            # CPU's clock) over a run, and a ratio of two figures taken minutes apart carries it.
            for _ in range(rounds):
                for name, (path, bodies) in routes.items():
                    runs[name].append(wrk(base, path, bodies, key, seconds, workdir))
            redemptions = wrk(base, "/api/v1/redemptions", redeem, key, seconds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(header() + f"; {rounds} rounds of {seconds} s per route, the median round shown")
    labels = {"bare": "POST /bare (ceiling)", "floor": "POST /floor (parse+SELECT)", "validate": "POST /api/v1/validate"}
    for name, label in labels.items():
        show(label, _median_run(runs[name]))
    show("POST /api/v1/redemptions", redemptions)
    cpu = {name: statistics.median(r["cpu_us"] for r in rs) for name, rs in runs.items()}
    print("server CPU per request (median): " + ", ".join(f"{name} {us:.0f} µs" for name, us in cpu.items())
          + f"; bare / validate = {cpu['bare'] / cpu['validate']:.2f}")  # fmt: skip
    ratios = sorted(v["rps"] / b["rps"] for v, b in zip(runs["validate"], runs["bare"], strict=True))
    floors = sorted(f["rps"] / b["rps"] for f, b in zip(runs["floor"], runs["bare"], strict=True))
    ratio = statistics.median(ratios)
    print(f"validate / bare = {ratio:.2f}, per round {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(target >= 0.60: {'met' if ratio >= 0.6 else 'NOT met'})")  # fmt: skip
    print(f"floor / bare = {statistics.median(floors):.2f} (every validation does this much and more)")
    print("p99 here is queueing at saturation (50 requests always in flight); the latency a checkout")
    print("sees at a given offered rate is bench/load.py's (target p99 < 10 ms at half the bare rate)")
    print(f"redemptions/s = {redemptions['rps']:,.0f}")
    bad = sum(r["non2xx"] + r["errors"] for rs in runs.values() for r in rs) + redemptions["non2xx"] + redemptions["errors"]
    return 1 if bad else 0


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seconds", nargs="?", type=int, default=10, help="per route and round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of bare, floor and validate in turn (default 3)")
    options = parser.parse_args()
    sys.exit(main(options.seconds, options.rounds))
