"""Schemathesis against the served OpenAPI document, in process: for every operation, generated
requests (valid and invalid) never get a 5xx, and every response matches the document."""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine
from starlette.applications import Starlette

from plugin.web.api import ENDPOINTS
from tests.web.conftest import TestClient, make_campaign, rules

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}
OPERATIONS = [(e.method, "/api/v1" + re.sub(r":\w+\}", "}", e.path)) for e in ENDPOINTS]

# (schemathesis.pytest.from_fixture does not run under pytest 9, so each operation's strategy
# is driven by hypothesis here, against the document the app serves.)


@pytest.fixture
def served_schema(app: Starlette, engine: Engine, shop_id: int, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    # Generated batch sizes go up to the documented 10 million; keep the background work small.
    monkeypatch.setattr("plugin.campaigns.issuing.MAX_BATCH", 2_000)
    make_campaign(engine, shop_id, rules(), codes=5)  # campaign 1 and its batch 1 exist
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_conforms_to_the_document(served_schema, key: str, method: str, path: str, mode: GenerationMode) -> None:  # type: ignore[no-untyped-def]
    operation = served_schema[path][method]
    auth = {"Authorization": f"Bearer {key}"}
    statuses: set[int] = set()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES[mode], deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=auth, checks=CHECKS)
        statuses.add(response.status_code)

    run()
    assert statuses and max(statuses) < 500


def test_the_document_describes_every_route(client: TestClient) -> None:
    document = client.get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert operations == {e.name for e in ENDPOINTS}
    assert document["components"]["securitySchemes"]["apiKey"] == {"type": "http", "scheme": "bearer"}
