"""A fake Shopify Admin GraphQL API for respx, answering in the documented shapes.

    fake = shopify_fake(router)          # POST https://{shop}/admin/api/2025-01/graphql.json
    fake.throttle()                      # next answer: THROTTLED with HTTP 200 (documented body)
    fake.script(httpx.Response(429, headers={"Retry-After": "2"}))
    fake.lose_answer(httpx.Response(502))  # next request is carried out, then its answer is lost
    fake.lose_answer(httpx.ReadTimeout)    # ... or the client times out / the connection drops
    fake.calls[-1].operation             # root field(s) of each request, with its variables
    shopify_fake(router, clock=clock)    # also enforce the leaky bucket against that clock

Every request is parsed and validated against the pinned schema (tests/contracts) and its
variables are coerced against the schema's input types; a document or variable Shopify would
refuse gets Shopify's error shape (HTTP 200 with `errors`), so the connector sees Rejected and
the test fails loudly. Answers carry `extensions.cost` like Shopify's. State (discounts, codes,
bulk creations, jobs, orders, webhook subscriptions) is plain data a test can read or seed.
Shapes follow shared/research/shopify.md §1-3 and the 2025-01 schema.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import graphql
import httpx
import respx
from graphql.execution.values import get_variable_values
from graphql.language import FieldNode, FragmentDefinitionNode, FragmentSpreadNode, InlineFragmentNode, OperationDefinitionNode

from tests.contracts import shopify_schema

SHOP = "couponry-test.myshopify.com"
VERSION = "2025-01"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "shopify"
TAKEN = "Code must be unique. Please try a different code."


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def graphql_url(shop: str = SHOP, version: str = VERSION) -> str:
    return f"https://{shop}/admin/api/{version}/graphql.json"


@dataclass
class Call:
    operation: str  # root field names, comma separated
    variables: dict[str, Any]
    document: str
    request: httpx.Request


@dataclass
class Discount:
    id: str
    kind: str  # DiscountCodeBasic | DiscountCodeFreeShipping
    input: dict[str, Any]
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)  # casefold -> {"id", "code"}
    status: str = "ACTIVE"  # DiscountStatus: ACTIVE | EXPIRED (deactivated)


@dataclass
class BulkCreation:
    id: str
    discount_id: str
    results: list[dict[str, Any]]  # {"code", "errors", "discountRedeemCode"}
    polls_left: int

    def as_node(self) -> dict[str, Any]:
        failed = sum(1 for r in self.results if r["errors"])
        return {
            "__typename": "DiscountRedeemCodeBulkCreation",
            "id": self.id,
            "done": self.polls_left <= 0,
            "codesCount": len(self.results),
            "importedCount": len(self.results) - failed if self.polls_left <= 0 else 0,
            "failedCount": failed if self.polls_left <= 0 else 0,
            "createdAt": "2025-03-14T10:00:00Z",
            "codes": lambda args: _connection(self.results if self.polls_left <= 0 else [], args),
        }


class ShopifyFake:
    """The Admin GraphQL API of one shop; see the module docstring."""

    MUTATION_COST = 10

    def __init__(
        self,
        router: respx.MockRouter,
        *,
        shop: str = SHOP,
        version: str = VERSION,
        maximum: float = 1000.0,
        restore_rate: float = 100.0,
        bulk_polls: int = 1,
        bulk_limit: int = 100,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.router = router
        self.shop = shop
        self.url = graphql_url(shop, version)
        self.maximum = maximum
        self.restore_rate = restore_rate
        self.clock = clock  # None: the bucket is full before every call
        self.level = maximum
        self._stamp = clock() if clock else 0.0
        self.throttled = 0  # THROTTLED answers given by the enforced bucket
        self.bulk_polls = bulk_polls  # status polls a bulk creation needs before it is done
        self.bulk_limit = bulk_limit
        self.discounts: dict[str, Discount] = {}
        self.bulk: dict[str, BulkCreation] = {}
        self.jobs: dict[str, int] = {}  # job id -> polls left
        self.orders: dict[str, dict[str, Any]] = {}
        self.webhooks: dict[tuple[str, str], str] = {}
        self.fail_codes: dict[str, tuple[str, str]] = {}  # code (any case) -> (error code, message)
        self.search_blind = False  # True: codes(query:) finds nothing (its index lags the writes)
        self.calls: list[Call] = []
        self._scripted: deque[httpx.Response | Callable[[httpx.Request], httpx.Response]] = deque()
        self._lost: deque[httpx.Response | type[httpx.TransportError]] = deque()
        self._ids = itertools.count(1001)
        self.route = router.post(self.url, name="shopify_graphql").mock(side_effect=self._handle)

    # --- scripting -------------------------------------------------------------------------

    def script(self, *responses: httpx.Response | Callable[[httpx.Request], httpx.Response]) -> None:
        """Answer the next requests with these, before any normal handling."""
        self._scripted.extend(responses)

    def lose_answer(self, *instead: httpx.Response | type[httpx.TransportError]) -> None:
        """Carry out the next requests (Shopify commits), then lose each answer: the client gets
        `instead` (a 502, say) or that transport error (a timeout, a dropped connection)."""
        self._lost.extend(instead)

    def throttle(self, times: int = 1, *, requested: float = 70, available: float = 66, restore_rate: float = 50) -> None:
        """The next `times` answers are THROTTLED with HTTP 200 (the documented body)."""
        body = fixture("graphql_throttled.json")
        body["extensions"]["cost"]["requestedQueryCost"] = requested
        status = body["extensions"]["cost"]["throttleStatus"]
        status.update(currentlyAvailable=available, restoreRate=restore_rate, maximumAvailable=self.maximum)
        self.script(*(httpx.Response(200, json=copy.deepcopy(body)) for _ in range(times)))

    def mock_token(self, body: dict[str, Any] | None = None, *, status: int = 200) -> respx.Route:
        """The OAuth access-token endpoint (authorization code grant and token exchange)."""
        answer = body if body is not None else fixture("oauth_access_token.json")
        return self.router.post(f"https://{self.shop}/admin/oauth/access_token", name="shopify_token").respond(
            status, json=answer
        )

    # --- seeding -----------------------------------------------------------------------------

    def add_discount(self, codes: Iterable[str] = (), kind: str = "DiscountCodeBasic") -> str:
        gid = f"gid://shopify/DiscountCodeNode/{next(self._ids)}"
        self.discounts[gid] = Discount(id=gid, kind=kind, input={"title": "seeded"})
        for code in codes:
            self._add_code(gid, code)
        return gid

    def code_owner(self, code: str) -> str | None:
        for discount in self.discounts.values():
            if code.casefold() in discount.codes:
                return discount.id
        return None

    def _add_code(self, discount_id: str, code: str) -> dict[str, Any]:
        node = {"__typename": "DiscountRedeemCode", "id": f"gid://shopify/DiscountRedeemCode/{next(self._ids)}", "code": code}
        self.discounts[discount_id].codes[code.casefold()] = node
        return node

    # --- HTTP --------------------------------------------------------------------------------

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if self._scripted or not self._lost:
            return self._answer(request)
        answer = self._answer(request)
        lost = self._lost.popleft()
        if isinstance(lost, httpx.Response):
            return lost
        raise lost(f"answer lost after Shopify answered {answer.status_code}", request=request)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        document, variables = body["query"], body.get("variables") or {}
        try:
            ast = graphql.parse(document)
        except graphql.GraphQLError as exc:
            return _errors([exc.message], "GRAPHQL_PARSE_FAILED")
        operation = next(d for d in ast.definitions if isinstance(d, OperationDefinitionNode))
        fragments = {d.name.value: d for d in ast.definitions if isinstance(d, FragmentDefinitionNode)}
        roots = [s for s in operation.selection_set.selections if isinstance(s, FieldNode)]
        self.calls.append(Call(",".join(r.name.value for r in roots), variables, document, request))
        if self._scripted:
            answer = self._scripted.popleft()
            return answer(request) if callable(answer) else answer
        errors = graphql.validate(shopify_schema(), ast)
        if errors:
            return _errors([e.message for e in errors], "GRAPHQL_VALIDATION_FAILED")
        coerced = get_variable_values(shopify_schema(), operation.variable_definitions or (), variables)
        if isinstance(coerced, list):
            return _errors([e.message for e in coerced], "INVALID_VARIABLE")
        values = cast(dict[str, Any], getattr(coerced, "coerced", coerced))  # 3.3 wraps them in VariableValues
        cost = (
            self.MUTATION_COST if operation.operation.value == "mutation" else _selection_cost(operation.selection_set, fragments)
        )
        if self.clock is None:
            self.level = self.maximum
        else:
            now = self.clock()
            self.level = min(self.maximum, self.level + self.restore_rate * (now - self._stamp))
            self._stamp = now
        if self.level < cost:
            self.throttled += 1
            answer = fixture("graphql_throttled.json")
            answer["extensions"]["cost"] = self._cost(cost, None)
            return httpx.Response(200, json=answer)
        self.level -= cost
        data: dict[str, Any] = {}
        for root in roots:
            args = {a.name.value: graphql.value_from_ast_untyped(a.value, values) for a in root.arguments or ()}
            value = getattr(self, "_" + root.name.value)(**args)
            key = root.alias.value if root.alias else root.name.value
            data[key] = _project(root, value, values, fragments)
        return httpx.Response(200, json={"data": data, "extensions": {"cost": self._cost(cost, cost)}})

    def _cost(self, requested: int, actual: int | None) -> dict[str, Any]:
        status = {"maximumAvailable": self.maximum, "currentlyAvailable": self.level, "restoreRate": self.restore_rate}
        return {"requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": status}

    # --- resolvers (one per root field, named _<field>) ---------------------------------------

    def _discount_create(self, kind: str, d: dict[str, Any]) -> dict[str, Any]:
        errors = [
            {"code": "BLANK", "field": ["basicCodeDiscount", name], "message": f"{name} can't be blank", "extraInfo": None}
            for name in ("title", "code", "customerSelection")
            if d.get(name) in (None, "")
        ]
        if not errors and self.code_owner(d["code"]):
            errors.append({"code": "TAKEN", "field": ["basicCodeDiscount", "code"], "message": TAKEN, "extraInfo": None})
        if errors:
            return {"codeDiscountNode": None, "userErrors": errors}
        gid = f"gid://shopify/DiscountCodeNode/{next(self._ids)}"
        self.discounts[gid] = Discount(id=gid, kind=kind, input=d)
        self._add_code(gid, d["code"])
        return {"codeDiscountNode": {"__typename": "DiscountCodeNode", "id": gid}, "userErrors": []}

    def _discount_update(self, id: str, d: dict[str, Any]) -> dict[str, Any]:
        if id not in self.discounts:
            error = {"code": None, "field": ["id"], "message": "Discount does not exist", "extraInfo": None}
            return {"codeDiscountNode": None, "userErrors": [error]}
        self.discounts[id].input.update(d)
        return {"codeDiscountNode": {"__typename": "DiscountCodeNode", "id": id}, "userErrors": []}

    def _discountCodeBasicCreate(self, basicCodeDiscount: dict[str, Any]) -> dict[str, Any]:
        return self._discount_create("DiscountCodeBasic", basicCodeDiscount)

    def _discountCodeFreeShippingCreate(self, freeShippingCodeDiscount: dict[str, Any]) -> dict[str, Any]:
        return self._discount_create("DiscountCodeFreeShipping", freeShippingCodeDiscount)

    def _discountCodeBasicUpdate(self, id: str, basicCodeDiscount: dict[str, Any]) -> dict[str, Any]:
        return self._discount_update(id, basicCodeDiscount)

    def _discountCodeFreeShippingUpdate(self, id: str, freeShippingCodeDiscount: dict[str, Any]) -> dict[str, Any]:
        return self._discount_update(id, freeShippingCodeDiscount)

    def _discount_status(self, id: str, status: str) -> dict[str, Any]:
        if id not in self.discounts:
            error = {"code": None, "field": ["id"], "message": "Discount does not exist", "extraInfo": None}
            return {"codeDiscountNode": None, "userErrors": [error]}
        self.discounts[id].status = status
        return {"codeDiscountNode": {"__typename": "DiscountCodeNode", "id": id}, "userErrors": []}

    def _discountCodeActivate(self, id: str) -> dict[str, Any]:
        return self._discount_status(id, "ACTIVE")

    def _discountCodeDeactivate(self, id: str) -> dict[str, Any]:
        return self._discount_status(id, "EXPIRED")  # Shopify ends a deactivated discount now

    def _discountCodeDelete(self, id: str) -> dict[str, Any]:
        if self.discounts.pop(id, None) is None:
            error = {"code": None, "field": ["id"], "message": "Discount does not exist", "extraInfo": None}
            return {"deletedCodeDiscountId": None, "userErrors": [error]}
        return {"deletedCodeDiscountId": id, "userErrors": []}

    def _discountRedeemCodeBulkAdd(self, discountId: str, codes: list[dict[str, str]]) -> dict[str, Any]:
        if discountId not in self.discounts:
            error = {"code": "INVALID", "field": ["discountId"], "message": "Code discount does not exist."}
            return {"bulkCreation": None, "userErrors": [error]}
        if len(codes) > self.bulk_limit:
            error = {"code": "TOO_MANY_ARGUMENTS", "field": ["codes"], "message": f"Codes must be at most {self.bulk_limit}."}
            return {"bulkCreation": None, "userErrors": [error]}
        results = []
        for item in codes:
            code = item["code"]
            if not code.strip():
                errors = [{"code": "BLANK", "field": ["code"], "message": "Code can't be blank"}]
            elif code.casefold() in (failing := {k.casefold(): v for k, v in self.fail_codes.items()}):
                kind, message = failing[code.casefold()]
                errors = [{"code": kind, "field": ["code"], "message": message}]
            elif self.code_owner(code):
                errors = [{"code": "TAKEN", "field": ["code"], "message": TAKEN}]
            else:
                errors = []
            node = None if errors else self._add_code(discountId, code)
            results.append(
                {"__typename": "DiscountRedeemCodeBulkCreationCode", "code": code, "errors": errors, "discountRedeemCode": node}
            )
        creation = BulkCreation(
            f"gid://shopify/DiscountRedeemCodeBulkCreation/{next(self._ids)}", discountId, results, self.bulk_polls
        )
        self.bulk[creation.id] = creation
        return {"bulkCreation": creation.as_node(), "userErrors": []}

    def _discountRedeemCodeBulkCreation(self, id: str) -> dict[str, Any] | None:
        creation = self.bulk.get(id)
        if creation is None:
            return None
        creation.polls_left -= 1
        return creation.as_node()

    def _codeDiscountNodeByCode(self, code: str) -> dict[str, Any] | None:
        owner = self.code_owner(code)
        return self._codeDiscountNode(owner) if owner else None

    def _codeDiscountNode(self, id: str) -> dict[str, Any] | None:
        discount = self.discounts.get(id)
        if discount is None:
            return None

        def codes(args: dict[str, Any]) -> dict[str, Any]:
            nodes = list(discount.codes.values())
            if args.get("query"):
                term = str(args["query"]).strip('"').casefold()
                nodes = [] if self.search_blind else [n for n in nodes if term in n["code"].casefold()]
            return _connection(nodes, args)

        code_discount = {
            "__typename": discount.kind,
            "title": discount.input.get("title", ""),
            "codes": codes,
            "codesCount": {"count": len(discount.codes), "precision": "EXACT"},
        }
        return {"__typename": "DiscountCodeNode", "id": id, "codeDiscount": code_discount}

    def _discountCodeRedeemCodeBulkDelete(
        self, discountId: str, ids: list[str] | None = None, search: str | None = None, savedSearchId: str | None = None
    ) -> dict[str, Any]:
        discount = self.discounts.get(discountId)
        if discount is None:
            return {
                "job": None,
                "userErrors": [{"code": "INVALID", "field": ["discountId"], "message": "Code discount does not exist."}],
            }
        wanted = set(ids or ())
        discount.codes = {k: v for k, v in discount.codes.items() if v["id"] not in wanted}
        job = f"gid://shopify/Job/{next(self._ids)}"
        self.jobs[job] = 1
        return {"job": {"__typename": "Job", "id": job, "done": False}, "userErrors": []}

    def _job(self, id: str) -> dict[str, Any] | None:
        if id not in self.jobs:
            return None
        self.jobs[id] -= 1
        return {"__typename": "Job", "id": id, "done": self.jobs[id] <= 0}

    def _order(self, id: str) -> dict[str, Any] | None:
        return self.orders.get(id)

    def _orders(self, first: int, query: str, sortKey: str, after: str | None = None) -> dict[str, Any]:
        """The orders search, for the one filter the connector sends: `updated_at:>'<instant>'`
        (the search syntax the 2025-01 schema documents for `orders(query:)`)."""
        match = re.fullmatch(r"updated_at:>'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)'", query)
        assert match and sortKey == "UPDATED_AT", (query, sortKey)
        since = datetime.fromisoformat(match[1])
        found = [o for o in self.orders.values() if datetime.fromisoformat(o["updatedAt"]) > since]
        found.sort(key=lambda o: o["updatedAt"])
        return _connection(found, {"first": first, "after": after})

    def _webhookSubscriptionCreate(self, topic: str, webhookSubscription: dict[str, Any]) -> dict[str, Any]:
        key = (topic, webhookSubscription["callbackUrl"])
        if key in self.webhooks:
            error = {"field": ["webhookSubscription", "callbackUrl"], "message": "Address for this topic has already been taken"}
            return {"webhookSubscription": None, "userErrors": [error]}
        self.webhooks[key] = f"gid://shopify/WebhookSubscription/{next(self._ids)}"
        return {
            "webhookSubscription": {"__typename": "WebhookSubscription", "id": self.webhooks[key], "topic": topic},
            "userErrors": [],
        }

    def _shop(self) -> dict[str, Any]:
        return {"__typename": "Shop", "name": "Couponry Test", "myshopifyDomain": self.shop, "currencyCode": "USD"}


def shopify_fake(router: respx.MockRouter, **options: Any) -> ShopifyFake:
    """Register a fake Shopify Admin GraphQL API on `router` and return it."""
    return ShopifyFake(router, **options)


def order_node(
    legacy_id: int,
    *,
    codes: dict[str, list[str]],
    currency: str = "USD",
    subtotal: str = "0.00",
    total: str = "0.00",
    refunded: str = "0.00",
    status: str = "PAID",
    cancelled_at: str | None = None,
    updated_at: str = "2025-03-14T13:26:53Z",
    customer_id: int | None = 207119551,
    shipping_address: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An Order as the GraphQL API answers it; `codes` maps each code to its allocated amounts."""

    def money(amount: str) -> dict[str, Any]:
        return {
            "shopMoney": {"amount": amount, "currencyCode": currency},
            "presentmentMoney": {"amount": amount, "currencyCode": currency},
        }

    allocations = [
        {"allocatedAmountSet": money(amount), "discountApplication": {"__typename": "DiscountCodeApplication", "code": code}}
        for code, amounts in codes.items()
        for amount in amounts
    ]
    manual = {"allocatedAmountSet": money("1.00"), "discountApplication": {"__typename": "ManualDiscountApplication"}}
    return {
        "__typename": "Order",
        "id": f"gid://shopify/Order/{legacy_id}",
        "legacyResourceId": str(legacy_id),
        "email": "jon@example.com",
        "sourceName": "web",
        "processedAt": "2025-03-14T13:26:53Z",
        "updatedAt": updated_at,
        "cancelledAt": cancelled_at,
        "displayFinancialStatus": status,
        "currencyCode": currency,
        "discountCodes": list(codes),
        "customer": {"__typename": "Customer", "id": f"gid://shopify/Customer/{customer_id}"} if customer_id else None,
        "shippingAddress": {"__typename": "MailingAddress", **shipping_address} if shipping_address else None,
        "subtotalPriceSet": money(subtotal),
        "totalPriceSet": money(total),
        "totalRefundedSet": money(refunded),
        "lineItems": lambda args: _connection([{"discountAllocations": [*allocations[:-1], manual]}], args),
        "shippingLines": lambda args: _connection([{"discountAllocations": allocations[-1:]}], args),
    }


# --- helpers ---------------------------------------------------------------------------------


def _errors(messages: list[str], code: str) -> httpx.Response:
    return httpx.Response(200, json={"errors": [{"message": m, "extensions": {"code": code}} for m in messages]})


def _connection(items: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
    start = int(args["after"]) if args.get("after") else 0
    first = int(args.get("first") or 50)
    page = items[start : start + first]
    end = start + len(page)
    return {
        "__typename": "Connection",
        "nodes": page,
        "edges": [{"cursor": str(start + i + 1), "node": n} for i, n in enumerate(page)],
        "pageInfo": {
            "hasNextPage": end < len(items),
            "hasPreviousPage": start > 0,
            "startCursor": str(start + 1) if page else None,
            "endCursor": str(end) if page else None,
        },
    }


def _project(node: FieldNode, value: Any, variables: dict[str, Any], fragments: dict[str, FragmentDefinitionNode]) -> Any:
    """Shape `value` (dicts, lists, callables taking the field's arguments) like the selection."""
    if callable(value):
        value = value({a.name.value: graphql.value_from_ast_untyped(a.value, variables) for a in node.arguments or ()})
    if value is None or node.selection_set is None:
        return value
    if isinstance(value, list):
        return [_select(node.selection_set.selections, item, variables, fragments) for item in value]
    return _select(node.selection_set.selections, value, variables, fragments)


def _select(
    selections: Iterable[Any], value: dict[str, Any], variables: dict[str, Any], fragments: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for selection in selections:
        if isinstance(selection, FieldNode):
            name = selection.name.value
            key = selection.alias.value if selection.alias else name
            raw = value.get("__typename") if name == "__typename" else value.get(name)
            out[key] = _project(selection, raw, variables, fragments)
        elif isinstance(selection, InlineFragmentNode | FragmentSpreadNode):
            fragment = fragments[selection.name.value] if isinstance(selection, FragmentSpreadNode) else selection
            condition = fragment.type_condition.name.value if fragment.type_condition else None
            typename = value.get("__typename")
            if condition in (None, typename) or (typename == "Connection" and str(condition).endswith("Connection")):
                out.update(_select(fragment.selection_set.selections, value, variables, fragments))
    return out


def _selection_cost(selection_set: Any, fragments: dict[str, FragmentDefinitionNode]) -> int:
    """Shopify's documented query cost: objects 1, connections 2 + `first` x node, scalars 0."""
    total, alternatives = 0, [0]
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.selection_set is None or selection.name.value == "pageInfo":
                continue
            args = {a.name.value: a.value for a in selection.arguments or ()}
            inner = _selection_cost(selection.selection_set, fragments)
            if "first" in args or "last" in args:
                size = args.get("first") or args.get("last")
                count = int(getattr(size, "value", 0) or 0) or 100  # a $variable: assume a page of 100
                per_node = max(
                    (
                        _selection_cost(s.selection_set, fragments) + 1
                        for s in selection.selection_set.selections
                        if isinstance(s, FieldNode) and s.name.value in ("nodes", "edges") and s.selection_set
                    ),
                    default=1,
                )
                total += 2 + count * per_node
            else:
                total += 1 + inner
        else:
            fragment = fragments[selection.name.value] if isinstance(selection, FragmentSpreadNode) else selection
            alternatives.append(_selection_cost(fragment.selection_set, fragments))
    return total + max(alternatives)
