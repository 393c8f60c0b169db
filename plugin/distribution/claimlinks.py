"""Signed links (itsdangerous), one signer per purpose.

claim link   one recipient (or one partner slot) of one campaign, with an expiry: opening it
             reveals that recipient's code on a small page. The recipient is inside the signed
             payload, so a link can't be forged or turned into another recipient's link.
pull token   a campaign (optionally one partner's block) for the signed pull URL that email
             platforms call per recipient: `/pull/<token>?recipient=...`. It names the API key
             that minted it (by its public prefix) and lives only while that key does: revoking
             the key revokes every pull URL it minted.

Both are deterministic (no signing timestamp): the same assignment always yields the same link,
which is what a URL-keyed cache (Braze) and a printed mailing need. Expiry is an explicit
`exp` in the signed payload instead of itsdangerous' timestamp, and every link must carry one
no further out than MAX_LINK_AGE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from plugin.errors import PluginError

MAX_LINK_AGE = timedelta(days=400)
DEFAULT_LINK_AGE = timedelta(days=90)


class BadLink(PluginError):
    status = 403
    reason = "bad_link"


class ExpiredLink(PluginError):
    status = 410
    reason = "link_expired"


@dataclass(frozen=True)
class ClaimLink:
    shop_id: int
    campaign_id: int
    recipient: str
    expires_at: datetime
    partner_id: int | None = None


class RevokedLink(PluginError):
    status = 403
    reason = "link_revoked"


@dataclass(frozen=True)
class PullGrant:
    shop_id: int
    campaign_id: int
    key_prefix: str  # the API key that minted it
    expires_at: datetime
    partner_id: int | None = None


# Signing takes the signing key; reading takes the keys that verify now (plugin.keyring), in
# itsdangerous' order (oldest first, the signing key last), so a retired key's links keep
# working through its grace period.
Secrets = str | Sequence[str]


def _serializer(secret: Secrets, purpose: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret if isinstance(secret, str) else list(secret), salt=f"couponry.{purpose}")


def claim_token(secret: str, link: ClaimLink) -> str:
    payload: dict[str, Any] = {
        "s": link.shop_id,
        "c": link.campaign_id,
        "r": link.recipient,
        "e": int(link.expires_at.timestamp()),
    }
    if link.partner_id is not None:
        payload["p"] = link.partner_id
    return str(_serializer(secret, "claim").dumps(payload))


def read_claim_token(secret: Secrets, token: str, *, now: datetime) -> ClaimLink:
    """The link's content; BadLink when forged or tampered with, ExpiredLink when too old."""
    try:
        data = _serializer(secret, "claim").loads(token)
        link = ClaimLink(
            shop_id=int(data["s"]),
            campaign_id=int(data["c"]),
            recipient=str(data["r"]),
            expires_at=datetime.fromtimestamp(int(data["e"]), tz=now.tzinfo),
            partner_id=int(data["p"]) if data.get("p") is not None else None,
        )
    except (BadSignature, KeyError, TypeError, ValueError):
        raise BadLink("this link is not valid") from None
    if now >= link.expires_at or link.expires_at - now > MAX_LINK_AGE:
        raise ExpiredLink("this link has expired")
    return link


def pull_token(secret: str, grant: PullGrant) -> str:
    payload: dict[str, Any] = {
        "s": grant.shop_id,
        "c": grant.campaign_id,
        "k": grant.key_prefix,
        "e": int(grant.expires_at.timestamp()),
    }
    if grant.partner_id is not None:
        payload["p"] = grant.partner_id
    return str(_serializer(secret, "pull").dumps(payload))


def read_pull_token(secret: Secrets, token: str, *, now: datetime) -> PullGrant:
    """The grant; BadLink when forged, tampered with or minted before pull URLs carried a key
    and an expiry, ExpiredLink when too old. Whether its key still lives is the caller's check."""
    try:
        data = _serializer(secret, "pull").loads(token)
        grant = PullGrant(
            shop_id=int(data["s"]),
            campaign_id=int(data["c"]),
            key_prefix=str(data["k"]),
            expires_at=datetime.fromtimestamp(int(data["e"]), tz=now.tzinfo),
            partner_id=int(data["p"]) if data.get("p") is not None else None,
        )
    except (BadSignature, KeyError, TypeError, ValueError):
        raise BadLink("this pull URL is not valid") from None
    if now >= grant.expires_at or grant.expires_at - now > MAX_LINK_AGE:
        raise ExpiredLink("this pull URL has expired; create a new one")
    return grant
