"""A local fake of Shopify's Admin GraphQL API, just enough to bench bulk code pushes.

It enforces the documented cost bucket in real time (a leaky bucket of `maximumAvailable`
points restoring `restoreRate` points a second; a request whose requested cost exceeds what the
bucket holds gets THROTTLED with HTTP 200 and nothing is charged), and implements only
`discountRedeemCodeBulkAdd` (asynchronous: done after a latency) and the
`discountRedeemCodeBulkCreation` query (its status, and its codes with their redeem-code ids),
with the shapes of shared/research/shopify.md §1-2.

    python -m bench.fake_shopify --port 8765 [--bucket 1000] [--restore-rate 100]

GET /stats answers counters (requests, throttled, codes imported, ...).
"""

from __future__ import annotations

import argparse
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DISCOUNT_ID = "gid://shopify/DiscountCodeNode/1"
MUTATION_COST = 10  # Shopify: mutations cost 10
STATUS_COST = 1  # one object, scalar fields
IDS_COST = STATUS_COST + 2 + 2 * 100  # a page of 100 codes with their discountRedeemCode { id }
_ROOT = re.compile(r"\b(discountRedeemCodeBulkAdd|discountRedeemCodeBulkCreation)\s*\(")
_FIRST = re.compile(r"\bcodes\s*\(\s*first:\s*(\$first|\d+)")


@dataclass
class Creation:
    id: str
    results: list[dict[str, Any]]
    ready_at: float


@dataclass
class FakeShop:
    maximum: float = 1000.0
    restore_rate: float = 100.0
    job_latency: float = 0.2
    per_code_latency: float = 0.002
    bulk_limit: int = 100
    level: float = 0.0
    stamp: float = field(default_factory=time.monotonic)
    codes: set[str] = field(default_factory=set)
    creations: dict[str, Creation] = field(default_factory=dict)
    stats: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("requests", "throttled", "bulk_adds", "polls", "polls_not_done", "codes_imported", "codes_failed", "cost_spent"), 0
        )
    )
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.level = self.maximum

    def charge(self, cost: float) -> bool:
        now = time.monotonic()
        self.level = min(self.maximum, self.level + self.restore_rate * (now - self.stamp))
        self.stamp = now
        if self.level < cost:
            return False
        self.level -= cost
        self.stats["cost_spent"] += cost
        return True

    def cost(self, requested: float, actual: float | None) -> dict[str, Any]:
        status = {"maximumAvailable": self.maximum, "currentlyAvailable": round(self.level, 3), "restoreRate": self.restore_rate}
        return {"requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": status}

    def bulk_add(self, variables: dict[str, Any]) -> dict[str, Any]:
        codes = [str(c["code"]) for c in variables.get("codes") or []]
        if variables.get("discountId") != DISCOUNT_ID:
            error = {"code": "INVALID", "field": ["discountId"], "message": "Code discount does not exist."}
            return {"bulkCreation": None, "userErrors": [error]}
        if len(codes) > self.bulk_limit:
            error = {"code": "TOO_MANY_ARGUMENTS", "field": ["codes"], "message": f"Codes must be at most {self.bulk_limit}."}
            return {"bulkCreation": None, "userErrors": [error]}
        results: list[dict[str, Any]] = []
        for code in codes:
            key = code.casefold()
            if key in self.codes:
                errors = [{"code": "TAKEN", "field": ["code"], "message": "Code must be unique. Please try a different code."}]
                self.stats["codes_failed"] += 1
                results.append({"code": code, "errors": errors, "discountRedeemCode": None})
            else:
                self.codes.add(key)
                self.stats["codes_imported"] += 1
                node = {"id": f"gid://shopify/DiscountRedeemCode/{next(self._ids)}"}
                results.append({"code": code, "errors": [], "discountRedeemCode": node})
        creation_id = f"gid://shopify/DiscountRedeemCodeBulkCreation/{next(self._ids)}"
        ready_at = time.monotonic() + self.job_latency + self.per_code_latency * len(codes)
        self.creations[creation_id] = Creation(creation_id, results, ready_at)
        self.stats["bulk_adds"] += 1
        return {"bulkCreation": self.creation(creation_id), "userErrors": []}

    def creation(self, creation_id: str, first: int = 0, after: str | None = None) -> dict[str, Any] | None:
        creation = self.creations.get(creation_id)
        if creation is None:
            return None
        done = time.monotonic() >= creation.ready_at
        failed = sum(1 for r in creation.results if r["errors"]) if done else 0
        start = int(after or 0)
        page = creation.results[start : start + first] if done else []
        return {
            "id": creation.id,
            "done": done,
            "codesCount": len(creation.results),
            "importedCount": len(creation.results) - failed if done else 0,
            "failedCount": failed,
            "codes": {
                "nodes": page,
                "pageInfo": {
                    "hasNextPage": done and start + len(page) < len(creation.results),
                    "endCursor": str(start + len(page)),
                },
            },
        }


def create_app(shop: FakeShop) -> Starlette:
    async def graphql(request: Request) -> JSONResponse:
        shop.stats["requests"] += 1
        if request.headers.get("x-shopify-access-token") is None:
            return JSONResponse({"errors": "[API] Invalid API key or access token"}, status_code=401)
        body = await request.json()
        query, variables = str(body.get("query", "")), body.get("variables") or {}
        match = _ROOT.search(query)
        if match is None:
            return JSONResponse({"errors": [{"message": "not implemented by the bench fake"}]})
        if match.group(1) == "discountRedeemCodeBulkAdd":
            requested = float(MUTATION_COST)
        else:
            paged = _FIRST.search(query)
            size = 0 if paged is None else int(variables.get("first", 0) if paged.group(1) == "$first" else paged.group(1))
            # a code node costs 1, its discountRedeemCode 1 and its errors 1 (when asked for)
            per_code = 3 if re.search(r"\berrors\b", query) else 2
            requested = float(STATUS_COST + (2 + per_code * size if paged else 0))
        if not shop.charge(requested):
            shop.stats["throttled"] += 1
            error = {
                "message": "Throttled",
                "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"},
            }
            return JSONResponse({"errors": [error], "extensions": {"cost": shop.cost(requested, None)}})
        data: dict[str, Any]
        if match.group(1) == "discountRedeemCodeBulkAdd":
            data = {"discountRedeemCodeBulkAdd": shop.bulk_add(variables)}
        else:
            shop.stats["polls"] += 1
            node = shop.creation(str(variables.get("id")), int(variables.get("first") or 0), variables.get("after"))
            if node is not None and not node["done"]:
                shop.stats["polls_not_done"] += 1
            data = {"discountRedeemCodeBulkCreation": node}
        return JSONResponse({"data": data, "extensions": {"cost": shop.cost(requested, requested)}})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({**shop.stats, "codes_stored": len(shop.codes)})

    return Starlette(
        routes=[
            Route("/admin/api/{version}/graphql.json", graphql, methods=["POST"]),
            Route("/stats", stats, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", type=float, default=1000.0, help="maximumAvailable points")
    parser.add_argument("--restore-rate", type=float, default=100.0, help="restoreRate points/s (Standard plan: 100)")
    parser.add_argument("--job-latency", type=float, default=0.2, help="seconds before a bulk creation is done")
    parser.add_argument("--per-code-latency", type=float, default=0.002, help="extra seconds per code in a bulk creation")
    args = parser.parse_args()
    shop = FakeShop(
        maximum=args.bucket, restore_rate=args.restore_rate, job_latency=args.job_latency, per_code_latency=args.per_code_latency
    )
    uvicorn.run(create_app(shop), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
