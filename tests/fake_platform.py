"""bench/fake_shopify.py's fake Shopify (a real-time cost bucket, bulk code adds) as a process
for the multi-process tests, which also records when each bulk creation was made and last read:

    python -m tests.fake_platform --port P [--bucket 500] [--restore-rate 250]

GET /creations answers [{"id", "codes", "added_at", "last_read_at"}] (wall-clock seconds): one
push job sends a batch and reads its creation to the end before the next, so two creations of
one campaign's codes that overlap in time mean two runners of its job at once.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.fake_shopify import FakeShop, create_app


class RecordingShop(FakeShop):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.log: dict[str, dict[str, Any]] = {}

    def bulk_add(self, variables: dict[str, Any]) -> dict[str, Any]:
        added_at = time.time()
        answer = super().bulk_add(variables)
        creation = answer.get("bulkCreation")
        if creation is not None:
            codes = [str(c["code"]) for c in variables.get("codes") or []]
            self.log[creation["id"]] = {"id": creation["id"], "codes": codes, "added_at": added_at, "last_read_at": added_at}
        return answer

    def creation(self, creation_id: str, first: int = 0, after: str | None = None) -> dict[str, Any] | None:
        if creation_id in self.log:
            self.log[creation_id]["last_read_at"] = time.time()
        return super().creation(creation_id, first, after)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", type=float, default=500.0)
    parser.add_argument("--restore-rate", type=float, default=250.0)
    args = parser.parse_args()
    shop = RecordingShop(maximum=args.bucket, restore_rate=args.restore_rate)
    app = create_app(shop)

    async def creations(request: Request) -> JSONResponse:
        return JSONResponse(list(shop.log.values()))

    app.router.routes.append(Route("/creations", creations, methods=["GET"]))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
