"""What a campaign change asks of its shop platform: the sync jobs, queued in the caller's
transaction (the outbox), and the platform discount a campaign's rules make. The jobs run in
`plugin.platforms.sync`; campaigns queue them here so that the platform layer builds on
campaigns, never the reverse."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col

from connectors.base import DiscountSpec
from plugin.campaigns import figures
from plugin.campaigns.lookup import get_campaign
from plugin.errors import Conflict, InvalidInput
from plugin.rules import CampaignRules, FixedDiscount, FreeShippingDiscount, PercentageDiscount
from plugin.store import outbox
from plugin.store.models import Campaign, Code, Shop

PUSH = "sync.push"
DEACTIVATE = "sync.deactivate"
FOLLOW = "sync.follow"  # the platform discount follows the campaign's status and rules
# platforms whose discount can't change type in place: a type change there replaces the discount
REPLACES_ON_TYPE_CHANGE = frozenset({"shopify"})


# --- services (in the caller's transaction) ---------------------------------------------------


class ShopUninstalled(Conflict):
    reason = "shop_uninstalled"


def is_installed(session: Session, shop_id: int) -> bool:
    shop = session.get(Shop, shop_id)
    return shop is not None and shop.uninstalled_at is None


def _require_installed(session: Session, shop_id: int) -> None:
    # Refused here rather than queued: a job for a shop that revoked our access can only die.
    if not is_installed(session, shop_id):
        raise ShopUninstalled("the app is uninstalled from this shop: install it again before syncing codes to its platform")


def enqueue_push(session: Session, *, shop_id: int, campaign_id: int) -> int | None:
    """Queue a push of the campaign's pending codes (one queued push per campaign covers all);
    refuses a campaign the platform can't hold (NotSyncable) or a shop that uninstalled the
    app (ShopUninstalled), before any work."""
    discount_spec(get_campaign(session, shop_id=shop_id, campaign_id=campaign_id))
    _require_installed(session, shop_id)
    return outbox.enqueue(session, PUSH, {"campaign_id": campaign_id}, shop_id, dedupe_key=f"{PUSH}:{campaign_id}")


def resync(session: Session, *, shop_id: int, campaign_id: int, failed_only: bool = True) -> int:
    """Mark the campaign's failed codes (or all its active codes) pending again and queue a push;
    return how many codes will be pushed again."""
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    which = ["failed"] if failed_only else ["failed", "synced"]
    result = session.execute(
        update(Code)
        .where(
            col(Code.shop_id) == shop_id,
            col(Code.campaign_id) == campaign_id,
            col(Code.status) == "active",
            col(Code.sync_status).in_(which),
        )
        .values(sync_status="pending", sync_error=None)
    )
    enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
    return int(result.rowcount)  # type: ignore[attr-defined]


def enqueue_deactivate(session: Session, *, shop_id: int, campaign_id: int) -> int | None:
    """Queue the removal from the platform of the campaign's voided and expired codes."""
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    _require_installed(session, shop_id)
    return outbox.enqueue(session, DEACTIVATE, {"campaign_id": campaign_id}, shop_id, dedupe_key=f"{DEACTIVATE}:{campaign_id}")


def enqueue_follow(session: Session, *, campaign: Campaign) -> int | None:
    """Queue the platform discount's catching up with the campaign's status and rules (pause,
    resume, end, rule edits), in the caller's transaction. The job reads the campaign when it
    runs, so one queued job covers every change made before it starts. Nothing to do before the
    discount exists (the first push creates it from the rules of the day) or once the app is
    uninstalled (nothing of ours reaches that platform any more)."""
    if campaign.platform_discount_id is None or not is_installed(session, campaign.shop_id):
        return None
    assert campaign.id is not None
    return outbox.enqueue(session, FOLLOW, {"campaign_id": campaign.id}, campaign.shop_id, dedupe_key=f"{FOLLOW}:{campaign.id}")


def enqueue_replace(session: Session, *, campaign: Campaign) -> int | None:
    """A rule edit changed the discount's type where the platform can't change it in place: the
    campaign lets go of its discount (a new marker will be drawn), its codes are pending again,
    and one push job deletes the old discount before it creates the new one and moves the codes
    there, so no code is ever live in both."""
    old = campaign.platform_discount_id
    if old is None or not is_installed(session, campaign.shop_id):
        return None
    assert campaign.id is not None
    campaign.platform_discount_id = None
    campaign.platform_discount_marker = None
    session.add(campaign)
    session.execute(
        update(Code)
        .where(
            col(Code.campaign_id) == campaign.id,
            col(Code.status) == "active",
            col(Code.sync_status).in_(["synced", "failed"]),
        )
        .values(sync_status="pending", sync_error=None)
    )
    # no dedupe: this job carries the discount to retire, which a queued plain push does not
    return outbox.enqueue(session, PUSH, {"campaign_id": campaign.id, "retire": old}, campaign.shop_id)


def follow_rule_edit(session: Session, *, campaign: Campaign, before: dict[str, Any]) -> int | None:
    """Queue the platform discount's update in place after a rule edit, or its replacement when
    the edit changed the discount's type (amount off ⇄ free shipping) on a platform that can't
    change a discount's type in place."""
    shop = session.get(Shop, campaign.shop_id)
    changed = before and _discount_family(before) != _discount_family(campaign.rules)
    if changed and shop is not None and shop.platform in REPLACES_ON_TYPE_CHANGE:
        return enqueue_replace(session, campaign=campaign)
    return enqueue_follow(session, campaign=campaign)


def _discount_family(rules: dict[str, Any]) -> str:
    """Percentage and fixed amount are one kind of platform discount; free shipping another."""
    discount = rules.get("discount")
    kind = discount.get("type") if isinstance(discount, dict) else None
    return "free_shipping" if kind == "free_shipping" else "amount"


def sync_counts(session: Session, *, shop_id: int, campaign_id: int) -> dict[str, int]:
    """Codes per sync status, for progress and the admin (from the counters)."""
    return figures.sync_counts(session, shop_id=shop_id, campaign_id=campaign_id)


class NotSyncable(InvalidInput):
    reason = "not_syncable"


def discount_spec(campaign: Campaign) -> DiscountSpec:
    """What the platform can hold of the campaign's rules; Couponry flags the rest at the webhook.

    A campaign whose discount a platform discount can't express (no rules yet, tiers, bundles)
    is refused rather than pushed as something that gives a different discount.
    """
    assert campaign.id is not None
    if not campaign.rules:
        raise NotSyncable("the campaign has no rules yet: give it a discount before syncing its codes")
    rules = CampaignRules.model_validate(campaign.rules)
    d = rules.discount
    kind: Any
    if isinstance(d, PercentageDiscount):
        # platforms hold whole percents; a fraction is truncated (never gives more than the rule)
        kind, value = "percentage", int(d.percent)
    elif isinstance(d, FixedDiscount):
        kind, value = "fixed_amount", d.amount
    elif isinstance(d, FreeShippingDiscount):
        kind, value = "free_shipping", 0
    else:
        raise NotSyncable(
            f"a {d.type} discount can't be held by a platform discount: redeem these codes through the checkout API"
        )
    eligible = rules.basket.eligible
    excluded = rules.basket.excluded
    # only a plain product/collection list maps onto the platforms' entitlements; anything
    # finer (variants, SKUs, exclusions) stays ours to check at the webhook
    simple_items = eligible is not None and not (eligible.variant_ids or eligible.skus) and excluded.is_empty()
    return DiscountSpec(
        campaign_id=campaign.id,
        title=f"Couponry: {campaign.name}"[:255],
        kind=kind,
        value=value,
        currency=rules.currency or campaign.currency,
        starts_at=rules.time.starts_at,
        ends_at=rules.time.ends_at,
        uses_per_code=rules.usage.uses_per_code,
        once_per_customer=rules.usage.uses_per_customer == 1,
        minimum_subtotal=rules.basket.minimum_subtotal,
        minimum_quantity=rules.basket.minimum_quantity,
        product_ids=tuple(eligible.product_ids) if eligible is not None and simple_items else (),
        collection_ids=tuple(eligible.collection_ids) if eligible is not None and simple_items else (),
        combines_with_codes=rules.stacking.with_other_codes,
        combines_with_automatic=rules.stacking.with_automatic_discounts,
    )
