"""CPU time per request of the hot checkout call (`POST /api/v1/validate`), the app driven in
process through its ASGI entry (`App.__call__`): no server, no load generator, no network, so a
busy machine inflates the figure far less than a wrk run. For comparing two versions of the app
(e.g. with and without per-request metrics): run it in each tree, alternately, and divide.

Run: `PYTHONPATH=. .venv/bin/python -m bench.request_cpu [requests] [rounds]`; prints µs of CPU per
request for each round and the best.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.validate import prepare
from plugin.runtime import settle_heap
from plugin.settings import Secret, Settings
from plugin.web.app import create_app


async def drive(app: Any, key: str, codes: list[str], requests: int) -> float:
    bodies = [json.dumps({"code": c, "basket": {"currency": "GBP", "lines": []}}).encode() for c in codes]
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]
    statuses: dict[int, int] = {}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    started = time.process_time()
    for n in range(requests):
        body = bodies[n % len(bodies)]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/api/v1/validate", "raw_path": b"/api/v1/validate", "root_path": "", "query_string": b"",
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        sent = False

        async def receive(body: bytes = body) -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, receive, send)
    took = time.process_time() - started
    assert set(statuses) == {200}, statuses
    return took / requests * 1e6


def main(requests: int = 5000, rounds: int = 5) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        key, codes, _ = prepare(url)
        app = create_app(
            Settings(database_url=url, secret_key=Secret("bench-secret-0123456789-abcdefghij"), run_worker_in_process=False)
        )
        settle_heap()  # as `couponry serve` does: the heap built at start leaves the collector's walks
        asyncio.run(drive(app, key, codes, 500))  # warm: caches, first connections
        figures = [asyncio.run(drive(app, key, codes, requests)) for _ in range(rounds)]
    print("µs CPU per validate:", " ".join(f"{f:.1f}" for f in figures), f"best {min(figures):.1f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
