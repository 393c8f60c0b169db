"""Per-shop API keys: shown once, stored as a SHA-256 digest, found by a public prefix."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from sqlmodel import Session, col, select

from plugin.errors import InvalidInput
from plugin.models import ApiKey, utcnow

SCOPES = frozenset({"admin", "checkout"})
KEY_PREFIX = "cpy"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, shop_id: int, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """A new key for the shop; returns the row and the full key, which is never stored."""
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise InvalidInput(f"scopes must be among {sorted(SCOPES)}; got {wanted}", reason="invalid_scopes")
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(shop_id=shop_id, name=name[:200], prefix=prefix, key_hash=_digest(secret), scopes=" ".join(wanted))
    session.add(key)
    session.flush()
    return key, f"{KEY_PREFIX}_{prefix}_{secret}"


def authenticate(session: Session, token: str) -> ApiKey | None:
    """The live key this bearer token stands for, or None (constant-time digest comparison)."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    key = session.exec(select(ApiKey).where(col(ApiKey.prefix) == parts[1], col(ApiKey.revoked_at).is_(None))).first()
    if key is None or not hmac.compare_digest(key.key_hash, _digest(parts[2])):
        return None
    return key


def revoke_key(session: Session, *, shop_id: int, prefix: str) -> bool:
    key = session.exec(select(ApiKey).where(col(ApiKey.shop_id) == shop_id, col(ApiKey.prefix) == prefix)).first()
    if key is None or key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    session.add(key)
    return True
