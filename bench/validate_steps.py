"""What each step of a validation costs, in process (no server, no client): the ablation
behind bench/validate.py's ratio.

    .venv/bin/python -m bench.validate_steps [--requests 20000]

The app is called as an ASGI callable with a complete request, so the figures leave out what
uvicorn and the client cost (the same for every route: measure that with bench/validate.py,
whose bare route carries it). Times are this process's CPU time (time.process_time), so other
processes on a busy machine do not inflate them. Printed, in µs per request, best of 3 rounds:
- `POST /bare` through the same app (dispatch, body read, a small JSON answer): the ceiling;
- `POST /api/v1/validate` end to end;
- each step of it on its own, called the way the route calls it: the API key (cached), the
  body model, the shopper's guess budget, the normalisation of what was typed, the code's row
  and context (one SELECT), the rules, and the answer's encoding;
- what is left: the glue between them (the difference). It is large: a step called alone in a
  loop runs with its code and data hot in the CPU caches, which the whole route, touching far
  more of both per request, does not get; a sampling profile of the route (py-spy) puts the
  code row at ~27 % of it, the rules at ~19 %, reading the body ~11 %, the key ~6 %.
The target ratio (validate >= 0.6x bare over HTTP) needs the in-process difference between the
two routes well under the server's fixed cost per request: the figures say where it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.validate import prepare
from plugin.checkout.checkout import shop_formats
from plugin.checkout.checkout import validate as validate_code
from plugin.checkout.ratelimit import Guesser
from plugin.checkout.redemptions import check_rules, customer_key, lookup_code
from plugin.settings import Secret, Settings
from plugin.shops import apikeys
from plugin.store.db import read_cursor
from plugin.store.models import utcnow
from plugin.web.app import create_app
from plugin.web.schemas import ValidateRequest

BASKET = {"currency": "GBP", "lines": [{"product_id": "p1", "quantity": 2, "unit_price": 2500}]}


def _scope(path: str, key: str, body: bytes) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    return {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "root_path": "", "scheme": "http",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        "http_version": "1.1", "asgi": {"version": "3.0"},
    }  # fmt: skip


async def _call(app: Any, path: str, key: str, body: bytes) -> int:
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if given:
            return {"type": "http.disconnect"}
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(path, key, body), receive, send)
    return status


def best_of(rounds: int, n: int, run: Callable[[int], Any]) -> float:
    """µs per call of run(i), the best of `rounds` rounds of n calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for i in range(n):
            run(i)
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    n = parser.parse_args().requests
    work = Path(tempfile.mkdtemp(prefix="couponry-steps-"))
    url = f"sqlite:///{work / 'steps.db'}"
    key, codes, _ = prepare(url)
    settings = Settings(database_url=url, secret_key=Secret("bench-secret-0123456789-abcdefghij"), run_worker_in_process=False)
    app = create_app(settings)

    async def bare(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"valid": True, "code": "BARE", "campaign_id": 1})

    app.router.routes.insert(0, Route("/bare", bare, methods=["POST"]))
    bodies = [json.dumps({"code": c, "basket": BASKET, "customer": {"id": "bench"}}).encode() for c in codes]
    models = [ValidateRequest.model_validate_json(b) for b in bodies]

    async def measure() -> dict[str, float]:
        async with app.router.lifespan_context(app):
            engine = app.state.engine
            limits = app.state.limiter
            assert await _call(app, "/api/v1/validate", key, bodies[0]) == 200
            info = apikeys.authenticate_cached(engine, key)
            assert info is not None
            shop_id = info.shop_id
            loop_n = n

            async def route(path: str) -> float:
                best = float("inf")
                for _ in range(3):
                    start = time.process_time()
                    for i in range(loop_n):
                        await _call(app, path, key, bodies[i % len(bodies)])
                    best = min(best, (time.process_time() - start) / loop_n * 1e6)
                return best

            figures = {"bare route": await route("/bare"), "validate route": await route("/api/v1/validate")}
            now = utcnow()
            guesser = Guesser(shop_id, ("customer:bench",), info.prefix)
            with read_cursor(engine, snapshot=False) as reader:
                formats = shop_formats(reader, engine, shop_id)
                typed = [formats.normalise(c) for c in codes]
                contexts = [
                    lookup_code(
                        reader,
                        shop_id=shop_id,
                        candidates=t.candidates,
                        checkout_id=None,
                        customer=customer_key("bench", None),
                        now=now,
                    )
                    for t in typed
                ]

                def lookup(i: int) -> Any:
                    t = typed[i % len(typed)]
                    return lookup_code(reader, shop_id=shop_id, candidates=t.candidates, checkout_id=None,
                                       customer=customer_key("bench", None), now=now)  # fmt: skip

                steps = {
                    "API key (cached)": lambda i: apikeys.authenticate_cached(engine, key),
                    "body model": lambda i: ValidateRequest.model_validate_json(bodies[i % len(bodies)]),
                    "guess budget": lambda i: limits.check(guesser),
                    "normalise": lambda i: shop_formats(reader, engine, shop_id).normalise(codes[i % len(codes)]),
                    "code row (SELECT)": lookup,
                }
                for name, fn in steps.items():
                    figures[name] = best_of(3, n, fn)
            m = models[0]

            def rules(i: int) -> Any:
                ctx = contexts[i % len(contexts)]
                assert ctx is not None
                return check_rules(ctx, customer=m.customer, basket=m.basket, channel=None, now=now)

            figures["rules"] = best_of(3, n, rules)
            decision = validate_code(engine, shop_id=shop_id, typed=codes[0], basket=m.basket, customer=m.customer,
                                     channel=None, checkout_id=None, now=now)  # fmt: skip
            figures["answer (encode)"] = best_of(3, n, lambda i: decision.encoded())
            return figures

    figures = asyncio.run(measure())
    steps = [k for k in figures if k not in ("bare route", "validate route")]
    print(f"in process, µs per request (best of 3 rounds of {n:,}):")
    print(f"  {'POST /bare (ceiling)':<28} {figures['bare route']:7.1f}")
    print(f"  {'POST /api/v1/validate':<28} {figures['validate route']:7.1f}")
    for name in steps:
        print(f"    {name:<26} {figures[name]:7.1f}")
    glue = figures["validate route"] - figures["bare route"] - sum(figures[s] for s in steps)
    print(f"    {'glue (the rest)':<26} {glue:7.1f}   (validate - bare - the steps)")


if __name__ == "__main__":
    main()
