"""Campaigns: create, update, status changes, listing, formats and exposure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, func, select

from plugin.campaigns import figures, platform
from plugin.campaigns.lookup import get_campaign
from plugin.errors import Conflict, InvalidInput
from plugin.formats import codes
from plugin.rules import CampaignRules, Exposure
from plugin.store import eventlog
from plugin.store.models import Campaign, utcnow


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


def parse_rules(data: dict[str, Any] | CampaignRules | None) -> CampaignRules | None:
    if data is None or isinstance(data, CampaignRules):
        return data
    try:
        return CampaignRules.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"invalid rules: {_first_error(exc)}", reason="invalid_rules") from exc


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidInput("a campaign needs a name", reason="invalid_name")
    if len(name) > 200:
        raise InvalidInput("a campaign name is at most 200 characters", reason="invalid_name")
    return name


def create_campaign(
    session: Session,
    *,
    shop_id: int,
    name: str,
    code_format: dict[str, Any] | None = None,
    currency: str = "USD",
    rules: dict[str, Any] | CampaignRules | None = None,
    status: str | None = None,
) -> Campaign:
    """A new campaign. Without rules it starts as a draft: its codes can't be redeemed yet."""
    fmt = parse_format(code_format)
    parsed = parse_rules(rules)
    if status is None:
        status = "active" if parsed is not None else "draft"
    if status not in ("draft", "active", "paused"):
        raise InvalidInput("status must be draft, active or paused", reason="invalid_status")
    if status != "draft" and parsed is None:
        raise InvalidInput("a campaign needs rules (at least a discount) before it can be active", reason="rules_required")
    campaign = Campaign(
        shop_id=shop_id,
        name=_check_name(name),
        code_format=fmt.to_dict(),
        currency=currency.upper(),
        rules=parsed.model_dump(mode="json") if parsed else {},
        status=status,
    )
    session.add(campaign)
    session.flush()
    return campaign


def update_campaign(
    session: Session,
    *,
    shop_id: int,
    campaign_id: int,
    name: str | None = None,
    rules: dict[str, Any] | CampaignRules | None = None,
) -> Campaign:
    campaign = get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    if name is not None:
        campaign.name = _check_name(name)
    parsed = parse_rules(rules)
    before = campaign.rules
    if parsed is not None:
        campaign.rules = parsed.model_dump(mode="json")
    touch(campaign)
    session.add(campaign)
    session.flush()
    if parsed is not None and campaign.rules != before:
        # the platform discount follows the new rules: queued in this transaction
        platform.follow_rule_edit(session, campaign=campaign, before=before)
    return campaign


_TRANSITIONS = {
    "activate": ({"draft", "paused"}, "active"),
    "pause": ({"active"}, "paused"),
    "resume": ({"paused"}, "active"),
    "end": ({"draft", "active", "paused"}, "ended"),
}


def change_status(session: Session, *, shop_id: int, campaign_id: int, action: str) -> Campaign:
    """Move a campaign through draft → active ⇄ paused → ended; other moves are refused."""
    campaign = get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    allowed_from, target = _TRANSITIONS[action]
    if campaign.status == target:
        return campaign
    if campaign.status not in allowed_from:
        raise Conflict(f"a {campaign.status} campaign can't {action}", reason="invalid_transition")
    if target == "active" and not campaign.rules:
        raise Conflict("a campaign needs rules (at least a discount) before it can be active", reason="rules_required")
    campaign.status = target
    touch(campaign)
    session.add(campaign)
    session.flush()
    # the platform's checkout must follow at once (pause, resume, end): queued in this transaction
    platform.enqueue_follow(session, campaign=campaign)
    if target == "paused":
        eventlog.emit(
            session.connection(),
            shop_id=shop_id,
            type="campaign.paused",
            data={"campaign_id": campaign.id, "name": campaign.name},
            now=utcnow(),
        )
    return campaign


def list_campaigns(session: Session, *, shop_id: int, limit: int = 100, offset: int = 0) -> tuple[list[Campaign], int]:
    base = select(Campaign).where(col(Campaign.shop_id) == shop_id)
    total = int(session.exec(select(func.count()).select_from(base.subquery())).one())
    rows = session.exec(base.order_by(col(Campaign.id)).limit(limit).offset(offset)).all()
    return list(rows), total


def campaign_summaries(session: Session, *, shop_id: int) -> list[tuple[int, str, str, int]]:
    """(id, name, status, code count) of every campaign of the shop, in creation order."""
    rows = session.exec(
        select(Campaign.id, Campaign.name, Campaign.status).where(col(Campaign.shop_id) == shop_id).order_by(col(Campaign.id))
    ).all()
    stats = figures.campaign_stats(session, [int(cid or 0) for cid, _, _ in rows])
    return [(int(cid or 0), name, status, sum(r.codes for r in stats[int(cid or 0)])) for cid, name, status in rows]


def campaign_exposure(session: Session, campaign: Campaign, *, now: datetime) -> Exposure | None:
    """The most the campaign can still cost, from its live codes' open uses per batch (read from
    the counters: plugin.campaigns.figures).

    A campaign past its `ends_at` (at `now`) or ended costs nothing more. Live codes are those
    not voided and not past their explicit `expires_at`; a relative expiry (from issue or
    assignment) is not stored on the codes, so codes it has lapsed still count here: the figure
    is an upper bound until they are voided."""
    return figures.campaign_exposure(session, campaign, now=now)


def code_count(session: Session, *, campaign_id: int) -> int:
    return figures.code_count(session, campaign_id=campaign_id)


def touch(campaign: Campaign) -> None:
    campaign.updated_at = utcnow()
