"""GET /metrics: requests and latency per route template (hot routes too), redemptions, guess
refusals, webhook outcomes, the job queue read from the database at scrape time, the optional
bearer token, and prometheus-client's multiprocess mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy import text as sql

from plugin import shared_secrets as keys
from plugin.sandbox.deliverer import sign
from plugin.settings import Secret, Settings
from plugin.store import outbox
from plugin.store.db import session_scope
from plugin.store.models import utcnow
from tests.ingest import SHOP, running_app, sandbox_settings
from tests.ingest import campaign_codes as ingest_codes
from tests.ingest import make_campaign as ingest_campaign
from tests.web.conftest import Api, TestClient, make_app, make_campaign, make_key, rules


def value(text: str, name: str, **labels: str) -> float:
    """The sample `name` with `labels` in an exposition, 0 when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def scrape(client: TestClient | httpx.Client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


def test_requests_are_counted_per_route_template_hot_and_routed(
    api: Api, client: TestClient, engine: Engine, shop_id: int
) -> None:
    campaign_id, stored = make_campaign(engine, shop_id, rules(), codes=1)
    before = scrape(client)
    assert api.validate(stored[0]).status_code == 200  # a hot route: App.__call__ answers it directly
    assert api.validate(stored[0]).status_code == 200
    assert api.get(f"/campaigns/{campaign_id}").status_code == 200  # through Starlette's router, in a Mount
    assert client.get("/no/such/page/42").status_code == 404
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    validate = {"route": "/api/v1/validate", "method": "POST", "status": "200"}
    assert delta("couponry_http_request_duration_seconds_count", **validate) == 2
    assert delta("couponry_http_request_duration_seconds_sum", **validate) > 0
    assert delta("couponry_http_request_duration_seconds_bucket", le="10.0", **validate) == 2
    routed = {"route": "/api/v1/campaigns/{campaign_id:int}", "method": "GET", "status": "200"}
    assert delta("couponry_http_request_duration_seconds_count", **routed) == 1
    assert delta("couponry_http_request_duration_seconds_count", route="<unmatched>", method="GET", status="404") == 1
    # the raw paths never become labels (one per id, or per stranger's guess)
    assert f'/api/v1/campaigns/{campaign_id}"' not in after and "/no/such/page" not in after


def test_each_answer_carries_a_request_id_and_a_callers_is_propagated(api: Api, client: TestClient) -> None:
    mine = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a9c"})
    assert mine.headers["x-request-id"] == "lb-7f3a9c"
    fresh = client.get("/healthz")
    other = client.get("/healthz")
    assert len(fresh.headers["x-request-id"]) == 16 and fresh.headers["x-request-id"] != other.headers["x-request-id"]
    odd = client.get("/healthz", headers={"X-Request-ID": "a b\tc<script>"})  # not a sane token: replaced
    assert odd.headers["x-request-id"] != "a b\tc<script>" and len(odd.headers["x-request-id"]) == 16
    hot = client.post("/api/v1/validate", json={"code": "X"}, headers={**api.headers, "X-Request-ID": "hot-1"})
    assert hot.headers["x-request-id"] == "hot-1"  # the hot routes skip the middleware, not this


def test_redemptions_are_counted_once_per_order_and_code(api: Api, client: TestClient, engine: Engine, shop_id: int) -> None:
    _, stored = make_campaign(engine, shop_id, rules(), codes=1)
    before = value(scrape(client), "couponry_redemptions_total", source="api")
    assert api.redeem(stored[0], "order-1").status_code in (200, 201)
    assert api.redeem(stored[0], "order-1").status_code in (200, 201)  # a retry: the same redemption
    assert value(scrape(client), "couponry_redemptions_total", source="api") == before + 1


def test_guess_refusals_are_counted(settings: Settings, engine: Engine, shop_id: int) -> None:
    app = make_app(settings, engine, limit="2/minute")
    with TestClient(app, client=("10.9.8.7", 40000)) as client:
        api = Api(client, make_key(engine, shop_id, ("storefront",)))
        before = value(scrape(client), "couponry_rate_limit_refusals_total", limit="shopper")
        statuses = [api.validate("WRONG-CODE").status_code for _ in range(4)]
        after = value(scrape(client), "couponry_rate_limit_refusals_total", limit="shopper")
    assert statuses == [200, 200, 429, 429]
    assert after == before + 2


def test_the_job_queue_is_read_from_the_database_at_scrape_time(client: TestClient, engine: Engine, shop_id: int) -> None:
    now = utcnow()
    kind = f"test.metrics.{os.getpid()}"
    with session_scope(engine) as session:
        due = [outbox.enqueue(session, kind, {}, shop_id, run_after=now - timedelta(minutes=m)) for m in (10, 3)]
        outbox.enqueue(session, kind, {}, shop_id, run_after=now + timedelta(hours=1))  # not due yet
        dead = outbox.enqueue(session, kind, {}, shop_id)
    assert all(due) and dead is not None
    with engine.begin() as conn:
        conn.execute(sql("UPDATE job SET status = 'dead' WHERE id = :id"), {"id": dead})
    text = scrape(client)
    assert value(text, "couponry_jobs", kind=kind, status="queued") == 3
    assert value(text, "couponry_jobs", kind=kind, status="dead") == 1
    assert value(text, "couponry_jobs", kind=kind, status="running") == 0
    assert 600 <= value(text, "couponry_job_oldest_due_seconds", kind=kind) < 700
    assert value(text, "couponry_job_queue_readable") == 1
    # read afresh at each scrape (so any process answers the same): the jobs are done now
    with engine.begin() as conn:
        conn.execute(sql("UPDATE job SET status = 'done' WHERE kind = :kind"), {"kind": kind})
    later = scrape(client)
    assert value(later, "couponry_jobs", kind=kind, status="queued") == 0
    assert value(later, "couponry_job_oldest_due_seconds", kind=kind) == 0


def test_the_metrics_token_is_required_when_set(settings: Settings, engine: Engine) -> None:
    token = "metrics-token-0123456789"
    with TestClient(make_app(replace(settings, metrics_token=Secret(token)), engine)) as client:
        missing = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["reason"] == "metrics_token_required"
    assert right.status_code == 200 and "couponry_http_request_duration_seconds_count" in right.text


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_webhook_outcomes_are_counted(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = sandbox_settings(settings)
    campaign_id = ingest_campaign(engine, shop_id, count=1)
    code = ingest_codes(engine, campaign_id)[0].code
    body = json.dumps({"id": 5001, "status": "paid", "currency": "USD", "subtotal": "80.00", "total": "80.00",
                       "discount_codes": [{"code": code, "amount": "8.00"}],
                       "created_at": "2025-01-01T00:00:00+00:00"}).encode()  # fmt: skip
    signed = {
        "Content-Type": "application/json",
        "X-Sandbox-Topic": "orders/create",
        "X-Sandbox-Shop-Domain": SHOP,
        "X-Sandbox-Delivery-Id": f"metrics-{os.getpid()}",
        "X-Sandbox-Hmac-Sha256": sign(keys.webhook_secret(settings), body),
    }
    async with running_app(settings, engine) as (_, client):
        before = (await client.get("/metrics")).text
        assert (await client.post("/webhooks/sandbox", content=body, headers=signed)).status_code == 200
        assert (await client.post("/webhooks/sandbox", content=body, headers=signed)).status_code == 200  # redelivered
        bad = {**signed, "X-Sandbox-Hmac-Sha256": "0" * 64}
        assert (await client.post("/webhooks/sandbox", content=body, headers=bad)).status_code == 401
        after = (await client.get("/metrics")).text

    def delta(outcome: str) -> float:
        return value(after, "couponry_webhooks_total", platform="sandbox", outcome=outcome) - value(
            before, "couponry_webhooks_total", platform="sandbox", outcome=outcome
        )

    assert (delta("received"), delta("duplicate"), delta("bad_signature")) == (1, 1, 1)
    route = {"route": "/webhooks/{platform}", "method": "POST"}
    assert (
        value(after, "couponry_http_request_duration_seconds_count", status="200", **route)
        - value(before, "couponry_http_request_duration_seconds_count", status="200", **route)
        == 2
    )
    webhook_redemptions = value(after, "couponry_redemptions_total", source="webhook") - value(
        before, "couponry_redemptions_total", source="webhook"
    )
    assert webhook_redemptions == 1


MULTIPROCESS_CHILD = """
import sys
from plugin.metrics import observe_request, REDEMPTIONS
observe_request("/api/v1/validate", "POST", 200, 0.004)
REDEMPTIONS.labels("api").inc(int(sys.argv[1]))
"""

MULTIPROCESS_SCRAPE = """
import sys
from plugin.metrics import exposition
sys.stdout.write(exposition().decode())
"""


def test_multiprocess_mode_sums_every_process(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, whichever process answers /metrics reports all of them."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[2])}
    for count in (2, 3):  # two processes, one after the other, each its own pid and files
        subprocess.run([sys.executable, "-c", MULTIPROCESS_CHILD, str(count)], env=env, check=True, timeout=60)
    text = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRAPE], env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert value(text, "couponry_redemptions_total", source="api") == 5
    assert value(text, "couponry_http_request_duration_seconds_count", route="/api/v1/validate", method="POST", status="200") == 2
