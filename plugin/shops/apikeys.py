"""Per-shop API keys: shown once, stored as a SHA-256 digest, found by a public prefix.

Scopes: `admin` (everything), `checkout` (the checkout calls, for the merchant's servers: exact
refusal reasons and details), `distribution` (claims and pulls) and `storefront` (only
`POST /validate` and the storefront script's `GET /storefront/claims/{token}`, for calls made
from the shopper's browser or app: a validation answer holds only `valid`, `discount` and the
`shopper` view, never the exact reason, message or details a merchant server gets; a storefront
key carries no other scope).

`authenticate_cached` keeps live keys per process for `caches.TTL_SECONDS`: a key revoked
through another process stops working within that time (at once in the revoking process).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.errors import InvalidInput
from plugin.store import caches
from plugin.store.db import read_cursor
from plugin.store.models import ApiKey, utcnow

SCOPES = frozenset({"admin", "checkout", "distribution", "storefront"})
PARTNER_SCOPES = frozenset({"distribution"})  # a partner's key reaches only its own codes
KEY_PREFIX = "cpy"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    session: Session, *, shop_id: int, name: str, scopes: Iterable[str], partner_id: int | None = None
) -> tuple[ApiKey, str]:
    """A new key for the shop (or one of its partners); returns the row and the full key, which is never stored."""
    wanted = sorted(set(scopes))
    allowed = SCOPES if partner_id is None else PARTNER_SCOPES
    unknown = [s for s in wanted if s not in allowed]
    if unknown or not wanted:
        raise InvalidInput(
            f"scopes must be among {sorted(allowed)}; got {wanted}", reason="invalid_scopes", details={"field": "scopes"}
        )
    if "storefront" in wanted and len(wanted) > 1:
        # a storefront key sits in shoppers' browsers: it must never carry more than that
        raise InvalidInput("a storefront key can't carry other scopes", reason="invalid_scopes", details={"field": "scopes"})
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        shop_id=shop_id,
        name=name[:200],
        prefix=prefix,
        key_hash=_digest(secret),
        scopes=" ".join(wanted),
        partner_id=partner_id,
    )
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


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a request needs of its API key (a plain snapshot, safe to cache)."""

    id: int
    shop_id: int
    prefix: str
    key_hash: str
    scopes: frozenset[str]
    partner_id: int | None = None


def _split(token: str) -> tuple[str, str] | None:
    """(public prefix, secret) of a well-formed key, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or len(parts[1]) > 32:
        return None
    return parts[1], parts[2]


def _checked(info: KeyInfo | None, secret: str) -> KeyInfo | None:
    if info is None or not hmac.compare_digest(info.key_hash, _digest(secret)):
        return None
    return info


def authenticate_cached(engine: Engine, token: str) -> KeyInfo | None:
    """Like `authenticate`, from the per-process key cache when it can (one read otherwise)."""
    parts = _split(token)
    return None if parts is None else _checked(live_key(engine, parts[0]), parts[1])


def cached_authentication(engine: Engine, token: str) -> KeyInfo | None:
    """`authenticate_cached` from the per-process cache alone, with no I/O: None when the key is
    not cached (or not valid). On PostgreSQL every database call is a trip to a worker thread,
    which a checkout call whose key is cached need not pay."""
    parts = _split(token)
    return None if parts is None else _checked(caches.for_engine(engine).api_keys.get(parts[0]), parts[1])


def live_key(engine: Engine, prefix: str) -> KeyInfo | None:
    """The unrevoked key with this public prefix (cached per process), or None. For what a key
    minted, e.g. a pull URL, which lives only as long as the key that minted it."""
    if not prefix or len(prefix) > 32:
        return None
    cache = caches.for_engine(engine).api_keys
    info: KeyInfo | None = cache.get(prefix)
    if info is None:
        gen = caches.generation()
        with read_cursor(engine) as reader:
            rows = reader.rows(
                "SELECT id, shop_id, key_hash, scopes, partner_id FROM apikey WHERE prefix = ? AND revoked_at IS NULL",
                (prefix,),
            )
        if not rows:
            return None  # unknown prefixes are not cached: nobody can fill the cache with them
        key_id, shop_id, key_hash, scopes, partner_id = rows[0]
        info = KeyInfo(key_id, shop_id, prefix, key_hash, frozenset(scopes.split()), partner_id)
        cache.put(prefix, info, gen)
    return info


MAX_LISTED = 200  # keys a shop's settings page lists (a shop has a handful; partners' keys included)


def list_keys(session: Session, *, shop_id: int, limit: int = MAX_LISTED) -> list[ApiKey]:
    """The shop's keys, live first then revoked, newest first; never their secrets (only digests are stored)."""
    return list(
        session.exec(
            select(ApiKey)
            .where(col(ApiKey.shop_id) == shop_id)
            .order_by(col(ApiKey.revoked_at).is_not(None), col(ApiKey.id).desc())
            .limit(limit)
        ).all()
    )


def revoke_key(session: Session, *, shop_id: int, prefix: str) -> bool:
    key = session.exec(select(ApiKey).where(col(ApiKey.shop_id) == shop_id, col(ApiKey.prefix) == prefix)).first()
    if key is None or key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    session.add(key)
    return True
