"""Finding a shop's campaign or batch (never another shop's: promise 5) and reading a campaign's
code format."""

from __future__ import annotations

from sqlmodel import Session, select

from plugin.errors import NotFound
from plugin.formats import codes
from plugin.store.models import Batch, Campaign


def get_campaign(session: Session, *, shop_id: int, campaign_id: int) -> Campaign:
    """The campaign, only if it belongs to this shop (promise 5)."""
    campaign = session.exec(select(Campaign).where(Campaign.id == campaign_id, Campaign.shop_id == shop_id)).first()
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist in this shop", reason="campaign_not_found")
    return campaign


def campaign_format(campaign: Campaign) -> codes.CodeFormat:
    return codes.CodeFormat.from_dict(campaign.code_format)


def get_batch(session: Session, *, shop_id: int, batch_id: int) -> Batch:
    """The batch, only if it belongs to this shop (promise 5)."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.shop_id != shop_id:
        raise NotFound(f"batch {batch_id} does not exist in this shop", reason="batch_not_found")
    return batch
