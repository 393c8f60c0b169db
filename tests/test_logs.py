"""Structured logs (plugin.logs): JSON in production, readable text in development, every line
with the request id (the caller's X-Request-ID, propagated) and the shop when known, and no
secret or token in any line, whatever a call site logs."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from plugin import logs
from plugin.errors import ConfigError
from plugin.settings import Secret, Settings
from plugin.web.app import create_app

SHOPIFY_TOKEN = "shpat_0123456789abcdef0123456789abcdef"
KLAVIYO_KEY = "pk_klaviyo_private_key_0123456789"
CLAIM_TOKEN = "eyJjYW1wYWlnbiI6MX0.ZxYwVu.s1gnature_part_0123"


@pytest.fixture
def captured(settings: Settings) -> Iterator[tuple[io.StringIO, Settings]]:
    """The process's logging as `serve` configures it, written to a buffer; restored after."""
    settings = replace(settings, connector_config={"klaviyo": {"api_key": KLAVIYO_KEY}})
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    uvicorn_saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in ("uvicorn", "uvicorn.access")}
    buffer = io.StringIO()

    def configure(fmt: str) -> None:
        config = logs.logging_config(replace(settings, log_format=fmt))
        config["handlers"]["default"]["stream"] = buffer
        logging.config.dictConfig(config)

    yield buffer, settings, configure  # type: ignore[misc]
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    for name, (handlers, propagate) in uvicorn_saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


def leaky_app(settings: Settings, engine: Engine):  # type: ignore[no-untyped-def]
    """The real app with one extra route that logs every kind of secret a careless line could."""
    app = create_app(settings, engine=engine)

    async def careless(request: Request) -> PlainTextResponse:
        logs.bind_shop(42)
        log = logging.getLogger("couponry.test")
        log.warning(
            "calling with key %s, token %s, header Authorization: Bearer %s, link %s/claim/%s?email=ann@example.com",
            settings.secret_key, SHOPIFY_TOKEN, KLAVIYO_KEY, settings.public_url, CLAIM_TOKEN,
        )  # fmt: skip
        log.info("payload %s", json.dumps({"access_token": "at-secret-value-123", "shop": "a.myshopify.com"}))
        try:
            raise RuntimeError(f"refused with {SHOPIFY_TOKEN}")
        except RuntimeError:
            log.exception("a traceback too")
        return PlainTextResponse("ok")

    app.add_route("/careless", careless)
    return app


SECRETS = (SHOPIFY_TOKEN, KLAVIYO_KEY, CLAIM_TOKEN, "at-secret-value-123")


def test_json_lines_carry_the_request_id_and_shop_and_no_secret(captured, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    buffer, settings, configure = captured
    configure("json")
    with TestClient(leaky_app(settings, engine)) as client:
        response = client.get("/careless", headers={"X-Request-ID": "req-from-proxy-1"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-from-proxy-1"
    output = buffer.getvalue()
    for secret in (*SECRETS, settings.secret_key):
        assert secret not in output
    lines = [json.loads(line) for line in output.splitlines() if "couponry.test" in line]
    assert len(lines) == 3
    for line in lines:
        assert line["request_id"] == "req-from-proxy-1"
        assert line["shop"] == 42
        assert line["level"] in ("WARNING", "INFO", "ERROR") and line["logger"] == "couponry.test" and "time" in line
    assert "[redacted]" in lines[0]["message"] and "a.myshopify.com" in lines[1]["message"]  # only the secrets go
    assert "RuntimeError" in lines[2]["exc_info"]


def test_text_lines_are_readable_with_the_request_id_and_shop(captured, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    buffer, settings, configure = captured
    configure("text")
    with TestClient(leaky_app(settings, engine)) as client:
        response = client.get("/careless")
    request_id = response.headers["x-request-id"]
    output = buffer.getvalue()
    for secret in (*SECRETS, settings.secret_key):
        assert secret not in output
    line = next(line for line in output.splitlines() if "calling with key" in line)
    assert f" WARNING couponry.test [req={request_id} shop=42] calling with key [redacted]" in line
    assert not line.startswith("{")


def test_lines_outside_a_request_name_neither(captured) -> None:  # type: ignore[no-untyped-def]
    buffer, _, configure = captured
    configure("json")
    logging.getLogger("couponry.test").warning("starting")
    line = json.loads(buffer.getvalue().splitlines()[-1])
    assert line["request_id"] is None and line["shop"] is None


def test_the_log_format_follows_the_setting_and_auto_picks_by_database(settings: Settings) -> None:
    assert logs.resolve_format(replace(settings, database_url="sqlite:///x.db")) == "text"
    assert logs.resolve_format(replace(settings, database_url="postgresql+psycopg://u@h/db")) == "json"
    assert logs.resolve_format(replace(settings, database_url="sqlite:///x.db", log_format="json")) == "json"
    env = {"COUPONRY_SECRET_KEY": "k" * 40, "COUPONRY_DATABASE_URL": "sqlite:///:memory:"}
    assert Settings.from_env({**env, "COUPONRY_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="COUPONRY_LOG_FORMAT"):
        Settings.from_env({**env, "COUPONRY_LOG_FORMAT": "xml"})


def test_the_redactor_masks_configured_secrets_and_known_token_shapes() -> None:
    redact = logs.Redactor(["configured-secret-0123456789"])
    assert redact("x configured-secret-0123456789 y") == "x [redacted] y"
    assert redact("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer [redacted]"
    assert redact(f"got {SHOPIFY_TOKEN}") == "got [redacted]"
    assert redact("GET /pull/abc.def?x=1") == "GET /pull/[redacted]?x=1"
    assert redact("url?token=abc&x=1") == "url?token=[redacted]&x=1"
    assert redact('{"client_secret": "s3cr3t", "name": "Ann"}') == '{"client_secret": "[redacted]", "name": "Ann"}'
    assert redact('{"message": "payload {\\"access_token\\": \\"at-1234\\"}"}') == (
        '{"message": "payload {\\"access_token\\": \\"[redacted]\\"}"}'
    )  # inside JSON already encoded
    assert redact("nothing secret here: order 1001") == "nothing secret here: order 1001"
    assert Secret("x" * 40) not in repr(Secret("x" * 40))
