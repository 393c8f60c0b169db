"""HTTP throughput of the checkout API against its ceiling, in one run and one server process.

Starts uvicorn (httptools, the asyncio loop `couponry serve` uses, one worker) on a fresh SQLite database, serving the real app
plus a bare Starlette JSON route (`POST /bare`, the ceiling), then loads it from a separate
process with `wrk` at 50 connections for a bounded time per route (10 s by default):

- `POST /bare`: a constant JSON answer;
- `POST /floor`: the request parsed with the validate model, one indexed SELECT of the code on
  a raw sqlite3 connection, a JSON answer: what any validation costs at least;
- `POST /api/v1/validate`: a full validation of a live code (API key, lookup, rules) — valid,
  so the brute-force limiter never steps in;
- `POST /api/v1/redemptions`: a redemption per request (unique order ids on codes without a
  per-code limit), i.e. an atomic write transaction each.

Prints req/s, p50 and p99 for each, the validate/bare ratio and the targets
(validate >= 0.6 x bare, p99 < 10 ms). Run: `.venv/bin/python -m bench.validate [seconds]`.
Needs `wrk` (`apt-get install -y wrk`).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import SQLModel

import plugin.store.models  # noqa: F401  (registers tables)
from bench.loadgen import LUA_DONE, LUA_SETUP, header, run_wrk, server, show
from plugin.campaigns import campaigns, issuing
from plugin.shops import apikeys
from plugin.shops.shops import ensure_local_shop
from plugin.store.db import make_engine, session_scope

CODES = 1_000

SERVER = """
import sqlite3
import sys
import uvicorn
from bench.loadgen import LOOP
from pydantic_core import to_json
from starlette.responses import Response
from plugin.web.schemas import ValidateRequest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from plugin.settings import Secret, Settings
from plugin.web.app import create_app

url, port = sys.argv[1], int(sys.argv[2])
app = create_app(Settings(database_url=url, secret_key=Secret("bench-secret-0123456789-abcdefghij"), run_worker_in_process=False))


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
uvicorn.run(app, host="127.0.0.1", port=port, loop=LOOP, http="httptools", workers=1,
            log_level="warning", access_log=False)
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


def wrk(base: str, path: str, bodies: list[dict[str, Any]], key: str, seconds: int, workdir: Path) -> dict[str, Any]:
    encoded = ", ".join(json.dumps(json.dumps(b)) for b in bodies)
    script = workdir / f"load{abs(hash(path))}.lua"
    script.write_text(LUA.replace("{BODIES}", "{" + encoded + "}").replace("PATH", path))
    return run_wrk(script, base, key, seconds)


def main(seconds: int = 10) -> int:
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="couponry-bench-"))
    url = f"sqlite:///{workdir / 'bench.db'}"
    key, validate_codes, redeem_codes = prepare(url)
    try:
        with server(SERVER, url) as base:
            basket = {"currency": "GBP", "lines": [{"product_id": "p1", "quantity": 2, "unit_price": 2500}]}
            validate = [{"code": c, "basket": basket, "customer": {"id": "bench"}} for c in validate_codes]
            redeem = [{"code": c, "order_id": "order-ORDER", "basket": basket} for c in redeem_codes]
            bare = [{"code": "BARE", "basket": basket}]
            check = httpx.post(base + "/api/v1/validate", json=validate[0], headers={"Authorization": f"Bearer {key}"})
            assert check.status_code == 200 and check.json()["valid"], check.text

            for path, bodies in (("/bare", bare), ("/floor", validate), ("/api/v1/validate", validate)):  # warm up
                wrk(base, path, bodies, key, 2, workdir)
            results = {
                "bare": wrk(base, "/bare", bare, key, seconds, workdir),
                "floor": wrk(base, "/floor", validate, key, seconds, workdir),
                "validate": wrk(base, "/api/v1/validate", validate, key, seconds, workdir),
                "redemptions": wrk(base, "/api/v1/redemptions", redeem, key, seconds, workdir),
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(header())
    show("POST /bare (ceiling)", results["bare"])
    show("POST /floor (parse+SELECT)", results["floor"])
    show("POST /api/v1/validate", results["validate"])
    show("POST /api/v1/redemptions", results["redemptions"])
    ratio = results["validate"]["rps"] / results["bare"]["rps"]
    p99 = results["validate"]["p99_us"] / 1000
    print(f"validate / bare = {ratio:.2f} (target >= 0.60: {'met' if ratio >= 0.6 else 'NOT met'}); "
          f"validate p99 {p99:.2f} ms (target < 10 ms: {'met' if p99 < 10 else 'NOT met'})")  # fmt: skip
    print(f"floor / bare = {results['floor']['rps'] / results['bare']['rps']:.2f} (every validation does this much and more)")
    print(f"redemptions/s = {results['redemptions']['rps']:,.0f}")
    bad = sum(r["non2xx"] + r["errors"] for r in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
