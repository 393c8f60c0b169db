"""A merchant's receiver as the Standard Webhooks docs describe one, built on the stock library
(`standardwebhooks`): verify the signature and the timestamp (five minutes' tolerance), then
process each `webhook-id` once. Tests mount it behind respx to receive our deliveries."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Receiver:
    secret: str
    processed: list[dict[str, Any]] = field(default_factory=list)  # the events acted on, in order
    seen: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)  # why requests were refused

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.refused.append(str(exc))
            return httpx.Response(400, text=str(exc))
        msg_id = request.headers["webhook-id"]
        if msg_id not in self.seen:  # committed with the event in a real receiver
            self.seen.add(msg_id)
            self.processed.append(json.loads(body))
        return httpx.Response(200, text="ok")
