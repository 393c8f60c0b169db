"""Request body limits, enforced while the body streams in, for every route alike.

`App.__call__` (plugin/web/hotpaths.py) applies them before a request reaches its endpoint,
hot or routed: a declared Content-Length over the route's limit is answered 413 without
reading a byte; a body without one (chunked) is counted as it arrives, and the read that
passes the limit raises `BodyTooLarge` instead of handing the endpoint more. Whatever the
endpoint (or Starlette's error middleware) then tries to answer is replaced by the 413, sent
with `Connection: close` so the server stops reading the rest.

A declared length within the limit needs no counting: the HTTP server (h11 or httptools
under uvicorn) delivers exactly that many bytes as the body.

Limits: order webhooks 5 MB, install and provider callbacks 64 KB, everything else (the API)
1 MB, unless an API route documents more (`Endpoint.body_limit`, shown in the OpenAPI
document); each is a setting.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from re import Pattern

from starlette.routing import compile_path
from starlette.types import Message, Receive, Scope, Send

from plugin.settings import Settings
from plugin.web.problems import problem

log = logging.getLogger(__name__)

WEBHOOKS = "/webhooks/"
CALLBACKS = ("/install/", "/callbacks/")

# Called when a request is refused for its size: (scope, bytes declared or read so far, limit).
Refused = Callable[[Scope, int, int], Awaitable[None]]


class BodyTooLarge(Exception):
    """A request body passed its route's limit while it was being read."""

    def __init__(self, limit: int, seen: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit
        self.seen = seen


@dataclass(frozen=True)
class BodyLimits:
    webhook: int = Settings.webhook_body_limit
    callback: int = Settings.callback_body_limit
    api: int = Settings.api_body_limit
    # (method, path pattern, limit) of the API routes that document a larger body
    larger: tuple[tuple[str, Pattern[str], int], ...] = ()
    # who hears of a refusal, by path prefix (e.g. the webhook route, which records it)
    on_refused: dict[str, Refused] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls, settings: Settings, larger: Iterable[tuple[str, str, int]] = (), on_refused: dict[str, Refused] | None = None
    ) -> BodyLimits:
        """`larger`: (method, full path template, documented limit) of routes taking more."""
        return cls(
            webhook=settings.webhook_body_limit,
            callback=settings.callback_body_limit,
            api=settings.api_body_limit,
            larger=tuple((method, compile_path(path)[0], limit) for method, path, limit in larger),
            on_refused=dict(on_refused or {}),
        )

    def limit(self, scope: Scope) -> int:
        path: str = scope["path"]
        if path.startswith(WEBHOOKS):
            return self.webhook
        if path.startswith(CALLBACKS):
            return self.callback
        for method, pattern, limit in self.larger:
            if scope["method"] == method and pattern.match(path):
                return max(limit, self.api)
        return self.api


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length; None without one, or when a Transfer-Encoding is sent too
    (which then decides where the body ends, so the body is counted)."""
    declared: int | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                return None
        elif name == b"transfer-encoding":
            return None
    return declared


class Guard:
    """One request's receive, counting the body, and send, answering 413 once it is over."""

    __slots__ = ("_receive", "_send", "answered", "exceeded", "limit", "seen")

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.seen = 0
        self.exceeded = False
        self.answered = False

    async def receive(self) -> Message:
        if self.exceeded:  # the endpoint caught the error and read on: the body ends here
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = True
                raise BodyTooLarge(self.limit, self.seen)
        return message

    async def send(self, message: Message) -> None:
        if not self.exceeded:
            await self._send(message)
        elif message["type"] == "http.response.start":
            await self.refuse()  # in place of whatever the app answers
        # once over the limit, the app's own answer is dropped

    async def refuse(self) -> None:
        if not self.answered:
            self.answered = True
            await refuse(self._send, self.limit)


async def refuse(send: Send, limit: int) -> None:
    """The 413 problem, and `Connection: close`: the rest of the body is never read."""
    response = problem(
        413,
        "body_too_large",
        f"The request body is larger than this route takes ({limit} bytes).",
        details={"limit": limit},
        headers={"Connection": "close"},
    )
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
