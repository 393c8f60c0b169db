"""How `couponry serve` runs uvicorn: a bounded time to send each request, a concurrency limit,
and access logs without tokens.

uvicorn has no read timeout for a request's head or body, and its keep-alive timeout is reset
by every byte, so a client trickling a byte every few seconds holds a connection (and a slot)
forever. `deadline_protocol` gives each request `request_timeout` seconds, counted from when
the connection opens or the previous response ends, to arrive whole; a connection whose request
is still incomplete then is closed. A request that arrived whole is never cut: the app may take
as long as it takes to answer it.

The access log prints each request's path and query: the signed pull URLs and claim links
carry their token in the path, and a recipient in the query. `RedactTokens` replaces them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from plugin.logs import logging_config
from plugin.settings import Settings

log = logging.getLogger("couponry.server")

try:  # what uvicorn's "auto" would take: httptools when installed (uvicorn[standard])
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Fastest
except ImportError:  # pragma: no cover
    _Fastest = H11Protocol  # type: ignore[assignment, misc]


class _RequestDeadline:
    """Mixed into uvicorn's HTTP protocols (both keep `transport`, `cycle` and `loop`)."""

    request_timeout: float = Settings.request_timeout
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm()  # the next request on this keep-alive connection gets its own time

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        if self.request_timeout > 0 and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            return  # the request came whole: the app is answering it
        if not self.transport.is_closing():
            log.info("closed a connection that sent no complete request within %ss", self.request_timeout)
            self.transport.close()


def deadline_protocol(timeout: float, base: type[asyncio.Protocol] = _Fastest) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol `base`, closing a connection whose request is not whole within
    `timeout` seconds (0: never)."""
    return type(f"Deadline{base.__name__}", (_RequestDeadline, base), {"request_timeout": timeout})


# `/pull/<token>` and `/claim/<token>`, and query values that name a token or a recipient
_TOKEN_PATH = re.compile(r"(/(?:pull|claim)/)[^/?#\s]+")
_SECRET_QUERY = re.compile(
    r"([?&](?:token|id_token|t|signed_payload_jwt|sig|signature|recipient|email|phone|key)=)[^&#\s]*", re.IGNORECASE
)
REDACTED = "[redacted]"


def redact(path: str) -> str:
    """A request's path and query with its tokens (and recipients) replaced."""
    if "/pull/" not in path and "/claim/" not in path and "=" not in path:
        return path
    return _SECRET_QUERY.sub(rf"\1{REDACTED}", _TOKEN_PATH.sub(rf"\1{REDACTED}", path))


class RedactTokens(logging.Filter):
    """On uvicorn's access logger: its record's arguments are (client, method, path with query,
    HTTP version, status); the path is logged redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact(args[2]), *args[3:])
        return True


def log_config(settings: Settings) -> dict[str, Any]:
    """The process's logging configuration (plugin.logs: JSON or text, request id and shop,
    secrets masked), uvicorn's access log redacted (`RedactTokens`) on top."""
    config = logging_config(settings)
    config.setdefault("filters", {})["redact_tokens"] = {"()": f"{__name__}.RedactTokens"}
    config["loggers"]["uvicorn.access"]["filters"] = ["redact_tokens"]
    return config


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for `serve` (`uvicorn.run(app, **server_options(settings))`)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": log_config(settings),
        # The asyncio loop, not uvloop: as fast for this app, and fair between connections under
        # load (bench/loadgen.py: p99 ~30 ms against ~180-360 ms with uvloop at 50 connections).
        "loop": "asyncio",
        "http": deadline_protocol(settings.request_timeout),
        # beyond this many connections and requests in progress, new requests are answered 503
        "limit_concurrency": settings.concurrency_limit or None,
        # X-Forwarded-For is believed only from COUPONRY_TRUSTED_PROXIES, which the app applies
        # itself (plugin.web.clientaddr); uvicorn's own default would trust loopback
        "proxy_headers": False,
    }
