"""Posting a message to a Slack incoming webhook (api.slack.com/messaging/webhooks).

One POST of `{"text": ...}` as JSON to the webhook URL. Slack answers 200 with the body `ok`;
an error is a 4xx (or 500) whose plain-text body names it: `invalid_payload` (400),
`action_prohibited` (403), `channel_not_found` and `no_service` (404: the webhook was removed or
is wrong), `channel_is_archived` (410), `rollup_error` (500). 429 means too many messages (about
one a second per webhook) and comes with Retry-After. The errors map onto connectors.errors: a
removed webhook is an AuthError (retrying can't help), a malformed one is Rejected, 429 is
RateLimited, 5xx and timeouts are UpstreamError.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from connectors.base import retry_after_seconds
from connectors.egress import THIRD_PARTY
from connectors.errors import AuthError, RateLimited, Rejected, UpstreamError

HOSTS = ("hooks.slack.com",)
_GONE = ("no_service", "channel_not_found", "channel_is_archived", "action_prohibited", "no_team", "team_disabled")


def is_webhook_url(url: str) -> bool:
    """An https URL on Slack's webhook host (we post nowhere else with it)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme == "https" and (parts.hostname or "") in HOSTS and parts.path.startswith("/services/")


async def post(http: httpx.AsyncClient, url: str, text: str) -> None:
    try:
        response = await http.post(
            url, json={"text": text}, timeout=httpx.Timeout(10.0), follow_redirects=False, extensions={THIRD_PARTY: True}
        )
    except httpx.TimeoutException as exc:
        raise UpstreamError("Slack did not answer in time") from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"could not reach Slack: {type(exc).__name__}") from exc
    status, body = response.status_code, response.text.strip()[:100]
    if status == 200:
        return
    if status == 429:
        raise RateLimited("Slack: too many messages", retry_after=retry_after_seconds(response.headers), status=status)
    if status >= 500:
        raise UpstreamError(f"Slack: {body or 'server error'}", status=status)
    if body in _GONE or status in (403, 404, 410):
        raise AuthError(f"Slack refused the webhook: {body or status} (set a new webhook URL)", status=status)
    raise Rejected(f"Slack refused the message: {body or status}", status=status)
