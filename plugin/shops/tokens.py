"""Platform credentials encrypted at rest (Shop.access_token_encrypted).

What a shop granted us (its access token, and the few other secrets a platform needs: the
WooCommerce consumer key, the webhook secret we registered) is kept as one Fernet token of a
small JSON document. The Fernet keys are derived with HKDF-SHA256 from the token key
(plugin.keyring: COUPONRY_TOKEN_KEY, else the secret key) and, for rotation, from the old token
keys: MultiFernet encrypts with the first and decrypts with any, and `rotate_all` re-encrypts
every stored row under the current key.

The same HKDF derives one key per purpose: each purpose has its own `info`, so no key serves
two purposes. Besides the Fernet keys above there is `address_key`, the HMAC key of
shipping-address fingerprints (plugin.orders.addresses). It is derived from the secret key
(COUPONRY_SECRET_KEY), which neither rotation touches: fingerprints are compared with ones
recorded months ago, so their key changes only if the secret key does (self-referral by
address then rests on addresses seen since; matching by customer id and email is unaffected).

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
from sqlalchemy import Engine, update
from sqlmodel import col, select

from plugin.errors import PluginError
from plugin.keyring import token_keys
from plugin.settings import Settings
from plugin.store.models import Shop
from plugin.store.units import transaction

_INFO = b"couponry platform credentials v1"
_ADDRESS_INFO = b"couponry address fingerprints v1"
_SALT = b"couponry.tokens"


class UnreadableToken(PluginError):
    """A stored credential no configured key can decrypt (the token key changed without
    COUPONRY_OLD_TOKEN_KEYS), or one that was tampered with."""

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
    return _vault(token_keys(settings))


def encrypt(settings: Settings, access_token: str, extra: Mapping[str, str] | None = None) -> str:
    document = json.dumps({"v": 1, "token": access_token, "extra": dict(extra or {})}, separators=(",", ":"))
    return vault(settings).encrypt(document.encode()).decode()


def decrypt(settings: Settings, stored: str) -> StoredCredentials:
    try:
        data = json.loads(vault(settings).decrypt(stored.encode()))
    except (InvalidToken, ValueError):
        raise UnreadableToken(
            "the shop's stored credentials cannot be decrypted with the configured keys; reinstall the app or set "
            "COUPONRY_OLD_TOKEN_KEYS",
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


# --- rotation sweep ---------------------------------------------------------------------------


@dataclass
class RotationReport:
    rotated: int = 0  # re-encrypted under the current key now
    current: int = 0  # already under it (or replaced meanwhile by an install, which encrypts with it)
    unreadable: list[int] = field(default_factory=list)  # shops whose credentials no configured key opens


def _is_current(settings: Settings, stored: str) -> bool:
    try:
        _vault(token_keys(settings)[:1]).decrypt(stored.encode())
    except InvalidToken:
        return False
    return True


def rotate_all(engine: Engine, settings: Settings, *, batch: int = 200) -> RotationReport:
    """Re-encrypt every shop's stored credentials under the current token key, a batch of shops
    per short transaction, so an interrupted sweep keeps what it did and a rerun skips rows
    already current. A row is replaced only if it still holds what was read: an install that
    wrote new credentials meanwhile (under the current key) is never overwritten."""
    report = RotationReport()
    after = 0
    while True:
        with transaction(engine) as session:
            rows = session.exec(
                select(Shop.id, Shop.access_token_encrypted)
                .where(col(Shop.id) > after, col(Shop.access_token_encrypted).is_not(None))
                .order_by(col(Shop.id))
                .limit(batch)
            ).all()
            for shop_id, stored in rows:
                assert shop_id is not None and stored is not None
                after = shop_id
                if _is_current(settings, stored):
                    report.current += 1
                    continue
                try:
                    fresh = rotate(settings, stored)
                except UnreadableToken:
                    report.unreadable.append(shop_id)
                    continue
                result = session.execute(
                    update(Shop)
                    .where(col(Shop.id) == shop_id, col(Shop.access_token_encrypted) == stored)
                    .values(access_token_encrypted=fresh)
                )
                if result.rowcount:  # type: ignore[attr-defined]
                    report.rotated += 1
                else:
                    report.current += 1
        if len(rows) < batch:
            return report
