"""What the admin's campaign pages show: one campaign with its figures, its platform outcome
(`sync.platform_status`) and how guessable its codes are; and the live preview of a code format
(sample codes, entropy, the chance a guesser finds a live code at our limits)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from plugin.campaigns import figures, issuing
from plugin.campaigns.lookup import campaign_format, get_campaign
from plugin.checkout import guessing
from plugin.formats import codes
from plugin.platforms import sync
from plugin.store.models import Campaign

SAMPLES = 5


@dataclass(frozen=True)
class FormatPreview:
    format: codes.CodeFormat
    samples: list[str]  # display forms, freshly drawn (never stored)
    entropy_bits: float
    live_codes: int  # the format's live codes in the shop plus the ones planned
    odds: guessing.Odds
    capacity_problem: str | None  # why that many codes would be unsafe, or None


@dataclass(frozen=True)
class CampaignView:
    campaign: Campaign
    figures: figures.CampaignFigures
    platform: dict[str, Any]
    preview: FormatPreview


def format_preview(
    session: Session, *, shop_id: int, fmt: codes.CodeFormat, planned: int, budgets: guessing.Budgets, now: datetime
) -> FormatPreview:
    """Samples of `fmt` and its odds once `planned` more codes join the shop's live codes of that
    format (at checkout any of them answers a guess, so together they fill the space)."""
    existing = issuing.live_codes_of_format(session, shop_id=shop_id, fmt=fmt, now=now)
    live = existing + max(planned, 0)
    return FormatPreview(
        format=fmt,
        samples=[codes.display(fmt, c) for c in codes.generate(fmt, SAMPLES)],
        entropy_bits=codes.entropy_bits(fmt),
        live_codes=live,
        odds=guessing.odds(fmt, live, budgets),
        capacity_problem=codes.capacity_error(fmt, existing, max(planned, 0)),
    )


def campaign_view(session: Session, *, shop_id: int, campaign_id: int, budgets: guessing.Budgets, now: datetime) -> CampaignView:
    """The shop's campaign (NotFound for another shop's id) and all its page shows."""
    campaign = get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    view = CampaignView(
        campaign=campaign,
        figures=figures.campaign_figures(session, campaign, now=now),
        platform=sync.platform_status(session, campaign),
        preview=format_preview(session, shop_id=shop_id, fmt=campaign_format(campaign), planned=0, budgets=budgets, now=now),
    )
    session.expunge(campaign)
    return view
