"""The vendors' published API contracts, vendored beside this module, for checking what connectors send.

    load_contract(rel)                           the document, gzipped or not
    body_validator(spec, path, method, ctype)    a JSON-schema validator for one operation's body
    openapi(rel)                                 an openapi-core OpenAPI for whole-request checks
    validate_request(api, request)               check a captured httpx.Request (path, query,
                                                 headers, security, body) against the operation
    validate_response(api, request, response)    check a fake's answer against the operation
    shopify_schema()                             the Admin GraphQL schema, for graphql.validate

The documents live in this package's folder, one folder per vendor with its SOURCE.md (repository,
path, commit, what we use) and the upstream LICENSE; each is byte-identical to upstream once
decompressed. COUPONRY_CONTRACTS_DIR points the tests at another copy (e.g. a newer revision).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from graphql import GraphQLSchema


def contracts_dir() -> Path:
    override = os.environ.get("COUPONRY_CONTRACTS_DIR")
    return Path(override) if override else Path(__file__).resolve().parent


@functools.cache
def load_contract(rel: str) -> Any:
    path = contracts_dir() / rel
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def body_validator(spec: dict[str, Any], path: str, method: str, content_type: str = "application/json") -> Any:
    """A validator for the request body schema of `method path`, with every $ref resolvable."""
    from openapi_schema_validator import OAS30Validator, OAS31Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry: Any = Registry().with_resource("urn:spec", Resource.from_contents(spec, default_specification=DRAFT202012))
    pointer = "/".join(
        [
            "",
            "paths",
            path.replace("~", "~0").replace("/", "~1"),
            method.lower(),
            "requestBody",
            "content",
            content_type.replace("~", "~0").replace("/", "~1"),
            "schema",
        ]
    )
    cls = OAS31Validator if spec["openapi"].startswith("3.1") else OAS30Validator
    return cls({"$ref": "urn:spec#" + pointer}, registry=registry)


def body_errors(spec: dict[str, Any], path: str, method: str, body: Any, content_type: str = "application/json") -> list[str]:
    return [error.message for error in body_validator(spec, path, method, content_type).iter_errors(body)]


@functools.cache
def openapi(rel: str) -> Any:
    """openapi-core's view of a contract; spec validation is off (the Klaviyo file fails it on an
    unrelated schema, see tests/contracts/klaviyo/SOURCE.md)."""
    from openapi_core import Config, OpenAPI

    return OpenAPI.from_dict(load_contract(rel), config=Config(spec_validator_cls=None))


def validate_request(api: Any, request: httpx.Request, host_url: str | None = None) -> None:
    """Raise (openapi-core's error) unless the request matches an operation of the contract.

    `host_url` defaults to the request's own scheme and host, which must be a server of the spec."""
    from openapi_core.testing import MockRequest

    url = request.url
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    mock = MockRequest(
        host_url or f"{url.scheme}://{url.host}",
        request.method.lower(),
        url.path,
        args=dict(url.params.multi_items()),
        headers=dict(request.headers),
        data=request.content,
        content_type=content_type,
    )
    api.validate_request(mock)


@functools.cache
def shopify_schema() -> GraphQLSchema:
    """Shopify's Admin GraphQL schema (API 2025-01) for graphql-core's validate().

    `assume_valid`: graphql-core 3.3 rejects the published schema itself (fields deprecated on a
    type but not on its interface), which says nothing about our documents."""
    from graphql import build_client_schema

    return build_client_schema(load_contract("shopify/admin_schema_2025-01.json.gz")["data"], assume_valid=True)


def validate_response(api: Any, request: httpx.Request, response: httpx.Response, host_url: str | None = None) -> None:
    """Raise unless `response` is a documented answer of the operation `request` calls: keeps the
    fakes honest."""
    from openapi_core.testing import MockRequest, MockResponse

    url = request.url
    mock_request = MockRequest(host_url or f"{url.scheme}://{url.host}", request.method.lower(), url.path)
    content_type = response.headers.get("content-type", "application/json").split(";")[0].strip()
    api.validate_response(mock_request, MockResponse(response.content, response.status_code, content_type=content_type))
