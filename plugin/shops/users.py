"""People who sign in to a shop's standalone admin: owners and staff, argon2id password hashes,
the one-time setup link that creates an owner, and session epochs (sign-out everywhere).

    setup_link / create_owner   `couponry admin setup-token` prints a signed link (24 h); the
                                first form sent with it creates an owner and spends it
    authenticate                email + password (+ shop when the same person is in several)
    session_user                the user a signed session cookie names, if still valid
    sign_out                    bumps the user's epoch: every cookie issued before stops working
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import update
from sqlmodel import Session, col, select

from plugin import keyring
from plugin.errors import InvalidInput
from plugin.settings import Settings
from plugin.shops import audit
from plugin.store import nonces
from plugin.store.models import AdminUser, Shop, utcnow

ROLES = ("owner", "staff")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 hashes anything, but a megabyte "password" is a denial of service
SETUP_MAX_AGE = 24 * 3600  # seconds a printed setup link stays good
SETUP_PURPOSE = "admin-setup"

_hasher = PasswordHasher()  # argon2id with the library's current (RFC 9106 low-memory) parameters
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))  # verified when no user matches: same cost either way


@dataclass(frozen=True)
class SetupGrant:
    """A verified setup link: which shop it creates an owner for, and its one-time nonce."""

    shop_id: int
    nonce: str


def _setup_signer(settings: Settings) -> URLSafeTimedSerializer:
    # the signing key signs; retired ones still verify during their grace period (plugin.keyring)
    return URLSafeTimedSerializer(keyring.signing_keys(settings, utcnow()), salt="couponry.admin.setup")


def setup_token(settings: Settings, shop_id: int) -> str:
    return _setup_signer(settings).dumps({"shop": shop_id, "nonce": secrets.token_urlsafe(16)})


def setup_link(settings: Settings, shop_id: int) -> str:
    return f"{settings.public_url}/admin/setup?token={setup_token(settings, shop_id)}"


def read_setup_token(session: Session, settings: Settings, token: str) -> SetupGrant:
    """The grant a setup token carries, or InvalidInput (`bad_link`) when it is forged, expired or spent."""
    try:
        data: Any = _setup_signer(settings).loads(token, max_age=SETUP_MAX_AGE)
    except BadSignature:
        raise InvalidInput(
            "this setup link is invalid or has expired: print a new one (couponry admin setup-token)", reason="bad_link"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("shop"), int) or not isinstance(data.get("nonce"), str):
        raise InvalidInput("this setup link names no shop", reason="bad_link")
    if nonces.is_spent(session, SETUP_PURPOSE, data["nonce"]):
        raise InvalidInput("this setup link was already used: print a new one (couponry admin setup-token)", reason="bad_link")
    if session.get(Shop, data["shop"]) is None:
        raise InvalidInput("this setup link names a shop that does not exist", reason="bad_link")
    return SetupGrant(shop_id=data["shop"], nonce=data["nonce"])


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _check_email(email: str) -> str:
    email = normalise_email(email)
    local, _, domain = email.partition("@")
    if not local or "." not in domain or len(email) > 320 or any(c.isspace() for c in email):
        raise InvalidInput("enter an email address, e.g. you@shop.example", reason="invalid_email", details={"field": "email"})
    return email


def _check_password(password: str, confirm: str | None) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"use at least {MIN_PASSWORD} characters", reason="weak_password", details={"field": "password"})
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"use at most {MAX_PASSWORD} characters", reason="invalid_password", details={"field": "password"})
    if confirm is not None and confirm != password:
        raise InvalidInput("the two passwords differ", reason="password_mismatch", details={"field": "confirm"})


def create_owner(session: Session, settings: Settings, token: str, *, email: str, password: str, confirm: str) -> AdminUser:
    """Create an owner with a setup link, spending it: a second use is refused (`bad_link`).

    Inputs are checked before the link is spent, so a typo does not cost the merchant their link."""
    grant = read_setup_token(session, settings, token)
    email = _check_email(email)
    _check_password(password, confirm)
    existing = session.exec(
        select(AdminUser).where(col(AdminUser.shop_id) == grant.shop_id, col(AdminUser.email) == email)
    ).first()
    if not nonces.spend(session, SETUP_PURPOSE, grant.nonce, expires_at=utcnow() + timedelta(seconds=SETUP_MAX_AGE)):
        raise InvalidInput("this setup link was already used", reason="bad_link")
    if existing is not None:  # an owner locked out: the link resets their password and makes them owner
        existing.password_hash = _hasher.hash(password)
        existing.role = "owner"
        existing.session_epoch += 1
        existing.disabled_at = None
        user = existing
    else:
        user = AdminUser(shop_id=grant.shop_id, email=email, password_hash=_hasher.hash(password), role="owner")
    session.add(user)
    session.flush()
    assert user.id is not None
    audit.record(
        session, shop_id=grant.shop_id, actor=actor_name(user), action="admin.owner_set_up", subject=f"admin_user:{user.id}"
    )
    return user


def actor_name(user: AdminUser) -> str:
    return f"user:{user.id}:{user.email}"


def has_owner(session: Session, shop_id: int) -> bool:
    stmt = select(AdminUser.id).where(
        col(AdminUser.shop_id) == shop_id, col(AdminUser.role) == "owner", col(AdminUser.disabled_at).is_(None)
    )
    return session.exec(stmt.limit(1)).first() is not None


def _verify(user_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(user_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def authenticate(session: Session, *, email: str, password: str, shop_domain: str = "") -> AdminUser:
    """The user these credentials name, or InvalidInput (`bad_credentials`, never saying which part
    was wrong). The same email may sign in to several shops: then `shop_domain` picks one."""
    email = normalise_email(email)
    stmt = select(AdminUser).where(col(AdminUser.email) == email, col(AdminUser.disabled_at).is_(None))
    if shop_domain.strip():
        shop_ids = select(Shop.id).where(col(Shop.domain) == shop_domain.strip().lower())
        stmt = stmt.where(col(AdminUser.shop_id).in_(shop_ids))
    candidates = session.exec(stmt.order_by(col(AdminUser.id)).limit(10)).all()
    if not candidates or len(password) > MAX_PASSWORD:
        _verify(_DUMMY_HASH, password[:MAX_PASSWORD])
        raise InvalidInput("wrong email or password", reason="bad_credentials", details={"field": "password"})
    matching = [u for u in candidates if _verify(u.password_hash, password)]
    if not matching:
        raise InvalidInput("wrong email or password", reason="bad_credentials", details={"field": "password"})
    if len(matching) > 1:
        raise InvalidInput("you have several shops: enter the shop's domain", reason="shop_required", details={"field": "shop"})
    user = matching[0]
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.last_sign_in_at = utcnow()
    session.add(user)
    session.flush()
    return user


def session_user(session: Session, *, user_id: int, epoch: int) -> AdminUser | None:
    """The user of a session cookie while it is valid (not signed out since, not disabled)."""
    user = session.get(AdminUser, user_id)
    if user is None or user.disabled_at is not None or user.session_epoch != epoch:
        return None
    return user


def sign_out(session: Session, *, user_id: int, shop_id: int) -> None:
    """End every session of the user (the epoch in their cookies no longer matches)."""
    session.execute(
        update(AdminUser)
        .where(col(AdminUser.id) == user_id, col(AdminUser.shop_id) == shop_id)
        .values(session_epoch=AdminUser.session_epoch + 1)
    )
    audit.record(session, shop_id=shop_id, actor=f"user:{user_id}", action="admin.signed_out", subject=f"admin_user:{user_id}")
