"""HTTP plumbing shared by connectors: one error mapping, one retry policy, one pacer.

    send(client, method, url, ...)     transport failures → UpstreamError (NotSent when nothing left)
    raise_for_status(response)         401/403 → AuthError, 404 → NotFound, 429 → RateLimited,
                                       other 4xx → Rejected, 5xx → UpstreamError
    retrying(call, attempts, wait)     tenacity: retry RateLimited/UpstreamError, honour retry_after,
                                       re-raise the last error once the attempts are spent
    RatePacer                          client-side request windows ("10/s and 150/m") shared by
                                       concurrent calls, so we meet a platform's limits instead of
                                       bouncing off them
    identifiers(recipient)             (email, phone, external_id), read from the key when unset

Connectors keep their quirks (where the message or the retry delay hides in a response) and
pass them in as small callables.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

from connectors import throttling
from connectors.base import Recipient, error_message, retry_after_seconds
from connectors.errors import AuthError, NotFound, RateLimited, Rejected, UpstreamError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Wait = Callable[[RetryCallState], float]

RETRYABLE: tuple[type[Exception], ...] = (RateLimited, UpstreamError)


class NotSent(UpstreamError):
    """The request never reached the server (no connection, or none free): safe to retry even
    when the call is not idempotent, such as sending an SMS."""


async def send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """`client.request(...)`, with transport failures turned into connector errors."""
    try:
        return await client.request(method, url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise NotSent(f"could not reach {httpx.URL(url).host}: {exc.__class__.__name__}") from exc
    except httpx.TimeoutException as exc:
        raise UpstreamError(f"{httpx.URL(url).host} timed out: {exc.__class__.__name__}") from exc
    except httpx.TransportError as exc:
        raise UpstreamError(f"{httpx.URL(url).host} broke the connection: {exc.__class__.__name__}") from exc


def raise_for_status(
    response: httpx.Response,
    *,
    message: Callable[[httpx.Response], str] = error_message,
    retry_after: Callable[[httpx.Response], float | None] | None = None,
    platform: str = "",
) -> httpx.Response:
    """Return the response when it succeeded, else raise the matching ConnectorError (a 429 is
    announced as `platform`'s throttling, connectors.throttling)."""
    status = response.status_code
    if status < 400:
        return response
    text = message(response)
    if status in (401, 403):
        raise AuthError(text, status=status)
    if status == 404:
        raise NotFound(text, status=status)
    if status == 429:
        delay = retry_after(response) if retry_after else retry_after_seconds(response.headers)
        throttling.throttled(platform or "unknown", throttling.RATE_LIMITED, delay or 0.0)
        raise RateLimited(text, retry_after=delay, status=status)
    if status >= 500:
        raise UpstreamError(text, status=status)
    raise Rejected(text, status=status)


class wait_retry_after(wait_base):  # lower case, as tenacity names its strategies
    """Wait as long as a RateLimited error asks, else fall back to exponential backoff with jitter."""

    def __init__(self, fallback: wait_base | None = None, *, longest: float = 300.0) -> None:
        self.fallback = fallback or wait_exponential_jitter(initial=1, max=60)
        self.longest = longest

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return min(error.retry_after, self.longest)
        return float(self.fallback(retry_state))


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 5,
    wait: wait_base | Wait | None = None,
    retry_on: tuple[type[Exception], ...] = RETRYABLE,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """Await `call()` until it succeeds or `attempts` calls have failed with a `retry_on` error;
    then the last error is raised as it was. Tests pass `wait=tenacity.wait_none()`."""
    retryer = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait if wait is not None else wait_retry_after(),
        retry=retry_if_exception_type(retry_on),
        sleep=sleep,
        reraise=True,
    )
    result: T = await retryer(call)
    return result


class RatePacer:
    """Keeps requests inside a platform's windows, e.g. `RatePacer([(10, 1.0), (150, 60.0)])`.

    The server counts a request at some moment between our sending it and our reading its
    answer; we can't know when, nor where its windows start. So a request holds one slot in
    every window from the moment it is sent until one window length after its response came
    back: no span of a window's length then ever sees more than the limit, whatever the
    server's window phase (fixed or sliding). `hold(seconds)` stops everyone after a 429.
    """

    def __init__(
        self,
        limits: Iterable[tuple[int, float]],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        margin: float = 0.002,
    ) -> None:
        self.limits = tuple(limits)
        self._clock = clock
        self._sleep = sleep
        self._margin = margin
        self._ends: list[deque[float]] = [deque() for _ in self.limits]  # when finished requests free their slot
        self._in_flight = 0
        self._hold_until = float("-inf")
        self._waiters: list[asyncio.Future[None]] = []

    @classmethod
    def per_second_and_minute(cls, burst: int, steady: int, **kwargs: Any) -> RatePacer:
        return cls([(burst, 1.0), (steady, 60.0)], **kwargs)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    def hold(self, seconds: float) -> None:
        """Send nothing for `seconds` (a platform's Retry-After)."""
        self._hold_until = max(self._hold_until, self._clock() + seconds)

    async def _acquire(self) -> None:
        while True:
            now = self._clock()
            delay = self._hold_until - now
            wait_for_release = False
            for (limit, _), ends in zip(self.limits, self._ends, strict=True):
                while ends and ends[0] <= now:
                    ends.popleft()
                excess = self._in_flight + len(ends) - limit
                if excess < 0:
                    continue
                if excess < len(ends):  # the (excess+1)th finished request to expire frees a slot
                    delay = max(delay, ends[excess] - now)
                else:  # every slot is held by a request still in flight
                    wait_for_release = True
            if wait_for_release:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
            elif delay > 0:
                await self._sleep(delay)
            else:
                self._in_flight += 1
                return

    def _release(self) -> None:
        self._in_flight -= 1
        now = self._clock()
        for (_, span), ends in zip(self.limits, self._ends, strict=True):
            ends.append(now + span + self._margin)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def identifiers(recipient: Recipient) -> tuple[str | None, str | None, str | None]:
    """The recipient's (email, phone, external_id). When all three are unset, the key stands in:
    with an "@" it is an email, with a leading "+" a phone number (E.164), else an external id."""
    if recipient.email or recipient.phone or recipient.external_id:
        return recipient.email, recipient.phone, recipient.external_id
    key = recipient.key
    if "@" in key:
        return key, None, None
    if key.startswith("+"):
        return None, key, None
    return None, None, key or None


def split_encoded(
    encoded: list[tuple[int, bytes]], *, max_items: int, max_bytes: int, overhead: int
) -> Iterator[list[tuple[int, bytes]]]:
    """Cut already-encoded JSON items (index, bytes) into requests of at most `max_items` items
    and `max_bytes` bytes, counting the envelope's `overhead` and a comma between items."""
    chunk: list[tuple[int, bytes]] = []
    size = overhead
    for item in encoded:
        extra = len(item[1]) + (1 if chunk else 0)
        if chunk and (len(chunk) == max_items or size + extra > max_bytes):
            yield chunk
            chunk, size, extra = [], overhead, len(item[1])
        chunk.append(item)
        size += extra
    if chunk:
        yield chunk
