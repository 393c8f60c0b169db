"""The OpenAPI 3.1 document of /api/v1, built from the endpoint table and the pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse

from plugin import __version__
from plugin.web.api import ENDPOINTS, PREFIX, Endpoint
from plugin.web.call import MAX_IDS
from plugin.web.schemas import Problem

_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")
_COMMON_ERRORS = {401: "Missing or invalid API key", 403: "The key lacks the scope", 422: "Invalid input"}
_TOO_LARGE = "The request body is larger than the route takes (1 MB unless the route says more)"


def _models() -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {"Problem": Problem}
    for endpoint in ENDPOINTS:
        for model in [endpoint.request, *endpoint.responses.values()]:
            if model is not None:
                found[model.__name__] = model
    return list(found.values())


def build_openapi() -> dict[str, Any]:
    models = _models()
    keyed, definitions = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    refs = {model: keyed[(model, "validation")]["$ref"] for model in models}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", endpoint.path)
        paths.setdefault(PREFIX + path, {})[endpoint.method.lower()] = _operation(endpoint, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Couponry API", "version": __version__},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
    }


def _path_schema(name: str) -> dict[str, Any]:
    if name in MAX_IDS:
        return {"type": "integer", "minimum": 0, "maximum": MAX_IDS[name]}
    if name == "token":  # a signed claim link's last segment
        return {"type": "string", "minLength": 1, "maxLength": 1024}
    # a code as a shopper typed it (any case, spacing or separators)
    return {"type": "string", "minLength": 1, "maxLength": 100}


def _operation(endpoint: Endpoint, refs: dict[type[BaseModel], str]) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": endpoint.name, "summary": endpoint.summary, "responses": {}}
    if endpoint.scope:
        operation["description"] = f"Needs an API key with the `{endpoint.scope}` (or `admin`) scope."
        if endpoint.storefront:
            operation["description"] += (
                " A `storefront` key (for calls from shoppers' browsers) may call it too, and gets only"
                " `valid`, `discount` and `shopper`: never the exact reason, message or details. Its `shopper`"
                " view is generic (a voided, used, held or bound code answers like an unknown one; a live"
                " code's basket nudges stay) unless the shop opted in to detailed refusals, and it can't"
                " send `shopper` (403 `shopper_not_allowed`): its shopper is the connection's address."
            )
        if 429 in endpoint.responses:
            operation["description"] += (
                " Failed guesses (unknown or mistyped codes; never a code that exists, e.g. a live code"
                " refused for its basket) are limited per shopper: name yours in `shopper` (and `customer`), or calls"
                " share the key's higher ceiling. Over it: 429 `too_many_attempts` with `Retry-After`."
            )
    params = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(name)} for name, _ in _PARAM.findall(endpoint.path)
    ]
    if endpoint.method == "GET" and endpoint.name == "listCampaigns":
        params += [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
            {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10**9}},
        ]
    for name, schema in endpoint.query.items():
        spec = {k: v for k, v in schema.items() if k != "required"}
        params.append({"name": name, "in": "query", "required": bool(schema.get("required")), "schema": spec})
    if params:
        operation["parameters"] = params
    if endpoint.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": refs[endpoint.request]}}},
        }
        if endpoint.body_limit is not None:  # other calls take 1 MB (COUPONRY_API_BODY_LIMIT)
            operation["requestBody"]["description"] = f"At most {endpoint.body_limit} bytes; a larger body is refused 413."
            operation["requestBody"]["x-body-limit"] = endpoint.body_limit
    responses = {**dict.fromkeys(_COMMON_ERRORS, Problem), **endpoint.responses}
    descriptions = dict(_COMMON_ERRORS)
    if endpoint.request is not None:
        responses[413] = Problem
        descriptions[413] = _TOO_LARGE
    for status, model in sorted(responses.items()):
        media = "application/problem+json" if model is Problem else "application/json"
        entry: dict[str, Any] = {"description": descriptions.get(status, "OK" if status < 300 else "Refused")}
        if model is not None:
            entry["content"] = {media: {"schema": {"$ref": refs[model]}}}
        operation["responses"][str(status)] = entry
    return operation


async def openapi_json(request: Request) -> JSONResponse:
    document = getattr(request.app.state, "openapi", None)
    if document is None:
        document = request.app.state.openapi = build_openapi()
    return JSONResponse(document)
