"""Platform credentials encrypted at rest (Shop.access_token_encrypted).

What a shop granted us (its access token, and the few other secrets a platform needs: the
WooCommerce consumer key, the webhook secret we registered) is kept as one Fernet token of a
small JSON document. The Fernet keys are derived with HKDF-SHA256 from `settings.secret_key`
and, for rotation, from `settings.old_secret_keys`: MultiFernet encrypts with the first and
decrypts with any, and `rotate` re-encrypts a stored value under the current key.

The same HKDF derives one key per purpose from the secret: each purpose has its own `info`,
so no key serves two purposes. Besides the Fernet keys above there is `address_key`, the HMAC
key of shipping-address fingerprints (plugin.orders.addresses). It is derived from the current secret
only: after a rotation, fingerprints recorded under the old secret no longer match new ones
(self-referral by address then rests on addresses seen since; matching by customer id and
email is unaffected).

Nothing here logs a secret; `StoredCredentials` hides its values in repr.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from plugin.errors import PluginError
from plugin.settings import Settings

_INFO = b"couponry platform credentials v1"
_ADDRESS_INFO = b"couponry address fingerprints v1"
_SALT = b"couponry.tokens"


class UnreadableToken(PluginError):
    """A stored credential no configured key can decrypt (the secret key changed without
    COUPONRY_OLD_SECRET_KEYS), or one that was tampered with."""

    status = 409


@dataclass(frozen=True)
class StoredCredentials:
    access_token: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"StoredCredentials(access_token='***', extra_keys={sorted(self.extra)})"


@lru_cache(maxsize=16)
def _derive(secret: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(secret.encode())


def _fernet_key(secret: str) -> bytes:
    return base64.urlsafe_b64encode(_derive(secret, _INFO))


def address_key(settings: Settings) -> bytes:
    """The HMAC key of address fingerprints (plugin.orders.addresses), from the current secret."""
    return _derive(str(settings.secret_key), _ADDRESS_INFO)


@lru_cache(maxsize=8)
def _vault(secrets: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(_fernet_key(s)) for s in secrets])


def vault(settings: Settings) -> MultiFernet:
    keys = (str(settings.secret_key), *(str(k) for k in settings.old_secret_keys))
    return _vault(keys)


def encrypt(settings: Settings, access_token: str, extra: Mapping[str, str] | None = None) -> str:
    document = json.dumps({"v": 1, "token": access_token, "extra": dict(extra or {})}, separators=(",", ":"))
    return vault(settings).encrypt(document.encode()).decode()


def decrypt(settings: Settings, stored: str) -> StoredCredentials:
    try:
        data = json.loads(vault(settings).decrypt(stored.encode()))
    except (InvalidToken, ValueError):
        raise UnreadableToken(
            "the shop's stored credentials cannot be decrypted with the configured keys; reinstall the app or set "
            "COUPONRY_OLD_SECRET_KEYS",
            reason="unreadable_credentials",
        ) from None
    extra = data.get("extra") or {}
    return StoredCredentials(access_token=str(data.get("token", "")), extra={str(k): str(v) for k, v in extra.items()})


def rotate(settings: Settings, stored: str) -> str:
    """The same credentials encrypted under the current key (for a rotation sweep)."""
    try:
        return vault(settings).rotate(stored.encode()).decode()
    except InvalidToken:
        raise UnreadableToken("stored credentials cannot be decrypted", reason="unreadable_credentials") from None
