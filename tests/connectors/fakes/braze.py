"""A Braze /users/track behind respx, in the shapes research/messaging.md §3 and Braze's
post_user_track.md document (no machine-readable spec is published); bodies from fixtures/braze.

It checks what Braze checks and we rely on: Bearer auth, at most 75 attribute objects, each
naming its user by one of external_id, user_alias, braze_id, email or phone; an invalid email
is a non-fatal indexed error, and a request with nothing valid is a fatal 400. Every answer
carries X-RateLimit-Limit/-Remaining/-Reset (epoch seconds).
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import httpx
import respx

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "braze"
IDENTIFIERS = ("external_id", "user_alias", "braze_id", "email", "phone")
RESET_EPOCH = 1_800_000_000


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class FakeBraze:
    BASE_URL = "https://rest.iad-01.braze.com"
    API_KEY = "b7c0ffee-0000-4000-8000-000000000001"

    def __init__(self) -> None:
        # One route; tests assert its calls themselves.
        self.router = respx.mock(base_url=self.BASE_URL, assert_all_called=False)
        self.users: dict[str, dict[str, Any]] = {}
        self._scripts: deque[httpx.Response] = deque()
        self.router.post("/users/track", name="track").mock(side_effect=self._track)
        self._remaining: dict[str, int] = defaultdict(lambda: 3000)

    def script(self, *responses: httpx.Response) -> None:
        self._scripts.extend(responses)

    def _headers(self) -> dict[str, str]:
        self._remaining["track"] -= 1
        return {
            "X-RateLimit-Limit": "3000",
            "X-RateLimit-Remaining": str(self._remaining["track"]),
            "X-RateLimit-Reset": str(RESET_EPOCH),
        }

    def _track(self, request: httpx.Request) -> httpx.Response:
        if self._scripts:
            return self._scripts.popleft()
        if request.headers.get("authorization") != f"Bearer {self.API_KEY}":
            return httpx.Response(401, json=fixture("invalid_api_key.json"))
        attributes = json.loads(request.content).get("attributes", [])
        if len(attributes) > 75:
            return httpx.Response(400, json={"message": "Too many attributes: at most 75 per request"}, headers=self._headers())
        errors = []
        for index, item in enumerate(attributes):
            named = [key for key in IDENTIFIERS if key in item]
            if not named:
                errors.append(
                    {
                        "type": "must provide one of external_id, user_alias, braze_id, email or phone",
                        "input_array": "attributes",
                        "index": index,
                    }
                )
            elif "email" in item and "@" not in str(item["email"]):
                errors.append({"type": "'email' is not valid", "input_array": "attributes", "index": index})
            else:
                key = str(item.get("external_id") or item.get("email") or item.get("phone"))
                self.users.setdefault(key, {}).update({k: v for k, v in item.items() if k not in IDENTIFIERS})
        processed = len(attributes) - len(errors)
        if not processed:
            body = fixture("track_fatal.json")
            body["errors"] = errors
            return httpx.Response(400, json=body, headers=self._headers())
        body = {"message": "success", "attributes_processed": processed}
        if errors:
            body["errors"] = errors
        return httpx.Response(201, json=body, headers=self._headers())
