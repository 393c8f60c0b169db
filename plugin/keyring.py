"""Keys per purpose, each rotatable on its own.

The token key encrypts the platform credentials we store (plugin.shops.tokens); the signing
key signs everything we hand out and read back: claim links, pull URLs, setup links, install
state, admin sessions and BigCommerce page tokens. Each is configured on its own
(COUPONRY_TOKEN_KEY, COUPONRY_SIGNING_KEY) and defaults to the secret key, so a deployment
that sets neither keeps every link and stored token it already has. Below each key, every use
derives its own key from it (HKDF `info` for the Fernet keys, an itsdangerous `salt` per
signer), so no derived key serves two purposes.

Rotating the token key: the new key encrypts, old ones still decrypt, and
`couponry keys rotate-token-key` re-encrypts the stored rows (plugin.shops.tokens.rotate_all).
Rotating the signing key: the new key signs, and a retired key still verifies for the grace
period (COUPONRY_SIGNING_KEY_GRACE_DAYS) after the date it was retired: links already emailed
keep working that long, then stop.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from plugin.settings import Settings


def token_keys(settings: Settings) -> tuple[str, ...]:
    """The token keys, the current (encrypting) one first, then those that still decrypt."""
    current = settings.token_key or settings.secret_key
    return (str(current), *(str(k) for k in settings.old_token_keys if k != current))


def signing_key(settings: Settings) -> str:
    """The key that signs whatever is signed now."""
    return str(settings.signing_key or settings.secret_key)


def signing_keys(settings: Settings, now: datetime) -> list[str]:
    """The keys that verify at `now`, in itsdangerous' order: oldest first, the signing key last.
    A retired key verifies until its retirement date plus the grace period."""
    grace = timedelta(days=settings.signing_key_grace_days)
    current = signing_key(settings)
    live = sorted((k for k in settings.old_signing_keys if now < k.retired_at + grace), key=lambda k: k.retired_at)
    return [*(str(k.key) for k in live if str(k.key) != current), current]
