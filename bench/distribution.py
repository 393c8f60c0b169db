"""HTTP throughput of the pull endpoint (send-time merge fields) against its ceiling, in one run
and one server process.

Starts uvicorn (httptools, the asyncio loop `couponry serve` uses, one worker) on a fresh SQLite database, serving the real app
plus a bare Starlette JSON route (`GET /bare`, the ceiling), then loads it from a separate
process with `wrk` at 50 connections for a bounded time per route (10 s by default):

- `GET /bare`: a constant JSON answer;
- `GET /api/v1/campaigns/1/pull?recipient=...` repeated: recipients who already hold their code
  (an email platform renders several parts per recipient and retries; Braze caches by URL but
  per workspace and for minutes, so most calls at send time are repeats of a few recipients
  or first calls);
- the same repeat calls on a server without the per-process held-code cache (each call reads
  the database), for the figure a cold cache or a wide send gives;
- the same route with a new recipient per request: each call assigns a code (a write
  transaction), until the pool of 200,000 codes would run out.

Prints req/s, p50 and p99 for each, the pull/bare ratio and the targets
(repeat pull >= 0.5 x bare, p99 < 15 ms). Run: `.venv/bin/python -m bench.distribution [seconds]`.
Needs `wrk` (`apt-get install -y wrk`).

The push side (outbox jobs into Klaviyo's bulk import within its rate limits) has its own
bench: `bench/distribution_push.py`.
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
from plugin.distribution import claims as distribution
from plugin.shops import apikeys
from plugin.shops.shops import ensure_local_shop
from plugin.store.db import make_engine, session_scope
from plugin.store.models import utcnow

CODES = 200_000
ASSIGNED = 1_000  # recipients who already hold a code, for the repeat calls

SERVER = """
import sys
import uvicorn
from bench.loadgen import LOOP
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from plugin.settings import Secret, Settings
from plugin.web.app import create_app

url, port = sys.argv[1], int(sys.argv[2])
if sys.argv[3:] == ["nocache"]:
    import plugin.distribution.claims
    plugin.distribution.claims.HELD_CACHE_SIZE = 0  # every pull reads the database
app = create_app(Settings(database_url=url, secret_key=Secret("bench-secret-0123456789-abcdefghij"), run_worker_in_process=False))


async def bare(request: Request) -> JSONResponse:
    return JSONResponse({"code": "BARE-CODE-0000", "stored_code": "BARECODE0000", "campaign_id": 1,
                         "recipient": request.query_params.get("recipient"), "expires_at": None})

app.router.routes.insert(0, Route("/bare", bare, methods=["GET"]))
uvicorn.run(app, host="127.0.0.1", port=port, loop=LOOP, http="httptools", workers=1,
            log_level="warning", access_log=False)
"""

# wrk script: GET paths from a list, or a fresh recipient per request (NEW in the path);
# done() prints the figures as JSON.
LUA = (
    LUA_SETUP
    + r"""
function init(args)
  thread_id = tonumber(wrk.thread:get("thread_id"))
  wrk.headers["Authorization"] = "Bearer " .. args[1]
end
local paths = {PATHS}
function request()
  counter = counter + 1
  local path = paths[(counter % #paths) + 1]
  path = string.gsub(path, "NEW", "t" .. thread_id .. "-" .. counter .. "-" .. RUN)
  return wrk.format("GET", path)
end
"""
    + LUA_DONE
)


def prepare(url: str) -> tuple[str, int, list[str]]:
    """A shop, a distribution key and a campaign of 200,000 codes, 1,000 of them already
    assigned; returns (key, campaign id, the assigned recipients)."""
    engine = make_engine(url)
    SQLModel.metadata.create_all(engine)
    rules: dict[str, Any] = {"currency": "GBP", "discount": {"type": "percentage", "percent": "10"}}
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, "bench.couponry.test")
        assert shop.id is not None
        shop_id = shop.id
        _, key = apikeys.create_key(session, shop_id=shop_id, name="bench", scopes=["distribution"])
        campaign = campaigns.create_campaign(session, shop_id=shop_id, name="pull", rules=rules, code_format={"length": 12})
    assert campaign.id is not None
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign.id, count=CODES)
    people = [f"person{i}@example.com" for i in range(ASSIGNED)]
    with session_scope(engine) as session:
        for person in people:
            distribution.claim(session, shop_id=shop_id, campaign_id=campaign.id, recipient=person, now=utcnow())
    engine.dispose()
    return key, campaign.id, people


def wrk(base: str, paths: list[str], key: str, seconds: int, workdir: Path, run: str = "0") -> dict[str, Any]:
    encoded = ", ".join(json.dumps(p) for p in paths)
    script = workdir / f"load{abs(hash((tuple(paths), run)))}.lua"
    script.write_text(LUA.replace("{PATHS}", "{" + encoded + "}").replace("RUN", json.dumps(run)))
    return run_wrk(script, base, key, seconds)


def main(seconds: int = 10) -> int:
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="couponry-bench-"))
    url = f"sqlite:///{workdir / 'bench.db'}"
    key, campaign_id, people = prepare(url)
    pull = f"/api/v1/campaigns/{campaign_id}/pull?recipient="
    repeat = [pull + p.replace("@", "%40") for p in people]
    results: dict[str, dict[str, Any]] = {}
    for mode in ("cache", "nocache"):
        with server(SERVER, url, mode) as base:
            headers = {"Authorization": f"Bearer {key}"}
            first = httpx.get(base + pull + people[0], headers=headers)
            again = httpx.get(base + pull + people[0], headers=headers)
            assert first.status_code == 200 and first.content == again.content, first.text
            if mode == "cache":
                fresh = [pull + "NEW%40example.com"]
                bare = ["/bare?recipient=person1%40example.com"]
                wrk(base, bare, key, 2, workdir)  # warm up
                wrk(base, repeat, key, 2, workdir)
                results["bare"] = wrk(base, bare, key, seconds, workdir)
                results["repeat"] = wrk(base, repeat, key, seconds, workdir)
                results["first"] = wrk(base, fresh, key, seconds, workdir, run="b")
            else:
                wrk(base, repeat, key, 2, workdir)
                results["uncached"] = wrk(base, repeat, key, seconds, workdir)
    shutil.rmtree(workdir, ignore_errors=True)

    print(header())
    show("GET /bare (ceiling)", results["bare"])
    show("GET pull (repeat calls)", results["repeat"])
    show("GET pull (repeat, no cache)", results["uncached"])
    show("GET pull (first calls)", results["first"])
    ratio = results["repeat"]["rps"] / results["bare"]["rps"]
    p99 = results["repeat"]["p99_us"] / 1000
    print(f"repeat pull / bare = {ratio:.2f} (target >= 0.50: {'met' if ratio >= 0.5 else 'NOT met'}); "
          f"p99 {p99:.2f} ms (target < 15 ms: {'met' if p99 < 15 else 'NOT met'})")  # fmt: skip
    uncached = results["uncached"]["rps"] / results["bare"]["rps"]
    print(f"repeat pull without the held-code cache / bare = {uncached:.2f}; p99 {results['uncached']['p99_us'] / 1000:.2f} ms")
    first_ratio = results["first"]["rps"] / results["bare"]["rps"]
    first_p99 = results["first"]["p99_us"] / 1000
    print(f"first-call pull / bare = {first_ratio:.2f}; p99 {first_p99:.2f} ms (each one assigns a code)")
    bad = sum(r["non2xx"] + r["errors"] for r in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
