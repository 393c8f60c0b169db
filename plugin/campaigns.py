"""Campaigns: create, read, list, and the code format each one issues."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, func, select

from plugin import codes
from plugin.errors import InvalidInput, NotFound
from plugin.models import Campaign, Code, utcnow


def parse_format(data: dict[str, Any] | None) -> codes.CodeFormat:
    """A code format from merchant input, with a clear message for each mistake."""
    try:
        return codes.CodeFormat.from_dict(data or {})
    except (ValidationError, ValueError, TypeError) as exc:
        raise InvalidInput(f"invalid code format: {_first_error(exc)}", reason="invalid_format") from exc


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        return f"{where}: {err['msg']}" if where else str(err["msg"])
    return str(exc)


def create_campaign(
    session: Session, *, shop_id: int, name: str, code_format: dict[str, Any] | None = None, currency: str = "USD"
) -> Campaign:
    name = name.strip()
    if not name:
        raise InvalidInput("a campaign needs a name", reason="invalid_name")
    if len(name) > 200:
        raise InvalidInput("a campaign name is at most 200 characters", reason="invalid_name")
    fmt = parse_format(code_format)
    campaign = Campaign(shop_id=shop_id, name=name, code_format=fmt.to_dict(), currency=currency.upper())
    session.add(campaign)
    session.flush()
    return campaign


def get_campaign(session: Session, *, shop_id: int, campaign_id: int) -> Campaign:
    """The campaign, only if it belongs to this shop (promise 5)."""
    campaign = session.exec(select(Campaign).where(Campaign.id == campaign_id, Campaign.shop_id == shop_id)).first()
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist in this shop", reason="campaign_not_found")
    return campaign


def campaign_format(campaign: Campaign) -> codes.CodeFormat:
    return codes.CodeFormat.from_dict(campaign.code_format)


def code_count(session: Session, *, campaign_id: int) -> int:
    stmt = select(func.count()).select_from(Code).where(col(Code.campaign_id) == campaign_id)
    return int(session.exec(stmt).one())


def touch(campaign: Campaign) -> None:
    campaign.updated_at = utcnow()
