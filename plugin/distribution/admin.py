"""What the admin's Distribution page reads and mints: keyset pages of a campaign's claims
(assigned codes) and pushes (each recipient's status per provider), referral programs, a
partner's keys (never their secrets), and signed links for the merchant to hand out: a
recipient's claim link, a pull URL for an email platform."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from connectors import MESSAGING_CONNECTORS
from plugin.campaigns.lookup import campaign_format, get_campaign
from plugin.distribution import claimlinks, partners
from plugin.distribution import claims as distribution
from plugin.distribution.pushes import check_provider
from plugin.errors import InvalidInput
from plugin.formats import codes
from plugin.rules import recipients
from plugin.shops.apikeys import create_key
from plugin.store import keyset
from plugin.store.keyset import Page
from plugin.store.models import ApiKey, Code, RecipientDelivery, ReferralProgram

PROVIDERS = tuple(sorted(MESSAGING_CONNECTORS))
PUSH_STATUSES = ("queued", "sending", "sent", "accepted", "delivered", "failed")
PULL_DAYS = (1, 400)  # how long a pull URL may work, in days


@dataclass(frozen=True)
class ClaimRow:
    code_id: int
    recipient: str
    display: str  # the code as the recipient sees it
    partner_id: int | None
    status: str
    uses: int
    assigned_at: datetime | None
    expires_at: datetime | None


def list_claims(
    session: Session, *, shop_id: int, campaign_id: int, cursor: str | None = None, limit: int = 50
) -> Page[ClaimRow]:
    """The campaign's codes handed to someone, newest first."""
    campaign = get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    fmt = campaign_format(campaign)
    stmt = select(Code).where(
        col(Code.shop_id) == shop_id, col(Code.campaign_id) == campaign_id, col(Code.recipient).is_not(None)
    )
    limit = keyset.clamp(limit)
    key = keyset.decode(cursor, [int])
    if key is not None:
        stmt = stmt.where(col(Code.id) < key[0])
    rows = session.exec(stmt.order_by(col(Code.id).desc()).limit(limit + 1)).all()
    claimed = [
        ClaimRow(
            code_id=int(c.id or 0),
            recipient=c.recipient or "",
            display=_display(fmt, c.code),
            partner_id=c.partner_id,
            status=c.status,
            uses=c.uses,
            assigned_at=c.assigned_at,
            expires_at=c.expires_at,
        )
        for c in rows
    ]
    return keyset.page(claimed, limit, lambda r: [r.code_id])


def _display(fmt: codes.CodeFormat, stored: str) -> str:
    return codes.display(fmt, stored) if codes.check(fmt, stored) is codes.CodeCheck.OK else stored


def list_pushes(
    session: Session,
    *,
    shop_id: int,
    campaign_id: int,
    provider: str | None = None,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[RecipientDelivery]:
    """Each recipient's push of the campaign (one row per recipient and provider), newest first."""
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    if provider is not None:
        check_provider(provider)
    if status is not None and status not in PUSH_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(PUSH_STATUSES)}", reason="invalid_filter")
    stmt = select(RecipientDelivery).where(
        col(RecipientDelivery.shop_id) == shop_id, col(RecipientDelivery.campaign_id) == campaign_id
    )
    if provider is not None:
        stmt = stmt.where(col(RecipientDelivery.provider) == provider)
    if status is not None:
        stmt = stmt.where(col(RecipientDelivery.status) == status)
    limit = keyset.clamp(limit)
    key = keyset.decode(cursor, [int])
    if key is not None:
        stmt = stmt.where(col(RecipientDelivery.id) < key[0])
    rows = session.exec(stmt.order_by(col(RecipientDelivery.id).desc()).limit(limit + 1)).all()
    return keyset.page(rows, limit, lambda d: [d.id])


def list_programs(session: Session, *, shop_id: int) -> Sequence[ReferralProgram]:
    return session.exec(
        select(ReferralProgram).where(col(ReferralProgram.shop_id) == shop_id).order_by(col(ReferralProgram.campaign_id))
    ).all()


def partner_keys(session: Session, *, shop_id: int, partner_id: int) -> Sequence[ApiKey]:
    """The partner's API keys, newest first (prefixes and dates only: secrets are never kept)."""
    partners.get_partner(session, shop_id=shop_id, partner_id=partner_id)
    return session.exec(
        select(ApiKey).where(col(ApiKey.shop_id) == shop_id, col(ApiKey.partner_id) == partner_id).order_by(col(ApiKey.id).desc())
    ).all()


@dataclass(frozen=True)
class MintedLink:
    url: str
    recipient: str
    code: str  # the display form of the code the link hands out
    expires_at: datetime | None
    key_prefix: str | None = None  # a pull URL's own API key: revoking it kills the URL


def mint_claim_link(
    session: Session, *, public_url: str, secret: str, shop_id: int, campaign_id: int, recipient: str, now: datetime
) -> MintedLink:
    """Claim the recipient's code (the one they hold, else the next free one) and sign their link."""
    try:
        key = recipients.normalise_recipient(recipient)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, reason=exc.reason, details={"field": "recipient"}) from None
    found = distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=key, now=now)
    url = distribution.claim_url(public_url, secret, shop_id=shop_id, claim_=found)
    return MintedLink(url=url, recipient=found.recipient, code=found.display, expires_at=found.expires_at)


def mint_pull_url(
    session: Session,
    *,
    public_url: str,
    secret: str,
    shop_id: int,
    campaign_id: int,
    days: int,
    now: datetime,
    partner_id: int | None = None,
) -> MintedLink:
    """A signed pull URL for an email platform (append the recipient): it works for `days` and
    carries its own API key (scope `distribution`), so revoking that key stops it at once."""
    if not PULL_DAYS[0] <= days <= PULL_DAYS[1]:
        raise InvalidInput(f"a pull URL works for {PULL_DAYS[0]} to {PULL_DAYS[1]} days", reason="invalid_days",
                           details={"field": "days"})  # fmt: skip
    distribution.pool_status(session, shop_id=shop_id, campaign_id=campaign_id)
    if partner_id is not None:
        partners.get_partner(session, shop_id=shop_id, partner_id=partner_id)
    key, _secret = create_key(
        session, shop_id=shop_id, name=f"pull URL, campaign {campaign_id}", scopes=["distribution"], partner_id=partner_id
    )
    expires_at = now.replace(microsecond=0) + timedelta(days=days)
    grant = claimlinks.PullGrant(shop_id, campaign_id, key.prefix, expires_at, partner_id)
    url = f"{public_url}/pull/{claimlinks.pull_token(secret, grant)}?recipient="
    return MintedLink(url=url, recipient="", code="", expires_at=expires_at, key_prefix=key.prefix)
