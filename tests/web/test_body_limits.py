"""Body limits, enforced while the body streams in, on hot and routed requests alike
(plugin/web/limits.py): a chunked body with no Content-Length is refused 413 as soon as it
passes the route's limit, the rest never read and the endpoint never handed any of it; a
declared Content-Length over the limit is refused without reading a byte. A webhook refused
for its size leaves a record and an alert; WooCommerce's unsigned ping stores nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func
from sqlmodel import col, select

from plugin.orders import webhooks
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.models import Alert, WebhookEvent
from plugin.web import hooks, schemas
from plugin.web.app import create_app
from plugin.web.hotpaths import App
from tests.ingest import SHOP, sandbox_settings
from tests.web.conftest import BASKET, make_campaign, rules

pytestmark = pytest.mark.anyio
CHUNK = 64 * 1024
MB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    reads: int  # body chunks the app asked for

    def problem(self) -> dict[str, Any]:
        assert self.headers["content-type"] == "application/problem+json"
        found: dict[str, Any] = orjson.loads(self.body)
        return found


def endless(chunk: bytes = b"x" * CHUNK, total: int = 12 * MB) -> Iterator[bytes]:
    """A body larger than any limit here (bounded, so a test without limits ends)."""
    for _ in range(total // len(chunk)):
        yield chunk


async def call(
    app: App, method: str, path: str, body: Iterable[bytes], headers: dict[str, str] | None = None, *, declared: int | None = None
) -> Answer:
    """One request straight into the ASGI app: the body as the server hands over a chunked
    upload (no Content-Length unless `declared`), counting how much of it the app read."""
    chunks = iter(body)
    reads = 0
    ended = False
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if declared is not None:
        raw.append((b"content-length", str(declared).encode()))
    else:
        raw.append((b"transfer-encoding", b"chunked"))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": raw,
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        nonlocal reads, ended
        if ended:
            return {"type": "http.disconnect"}
        reads += 1
        chunk = next(chunks, None)
        if chunk is None:
            ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = [m for m in sent if m["type"] == "http.response.start"]
    assert len(start) == 1, sent
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    answer_headers = {k.decode(): v.decode() for k, v in start[0]["headers"]}
    return Answer(start[0]["status"], answer_headers, body, reads)


@asynccontextmanager
async def running(settings: Settings, engine: Engine) -> AsyncIterator[App]:
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        yield app


def spy(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> list[Any]:
    """Record each call of `target.name` (and make none of it happen)."""
    calls: list[Any] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError(f"{name} saw the body")

    monkeypatch.setattr(target, name, record)
    return calls


def assert_refused(answer: Answer, limit: int) -> None:
    assert answer.status == 413
    assert answer.headers["connection"] == "close"  # the server reads no more of it
    problem = answer.problem()
    assert (problem["reason"], problem["details"]["limit"]) == ("body_too_large", limit)
    # read up to the chunk that passed the limit, not one more
    assert answer.reads <= limit // CHUNK + 1


def count(engine: Engine, model: Any) -> int:
    with session_scope(engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


# --- hot routes ---------------------------------------------------------------------------------


async def test_a_chunked_webhook_over_5_mb_is_refused_while_streaming(
    engine: Engine, shop_id: int, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch, hooks, "webhook_shop_hint")  # the first to read the body
    async with running(sandbox_settings(settings), engine) as app:
        answer = await call(app, "POST", "/webhooks/sandbox", endless())
    assert_refused(answer, 5 * MB)
    assert seen == [] and count(engine, WebhookEvent) == 0


async def test_a_chunked_validate_over_1_mb_is_refused_while_streaming(
    engine: Engine, shop_id: int, key: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch, schemas.ValidateRequest, "model_validate_json")
    async with running(settings, engine) as app:
        answer = await call(app, "POST", "/api/v1/validate", endless(), {"Authorization": f"Bearer {key}"})
    assert_refused(answer, MB)
    assert seen == []


async def test_a_small_chunked_validate_is_answered(engine: Engine, shop_id: int, key: str, settings: Settings) -> None:
    _, codes = make_campaign(engine, shop_id, rules(), codes=1, status="active")
    body = json.dumps({"code": codes[0], "basket": BASKET}).encode()
    async with running(settings, engine) as app:
        answer = await call(app, "POST", "/api/v1/validate", [body[:10], body[10:]], {"Authorization": f"Bearer {key}"})
    assert answer.status == 200 and orjson.loads(answer.body)["valid"] is True


async def test_a_declared_length_over_the_limit_is_refused_unread(engine: Engine, shop_id: int, settings: Settings) -> None:
    async with running(sandbox_settings(settings), engine) as app:
        answer = await call(app, "POST", "/webhooks/sandbox", endless(), declared=5 * MB + 1)
    assert_refused(answer, 5 * MB)
    assert answer.reads == 0


# --- routed ones --------------------------------------------------------------------------------


async def test_a_chunked_api_call_over_1_mb_is_refused_on_a_routed_path(
    engine: Engine, shop_id: int, key: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch, schemas.PartnerCreate, "model_validate_json")
    async with running(settings, engine) as app:
        answer = await call(app, "POST", "/api/v1/partners", endless(), {"Authorization": f"Bearer {key}"})
    assert_refused(answer, MB)
    assert seen == []


async def test_an_install_callback_over_64_kb_is_refused(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.woocommerce import WooCommerceConnector

    seen = spy(monkeypatch, WooCommerceConnector, "parse_auth_callback")
    async with running(settings, engine) as app:
        answer = await call(app, "POST", "/install/woocommerce/callback", endless(b"x" * 1024))
    assert answer.status == 413 and answer.problem()["details"]["limit"] == 64 * 1024
    assert answer.reads <= 65 and seen == []


async def test_campaign_rules_may_take_the_larger_documented_body(
    engine: Engine, shop_id: int, key: str, settings: Settings
) -> None:
    body = json.dumps({"name": "Big", "currency": "GBP", "rules": rules()}).encode() + b" " * (2 * MB)
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    async with running(settings, engine) as app:
        answer = await call(app, "POST", "/api/v1/campaigns", chunks, {"Authorization": f"Bearer {key}"})
        documented = (await call(app, "GET", "/api/v1/openapi.json", [])).body
    assert answer.status == 201, answer.body
    operation = orjson.loads(documented)["paths"]["/api/v1/campaigns"]["post"]
    assert operation["requestBody"]["x-body-limit"] == 8 * MB and "413" in operation["responses"]


async def test_the_limits_are_settings(engine: Engine, shop_id: int, settings: Settings) -> None:
    tight = sandbox_settings(replace(settings, webhook_body_limit=1000))
    async with running(tight, engine) as app:
        answer = await call(app, "POST", "/webhooks/sandbox", endless(b"x" * 100))
    assert answer.status == 413 and answer.reads <= 11


def test_the_limits_are_read_from_the_environment() -> None:
    env = {"COUPONRY_SECRET_KEY": "k" * 40, "COUPONRY_WEBHOOK_BODY_LIMIT": "100", "COUPONRY_API_BODY_LIMIT": "200"}
    loaded = Settings.from_env({**env, "COUPONRY_CALLBACK_BODY_LIMIT": "300", "COUPONRY_REQUEST_TIMEOUT": "7"})
    assert (loaded.webhook_body_limit, loaded.api_body_limit, loaded.callback_body_limit) == (100, 200, 300)
    assert loaded.request_timeout == 7 and Settings.from_env(env).concurrency_limit == 1000


# --- a webhook refused for its size is never silently lost ---------------------------------------


def alerts(engine: Engine) -> list[Alert]:
    with session_scope(engine) as session:
        rows = session.exec(select(Alert).order_by(col(Alert.id))).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


async def test_a_refused_webhook_of_a_known_shop_leaves_one_coalesced_alert(
    engine: Engine, shop_id: int, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"X-Sandbox-Shop-Domain": SHOP, "X-Sandbox-Topic": "orders/create"}
    async with running(sandbox_settings(settings), engine) as app:
        for n in range(3):
            sent = {**headers, "X-Sandbox-Delivery-Id": f"d-{n}"}
            answer = await call(app, "POST", "/webhooks/sandbox", [b"{}"], sent, declared=6 * MB + n)
            assert answer.status == 413
        chunked = await call(app, "POST", "/webhooks/sandbox", endless(), {**headers, "X-Sandbox-Delivery-Id": "d-3"})
        assert chunked.status == 413
    (alert,) = alerts(engine)  # one per shop and platform, however many are refused
    assert (alert.shop_id, alert.kind, alert.count, alert.resolved_at) == (shop_id, "webhook_too_large", 4, None)
    recent = alert.details["recent"]
    assert [(r["delivery_id"], r["topic"], r["declared"]) for r in recent[:2]] == [
        ("d-3", "orders/create", False),
        ("d-2", "orders/create", True),
    ]
    assert recent[1]["size"] == 6 * MB + 2 and recent[0]["size"] > 5 * MB
    assert "d-3" in alert.message and "5242880" in alert.message
    assert count(engine, WebhookEvent) == 0  # nothing unsigned stored
    assert "refused a sandbox webhook" in caplog.text


async def test_a_flood_of_refusals_is_counted_in_few_writes(
    engine: Engine, shop_id: int, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    record = webhooks.record_refused

    def counted(*args: Any, **kwargs: Any) -> None:
        writes.append(kwargs["count"])
        record(*args, **kwargs)

    monkeypatch.setattr(webhooks, "record_refused", counted)
    monkeypatch.setattr(hooks.Refusals, "linger", 60.0)  # written when the app stops (it drains them)
    async with running(sandbox_settings(settings), engine) as app:
        answers = await asyncio.gather(
            *[
                call(app, "POST", "/webhooks/sandbox", [], {"X-Sandbox-Shop-Domain": SHOP, "X-Sandbox-Delivery-Id": f"d-{n}"},
                     declared=6 * MB)
                for n in range(100)
            ]
        )  # fmt: skip
    assert {a.status for a in answers} == {413}
    (alert,) = alerts(engine)
    assert alert.count == 100 and writes == [100]  # one write for the lot
    assert len(alert.details["recent"]) == webhooks.RECENT_REFUSALS


async def test_a_refused_webhook_of_an_unknown_shop_is_only_logged(
    engine: Engine, shop_id: int, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"X-Sandbox-Shop-Domain": "nobody.example", "X-Sandbox-Delivery-Id": "d-9"}
    async with running(sandbox_settings(settings), engine) as app:
        for _ in range(3):
            assert (await call(app, "POST", "/webhooks/sandbox", [], headers, declared=6 * MB)).status == 413
    assert alerts(engine) == [] and count(engine, WebhookEvent) == 0
    assert caplog.text.count("'d-9'") == 3


# --- WooCommerce's unsigned ping ------------------------------------------------------------------


async def test_the_unsigned_woocommerce_ping_is_answered_and_stores_nothing(
    engine: Engine, shop_id: int, settings: Settings
) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-WC-Webhook-Source": "https://shop.example/"}
    async with running(settings, engine) as app:
        for n in range(3):
            body = f"webhook_id={n}{'0' * (4 * MB)}".encode()  # a big one as well: nothing of it kept
            answer = await call(app, "POST", "/webhooks/woocommerce", [body], headers, declared=len(body))
            assert answer.status == 200
    assert count(engine, WebhookEvent) == 0 and alerts(engine) == []
