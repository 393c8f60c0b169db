"""Secrets the sandbox shares with the app: derived from the app's key unless configured."""

from __future__ import annotations

import hashlib
import hmac

from plugin.settings import Settings


def _derive(settings: Settings, purpose: str) -> str:
    return hmac.new(str(settings.secret_key).encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _configured(settings: Settings, option: str) -> str | None:
    return settings.connector_config.get("sandbox", {}).get(option) or None


def webhook_secret(settings: Settings) -> str:
    """The key the sandbox signs webhooks with and the sandbox connector verifies them with."""
    return _configured(settings, "webhook_secret") or _derive(settings, "sandbox:webhook-secret")


def access_token(settings: Settings, shop: str) -> str:
    """The API token of one sandbox shop (what an install would have granted)."""
    return _derive(settings, f"sandbox:access-token:{shop}")


def api_base_url(settings: Settings) -> str:
    return _configured(settings, "base_url") or f"{settings.public_url}/sandbox/api"


def webhook_url(settings: Settings) -> str:
    """Where the sandbox delivers webhooks unless a shop's knobs say otherwise."""
    return _configured(settings, "webhook_url") or f"{settings.public_url}/webhooks/sandbox"
