"""bench/fake_shopify.py's fake Shopify (a real-time cost bucket, bulk code adds) as a process
for the multi-process tests, which also records when each bulk creation was made and last read:

    python -m tests.fake_platform --port P [--bucket 500] [--restore-rate 250]

GET /creations answers [{"id", "codes", "added_at", "last_read_at"}] (wall-clock seconds): one
push job sends a batch and reads its creation to the end before the next, so two creations of
one campaign's codes that overlap in time mean two runners of its job at once.

It also answers the two lookups a push makes when a code it sends is already held (an earlier
attempt's batch, sent before its worker died): `codeDiscountNodeByCode` and the discount's
`codes(query:)` search (shared/research/shopify.md).
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.fake_shopify import DISCOUNT_ID, FakeShop, create_app

_LOOKUP = re.compile(r"\b(codeDiscountNodeByCode|codeDiscountNode)\s*\(")


class RecordingShop(FakeShop):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.log: dict[str, dict[str, Any]] = {}
        self.ids: dict[str, str] = {}  # casefolded code -> its DiscountRedeemCode id

    def bulk_add(self, variables: dict[str, Any]) -> dict[str, Any]:
        added_at = time.time()
        answer = super().bulk_add(variables)
        creation = answer.get("bulkCreation")
        if creation is not None:
            for result in self.creations[creation["id"]].results:
                if result["discountRedeemCode"]:
                    self.ids[result["code"].casefold()] = result["discountRedeemCode"]["id"]
            codes = [str(c["code"]) for c in variables.get("codes") or []]
            self.log[creation["id"]] = {"id": creation["id"], "codes": codes, "added_at": added_at, "last_read_at": added_at}
        return answer

    def lookup(self, query: str, variables: dict[str, Any]) -> dict[str, Any] | None:
        """The answer's data to a code lookup, or None for any other query."""
        match = _LOOKUP.search(query)
        if match is None:
            return None
        if match.group(1) == "codeDiscountNodeByCode":
            held = str(variables.get("code", "")).casefold() in self.ids
            return {"codeDiscountNodeByCode": {"id": DISCOUNT_ID} if held else None}
        if variables.get("id") != DISCOUNT_ID:
            return {"codeDiscountNode": None}
        wanted = str(variables.get("query", "")).strip('"').casefold()
        nodes = [{"id": self.ids[wanted], "code": wanted.upper()}] if wanted in self.ids else []
        return {"codeDiscountNode": {"codeDiscount": {"codes": {"nodes": nodes}}}}

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
    bench_graphql = app.router.routes[0]
    assert isinstance(bench_graphql, Route)

    async def graphql(request: Request) -> Response:
        body = await request.json()  # (kept by the request: the bench's handler reads it again)
        data = shop.lookup(str(body.get("query", "")), body.get("variables") or {})
        if data is None:
            return await bench_graphql.endpoint(request)  # type: ignore[no-any-return]
        cost = 1.0 if "codeDiscountNodeByCode" in data else 12.0
        if not shop.charge(cost):
            shop.stats["throttled"] += 1
            error = {"message": "Throttled", "extensions": {"code": "THROTTLED"}}
            return JSONResponse({"errors": [error], "extensions": {"cost": shop.cost(cost, None)}})
        return JSONResponse({"data": data, "extensions": {"cost": shop.cost(cost, cost)}})

    app.router.routes.insert(0, Route(bench_graphql.path, graphql, methods=["POST"]))

    async def creations(request: Request) -> JSONResponse:
        return JSONResponse(list(shop.log.values()))

    app.router.routes.append(Route("/creations", creations, methods=["GET"]))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
