"""`couponry serve`'s uvicorn, for real on 127.0.0.1 (plugin/web/server.py): a connection that
has not sent a complete request within the deadline is closed, a keep-alive client and a slow
answer are not; beyond the concurrency limit requests are answered 503; the access log never
carries a pull or claim token."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from plugin.settings import Settings
from plugin.web.server import REDACTED, RedactTokens, deadline_protocol, redact, server_options


async def plain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, then answers; `/slow` takes a while to."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def serving(settings: Settings, app: Any = plain_app, **options: Any) -> Iterator[int]:
    config = uvicorn.Config(app, **{**server_options(replace(settings, port=0)), "lifespan": "off", **options})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def trickle(port: int, *, every: float, for_at_most: float) -> float | None:
    """Send a request one byte at a time; the seconds until the server closed the connection,
    or None if it never did."""
    request = b"POST /webhooks/shopify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(every)
        for byte in request:
            if time.monotonic() - started > for_at_most:
                return None
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(1024) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue  # nothing from the server: still open
            except OSError:  # reset by the server
                return time.monotonic() - started
    return None


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return replace(settings, request_timeout=1.0)


@pytest.mark.parametrize("base", [HttpToolsProtocol, H11Protocol], ids=["httptools", "h11"])
def test_a_trickling_connection_is_closed_within_the_deadline(fast: Settings, base: type[asyncio.Protocol]) -> None:
    with serving(fast, http=deadline_protocol(fast.request_timeout, base)) as port:
        closed_after = trickle(port, every=0.2, for_at_most=6)
    assert closed_after is not None and closed_after < 3  # 1 s deadline, and slack for a busy machine


def test_a_keep_alive_client_and_a_slow_answer_are_not_cut(fast: Settings) -> None:
    with serving(fast) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        # one connection, kept alive across requests spread over more than the deadline
        answers = []
        for _ in range(3):
            answers.append(client.post("/webhooks/shopify", content=b"{}"))
            time.sleep(0.6)
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert client.get("/slow").status_code == 200  # received whole: the app may take its time


def test_beyond_the_concurrency_limit_requests_are_refused_503(settings: Settings) -> None:
    held = replace(settings, concurrency_limit=3, request_timeout=5)  # connections count
    with serving(held) as port:
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            for sock in sockets:
                sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")  # the body never comes
            time.sleep(0.2)
            assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 503
        finally:
            for sock in sockets:
                sock.close()


def test_the_access_log_carries_no_token(fast: Settings) -> None:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    keep = Keep()
    with serving(fast) as port:
        access = logging.getLogger("uvicorn.access")
        access.addHandler(keep)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                client.get("/pull/s3cr3t-pull-token.sig?recipient=ann@example.com")
                client.get("/claim/s3cr3t-claim-token")
                client.get("/healthz?x=1")
        finally:
            access.removeHandler(keep)
    assert any(f"/pull/{REDACTED}?recipient={REDACTED}" in line for line in lines), lines
    assert any(f"/claim/{REDACTED}" in line for line in lines) and any("/healthz?x=1" in line for line in lines)
    assert not any("s3cr3t" in line or "ann@" in line for line in lines)


def test_redaction_of_paths() -> None:
    assert redact("/api/v1/campaigns/1/pull?recipient=a%40b.c&x=1") == f"/api/v1/campaigns/1/pull?recipient={REDACTED}&x=1"
    assert redact("/pull/abc.def?sig=zz") == f"/pull/{REDACTED}?sig={REDACTED}"
    assert redact("/api/v1/validate") == "/api/v1/validate"
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, "%s %s %s", ("c", "GET", "/claim/t0k"), None)
    assert RedactTokens().filter(record) and record.getMessage() == f"c GET /claim/{REDACTED}"
