"""People who sign in to a shop's standalone admin: owners and staff, argon2id password hashes,
the one-time setup link that creates an owner, and session epochs (sign-out everywhere).

    setup_link / create_owner   `couponry admin setup-token` prints a signed link (24 h); the
                                first form sent with it creates an owner and spends it
    invite_link                 an owner's signed one-time link (3 days) for one email and role;
                                `create_owner` with it creates that user (owner or staff)
    list_users / set_role /     an owner manages the shop's people; a shop always keeps an
    remove_user                 owner, and nobody removes themselves
    authenticate                email + password (+ shop when the same person is in several)
    session_user                the user a signed session cookie names, if still valid
    sign_out                    bumps the user's epoch: every cookie issued before stops working
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from plugin import keyring
from plugin.errors import Conflict, InvalidInput, NotFound
from plugin.settings import Settings
from plugin.shops import audit
from plugin.store import nonces
from plugin.store.models import AdminUser, Shop, utcnow

ROLES = ("owner", "staff")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 hashes anything, but a megabyte "password" is a denial of service
SETUP_MAX_AGE = 24 * 3600  # seconds a printed setup link stays good
INVITE_MAX_AGE = 3 * 24 * 3600  # seconds an owner's invite link stays good (it is handed on by hand)
SETUP_PURPOSE = "admin-setup"

_hasher = PasswordHasher()  # argon2id with the library's current (RFC 9106 low-memory) parameters
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))  # verified when no user matches: same cost either way


@dataclass(frozen=True)
class SetupGrant:
    """A verified setup link: which shop it creates a user for, and its one-time nonce. An
    owner's invite also names the person (`email`), their `role` and who invited them."""

    shop_id: int
    nonce: str
    role: str = "owner"
    email: str | None = None
    invited_by: int | None = None

    @property
    def is_invite(self) -> bool:
        return self.email is not None


def _setup_signer(settings: Settings) -> URLSafeTimedSerializer:
    # the signing key signs; retired ones still verify during their grace period (plugin.keyring)
    return URLSafeTimedSerializer(keyring.signing_keys(settings, utcnow()), salt="couponry.admin.setup")


def setup_token(settings: Settings, shop_id: int) -> str:
    return _setup_signer(settings).dumps({"shop": shop_id, "nonce": secrets.token_urlsafe(16)})


def setup_link(settings: Settings, shop_id: int) -> str:
    return f"{settings.public_url}/admin/setup?token={setup_token(settings, shop_id)}"


def _bad_link(message: str, grant_is_invite: bool | None) -> InvalidInput:
    fix = {
        True: "ask the shop's owner for a new link",
        False: "print a new one (couponry admin setup-token)",
        None: "ask the shop's owner for a new link, or print one (couponry admin setup-token)",
    }[grant_is_invite]
    return InvalidInput(f"{message}: {fix}", reason="bad_link")


def read_setup_token(session: Session, settings: Settings, token: str) -> SetupGrant:
    """The grant a setup or invite token carries, or InvalidInput (`bad_link`) when it is forged,
    expired or spent."""
    try:
        data, signed_at = _setup_signer(settings).loads(token, max_age=INVITE_MAX_AGE, return_timestamp=True)
    except BadSignature:
        raise _bad_link("this setup link is invalid or has expired", None) from None
    if not isinstance(data, dict) or not isinstance(data.get("shop"), int) or not isinstance(data.get("nonce"), str):
        raise InvalidInput("this setup link names no shop", reason="bad_link")
    invite = isinstance(data.get("email"), str)
    role = data.get("role", "owner")
    if role not in ROLES or (invite and not isinstance(data.get("by"), int)):
        raise InvalidInput("this setup link names no role", reason="bad_link")
    if not invite and (utcnow() - signed_at).total_seconds() > SETUP_MAX_AGE:
        raise _bad_link("this setup link has expired", False)
    if nonces.is_spent(session, SETUP_PURPOSE, data["nonce"]):
        raise _bad_link("this setup link was already used", invite)
    if session.get(Shop, data["shop"]) is None:
        raise InvalidInput("this setup link names a shop that does not exist", reason="bad_link")
    return SetupGrant(
        shop_id=data["shop"],
        nonce=data["nonce"],
        role=role,
        email=data.get("email"),
        invited_by=data.get("by") if invite else None,
    )


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
    """Create the user a setup link is for, spending it: a second use is refused (`bad_link`).
    A printed link creates an owner with the email typed; an owner's invite creates the person
    it names (the email typed is ignored), with the role it names.

    Inputs are checked before the link is spent, so a typo does not cost the merchant their link."""
    grant = read_setup_token(session, settings, token)
    email = grant.email if grant.email is not None else _check_email(email)
    _check_password(password, confirm)
    existing = session.exec(
        select(AdminUser).where(col(AdminUser.shop_id) == grant.shop_id, col(AdminUser.email) == email)
    ).first()
    if grant.is_invite and existing is not None and existing.disabled_at is None:
        raise InvalidInput(f"{email} already has a login to this shop: sign in instead", reason="already_a_user")
    expires = INVITE_MAX_AGE if grant.is_invite else SETUP_MAX_AGE
    if not nonces.spend(session, SETUP_PURPOSE, grant.nonce, expires_at=utcnow() + timedelta(seconds=expires)):
        raise InvalidInput("this setup link was already used", reason="bad_link")
    if existing is not None:  # an owner locked out (the link resets their password), or a removed person invited back
        existing.password_hash = _hasher.hash(password)
        existing.role = grant.role
        existing.session_epoch += 1
        existing.disabled_at = None
        user = existing
    else:
        user = AdminUser(shop_id=grant.shop_id, email=email, password_hash=_hasher.hash(password), role=grant.role)
    session.add(user)
    session.flush()
    assert user.id is not None
    if grant.is_invite:
        details = {"role": grant.role, "invited_by": f"admin_user:{grant.invited_by}"}
        action = "admin.invite_accepted"
    else:
        details, action = {}, "admin.owner_set_up"
    audit.record(
        session, shop_id=grant.shop_id, actor=actor_name(user), action=action, subject=f"admin_user:{user.id}", details=details
    )
    return user


# --- an owner manages the shop's people ---------------------------------------------------------


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput("choose owner or staff", reason="invalid_role", details={"field": "role"})
    return role


def invite_link(session: Session, settings: Settings, *, shop_id: int, email: str, role: str, invited_by: int) -> str:
    """A signed one-time link (INVITE_MAX_AGE) that lets this person set their password and
    sign in with this role. Only they can use it: it names their email, and it works once."""
    email, role = _check_email(email), _check_role(role)
    existing = session.exec(select(AdminUser).where(col(AdminUser.shop_id) == shop_id, col(AdminUser.email) == email)).first()
    if existing is not None and existing.disabled_at is None:
        raise InvalidInput(f"{email} already has a login to this shop", reason="already_a_user", details={"field": "email"})
    data = {"shop": shop_id, "nonce": secrets.token_urlsafe(16), "role": role, "email": email, "by": invited_by}
    return f"{settings.public_url}/admin/setup?token={_setup_signer(settings).dumps(data)}"


def list_users(session: Session, *, shop_id: int) -> Sequence[AdminUser]:
    """The shop's people who may sign in, oldest first (a shop has a handful: no paging)."""
    stmt = select(AdminUser).where(col(AdminUser.shop_id) == shop_id, col(AdminUser.disabled_at).is_(None))
    return session.exec(stmt.order_by(col(AdminUser.id)).limit(500)).all()


def _member(session: Session, shop_id: int, user_id: int) -> AdminUser:
    user = session.exec(
        select(AdminUser).where(
            col(AdminUser.id) == user_id, col(AdminUser.shop_id) == shop_id, col(AdminUser.disabled_at).is_(None)
        )
    ).first()
    if user is None:
        raise NotFound(f"person {user_id} does not exist in this shop", reason="user_not_found")
    return user


def _other_owners(session: Session, shop_id: int, user_id: int) -> int:
    """Owners of the shop besides this user, their rows locked: two owners removing each other at
    once can't leave the shop with none (SQLite: writers take turns anyway)."""
    stmt = select(AdminUser.id).where(
        col(AdminUser.shop_id) == shop_id,
        col(AdminUser.role) == "owner",
        col(AdminUser.disabled_at).is_(None),
        col(AdminUser.id) != user_id,
    )
    return len(session.exec(stmt.with_for_update()).all())


def set_role(session: Session, *, shop_id: int, user_id: int, role: str) -> tuple[AdminUser, str]:
    """Make the person owner or staff; the previous role. The shop's last owner stays owner."""
    role = _check_role(role)
    user = _member(session, shop_id, user_id)
    previous = user.role
    if previous == "owner" and role != "owner" and _other_owners(session, shop_id, user_id) == 0:
        raise Conflict("the shop needs an owner: make someone else owner first", reason="last_owner", details={"field": "role"})
    user.role = role
    session.add(user)
    session.flush()
    return user, previous


def remove_user(session: Session, *, shop_id: int, user_id: int, by_user_id: int | None) -> AdminUser:
    """Take the person's login away: their sessions end at once (the epoch moves). Kept as a
    disabled row, so the audit trail's names still resolve; an invite brings them back."""
    user = _member(session, shop_id, user_id)
    if user.id == by_user_id:
        raise Conflict("you can't remove yourself: another owner can", reason="cannot_remove_self")
    if user.role == "owner" and _other_owners(session, shop_id, user_id) == 0:
        raise Conflict("the shop needs an owner: make someone else owner first", reason="last_owner")
    user.disabled_at = utcnow()
    user.session_epoch += 1
    session.add(user)
    session.flush()
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


def _candidates(email: str, shop_domain: str) -> SelectOfScalar[AdminUser]:
    """The enabled users an email (+ the shop as typed, when given) may sign in as."""
    stmt = select(AdminUser).where(col(AdminUser.email) == normalise_email(email), col(AdminUser.disabled_at).is_(None))
    if shop_domain.strip():
        shop_ids = select(Shop.id).where(col(Shop.domain) == shop_domain.strip().lower())
        stmt = stmt.where(col(AdminUser.shop_id).in_(shop_ids))
    return stmt.order_by(col(AdminUser.id)).limit(10)


def sign_in_shops(session: Session, *, email: str, shop_domain: str = "") -> list[int]:
    """The shops a sign-in with this email (+ shop) could open, before any password is checked:
    what the failed-sign-in limits count against (plugin.web.admin.signinlimit)."""
    return [user.shop_id for user in session.exec(_candidates(email, shop_domain)).all()]


def authenticate(session: Session, *, email: str, password: str, shop_domain: str = "") -> AdminUser:
    """The user these credentials name, or InvalidInput (`bad_credentials`, never saying which part
    was wrong). The same email may sign in to several shops: then `shop_domain` picks one."""
    candidates = session.exec(_candidates(email, shop_domain)).all()
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
    user = session.get(AdminUser, user_id)
    actor = actor_name(user) if user is not None else f"user:{user_id}"  # as every other row of theirs names them
    audit.record(session, shop_id=shop_id, actor=actor, action="admin.signed_out", subject=f"admin_user:{user_id}")
