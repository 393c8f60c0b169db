"""What each step of a validation costs a server under load: bench/validate.py's ratio, taken apart.

    .venv/bin/python -m bench.validate_ablation [--seconds 4] [--rounds 3] [--only rules,sql]
    .venv/bin/python -m bench.validate_ablation --in-process [--requests 5000] [--rounds 5]

bench/validate_steps.py times each step in process, hot in the CPU's caches; this runs the real
server (bench/validate.py's, as `couponry serve` runs it) under wrk and, for each step in turn,
replaces that step by its own earlier answer for the same code (memoised: the step runs once per
code, then costs a dictionary lookup). What the validation's server CPU per request loses is what
the step costs in a server: with the CPU's caches shared with the event loop, the HTTP parser and
everything else, a step costs more there than in a loop of its own.

The memoised answers are only right because the benchmark's codes never change (a live code on
one basket, validated again and again): this is a measuring device, never a way to serve.

Steps:
- `sql`: the code's one statement (`Reader.rows`): what SQLite does, with its locking;
- `lookup`: all of `lookup_code`: the statement and the row made into the code's context;
- `rules`: `check_rules`: the stages and the discount's arithmetic;
- `limiter`: the guess budget's check (`_too_many`);
- `encode`: the answer's JSON;
- `metrics`: the request's histogram observation (on every route: bare's figure moves too).

One server runs every configuration (`POST /ablate` switches steps while it runs; servers of the
same code differ by up to 15 % in CPU per request, more than most steps cost), in rounds of
each configuration in turn, bare and validate beside each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.loadgen import header, server
from bench.validate import SERVER, prepare, wrk
from bench.validate_steps import BASKET, _call
from plugin.runtime import settle_heap
from plugin.settings import Secret, Settings
from plugin.web.app import create_app

STEPS = ("sql", "lookup", "rules", "limiter", "encode", "metrics")

# Put in the server script before the app is built: each step wrapped so that it can be replaced
# by its memoised answer while the server runs, as `POST /ablate` (a comma-separated body) says.
PATCHES = r"""
import plugin.checkout.checkout as _checkout
import plugin.store.db as _db
import plugin.web.api as _api
import plugin.web.hotpaths as _hotpaths

_ablated = set()


def _switch(step, fn, key):
    memo = {}

    def either(*args, **kwargs):
        if step not in _ablated:
            return fn(*args, **kwargs)
        k = key(*args, **kwargs)
        if k not in memo:
            memo[k] = fn(*args, **kwargs)
        return memo[k]

    return either


# the code's statement is keyed without its first parameter: the instant, new on every request
_db.Reader.rows = _switch(
    "sql", _db.Reader.rows, lambda self, sql, params: (sql, tuple(params[1:]) if len(params) > 1 else tuple(params))
)
_checkout.lookup_code = _switch("lookup", _checkout.lookup_code, lambda reader, **kw: kw["candidates"])
_checkout.check_rules = _switch("rules", _checkout.check_rules, lambda ctx, **kw: ctx.code.code)
_too_many = _api._too_many
_api._too_many = lambda call, guesser: None if "limiter" in _ablated else _too_many(call, guesser)
_checkout.Decision.encoded = _switch("encode", _checkout.Decision.encoded, lambda self, **kw: self.code)
_observe = _hotpaths.observe_request
_hotpaths.observe_request = lambda *args: None if "metrics" in _ablated else _observe(*args)


async def ablate(request):
    _ablated.clear()
    _ablated.update(s for s in (await request.body()).decode().split(",") if s)
    return Response(status_code=204)


app = create_app(settings)
app.router.routes.insert(0, Route("/ablate", ablate, methods=["POST"]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=4, help="per route and round (default 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps among {','.join(STEPS)}")
    parser.add_argument("--in-process", action="store_true", help="call the app in this process (CPU time, no server)")
    parser.add_argument("--requests", type=int, default=5000, help="per route and round, with --in-process")
    args = parser.parse_args()
    steps = [s for s in args.only.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps: {sorted(unknown)}")
    script = SERVER.replace("app = create_app(settings)\n", PATCHES, 1)
    assert script != SERVER, "bench/validate.py's server no longer builds its app where expected"
    workdir = Path(tempfile.mkdtemp(prefix="couponry-ablation-"))
    url = f"sqlite:///{workdir / 'bench.db'}"
    key, codes, _ = prepare(url)
    basket = {"currency": "GBP", "lines": [{"product_id": "p1", "quantity": 2, "unit_price": 2500}]}
    validate = [{"code": c, "basket": basket, "customer": {"id": "bench"}} for c in codes]
    bare = [{"code": "BARE", "basket": basket}]
    configs = ["", *steps]
    if args.in_process:
        try:
            in_process(url, key, codes, configs, args.rounds, args.requests)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    print(header() + f"; {args.rounds} rounds of {args.seconds} s per route and configuration, one server")
    bare_us: dict[str, list[float]] = {c: [] for c in configs}
    validate_us: dict[str, list[float]] = {c: [] for c in configs}
    try:
        with server(script, url) as base:
            for path, bodies in (("/bare", bare), ("/api/v1/validate", validate)):  # warm up
                wrk(base, path, bodies, key, 2, workdir)
            for _ in range(args.rounds):  # each round every configuration in turn: drift spreads evenly
                for config in configs:
                    httpx.post(base + "/ablate", content=config).raise_for_status()
                    bare_us[config].append(wrk(base, "/bare", bare, key, args.seconds, workdir)["cpu_us"])
                    validate_us[config].append(wrk(base, "/api/v1/validate", validate, key, args.seconds, workdir)["cpu_us"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("server CPU µs per request, the median of the rounds")
    print(f"{'replaced':<12} {'bare':>6} {'validate':>9} {'saves':>6} {'bare/validate':>14}")
    baseline = statistics.median(validate_us[""])
    for config in configs:
        b, v = statistics.median(bare_us[config]), statistics.median(validate_us[config])
        saves = f"{baseline - v:6.0f}" if config else ""
        print(f"{config or '(nothing)':<12} {b:6.0f} {v:9.0f} {saves:>6} {b / v:14.2f}")


def in_process(url: str, key: str, codes: list[str], configs: list[str], rounds: int, requests: int) -> None:
    """The same switches with the app called in this process (bench/validate_steps.py's way): this
    process's CPU time, the best of the rounds, which a busy machine disturbs far less than a
    server under wrk; what it leaves out (uvicorn, the sockets) is the same for every route."""
    settings = Settings(database_url=url, secret_key=Secret("bench-secret-0123456789-abcdefghij"), run_worker_in_process=False)
    names: dict[str, Any] = {"create_app": create_app, "settings": settings, "Response": Response, "Route": Route}
    exec(PATCHES, names)  # the server script's switches, here
    app, ablated = names["app"], names["_ablated"]

    async def bare(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"valid": True, "code": "BARE", "campaign_id": 1})

    app.router.routes.insert(0, Route("/bare", bare, methods=["POST"]))
    bodies = [json.dumps({"code": c, "basket": BASKET, "customer": {"id": "bench"}}).encode() for c in codes]

    async def per_request(path: str) -> float:
        started = time.process_time()
        for i in range(requests):
            await _call(app, path, key, bodies[i % len(bodies)])
        return (time.process_time() - started) / requests * 1e6

    async def measure() -> tuple[list[float], dict[str, list[float]]]:
        async with app.router.lifespan_context(app):
            settle_heap()  # as `couponry serve` does
            bare_us: list[float] = []
            validate_us: dict[str, list[float]] = {c: [] for c in configs}
            for _ in range(rounds):
                ablated.clear()
                bare_us.append(await per_request("/bare"))
                for config in configs:
                    ablated.clear()
                    ablated.update(s for s in config.split(",") if s)
                    validate_us[config].append(await per_request("/api/v1/validate"))
            return bare_us, validate_us

    bare_us, validate_us = asyncio.run(measure())
    print(f"in process, CPU µs per request, the best of {rounds} rounds of {requests:,}: bare {min(bare_us):.1f}")
    print(f"{'replaced':<12} {'validate':>9} {'saves':>6}")
    baseline = min(validate_us[""])
    for config in configs:
        v = min(validate_us[config])
        saves = f"{baseline - v:6.1f}" if config else ""
        print(f"{config or '(nothing)':<12} {v:9.1f} {saves:>6}")


if __name__ == "__main__":
    main()
