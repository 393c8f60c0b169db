"""Who hears when a platform holds us back: an HTTP 429, a GraphQL THROTTLED answer, or a wait
for Shopify's cost bucket to refill.

Connectors know nothing of the app, so they announce throttling here and whoever cares (the
app's metrics) listens:

    listen(listener)                       -> a function that stops listening
    throttled(platform, signal, seconds)   called by connectors; never raises
"""

from __future__ import annotations

import logging
from collections.abc import Callable

Listener = Callable[[str, str, float], None]  # (platform, signal, seconds waited or asked to wait)

RATE_LIMITED = "rate_limited"  # HTTP 429 or a throttled answer
COST_BUCKET = "cost_bucket"  # a wait for Shopify's bucket to hold a call's cost

_listeners: list[Listener] = []
log = logging.getLogger(__name__)


def listen(listener: Listener) -> Callable[[], None]:
    _listeners.append(listener)

    def stop() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return stop


def throttled(platform: str, signal: str, seconds: float = 0.0) -> None:
    for listener in tuple(_listeners):
        try:
            listener(platform, signal, seconds)
        except Exception:  # a listener's failure never breaks a platform call
            log.exception("a throttling listener failed")
