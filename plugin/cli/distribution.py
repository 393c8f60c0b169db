"""`couponry distribution ...`, `couponry partners ...` and `couponry referrals ...`."""

from __future__ import annotations

import csv
import sys
from datetime import timedelta
from typing import IO

import click
from sqlmodel import Session

from connectors.base import ShippingAddress
from plugin import keyring
from plugin.cli import Context, clear_errors, main, pass_context
from plugin.distribution import admin, klaviyopools, partners, poolhealth, pushes, referrals
from plugin.distribution import claims as distribution
from plugin.orders import addresses
from plugin.rules import recipients
from plugin.shops import tokens
from plugin.store.models import utcnow
from plugin.store.units import transaction


@main.group("distribution")
def distribution_group() -> None:
    """Give recipients their codes: claims, pull URLs, exports, pushes, pool health."""


def _recipient(value: str) -> str:
    with clear_errors():
        return recipients.normalise_recipient(value)


@distribution_group.command("claim")
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.argument("recipient")
@pass_context
def claim_cmd(ctx: Context, /, campaign_id: int, recipient: str) -> None:
    """Give RECIPIENT (an email, +phone or id:customer) their code; the same one every time."""
    key = _recipient(recipient)
    with clear_errors():
        found = distribution.claim_or_alert(ctx.engine, shop_id=ctx.shop_id, campaign_id=campaign_id, recipient=key)
    settings = ctx.settings
    click.echo(f"{found.recipient}\t{found.display}\t{found.expires_at.isoformat() if found.expires_at else '-'}")
    click.echo(distribution.claim_url(settings.public_url, keyring.signing_key(settings), shop_id=ctx.shop_id, claim_=found))


@distribution_group.command("pull-url")
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.option("--partner", "partner_id", type=int, default=None, help="Draw from this partner's block.")
@click.option("--days", type=click.IntRange(1, 400), default=90, show_default=True, help="How long the URL works.")
@pass_context
def pull_url(ctx: Context, /, campaign_id: int, partner_id: int | None, days: int) -> None:
    """Print a signed pull URL for email platforms (append ?recipient=...).

    Each URL gets its own API key (scope `distribution`): `couponry keys revoke PREFIX` revokes it."""
    settings = ctx.settings
    with clear_errors(), transaction(ctx.engine) as session:
        minted = admin.mint_pull_url(
            session, public_url=settings.public_url, secret=keyring.signing_key(settings), shop_id=ctx.shop_id,
            campaign_id=campaign_id, days=days, now=utcnow(), partner_id=partner_id,
        )  # fmt: skip
    assert minted.expires_at is not None
    click.echo(minted.url)
    click.echo(f"expires {minted.expires_at.isoformat()}; revoke with: couponry keys revoke {minted.key_prefix}", err=True)


@distribution_group.command("pool")
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.option("--partner", "partner_id", type=int, default=None)
@pass_context
def pool(ctx: Context, /, campaign_id: int, partner_id: int | None) -> None:
    """Free, assigned and total codes of the pool."""
    with clear_errors(), Session(ctx.engine) as session:
        status = distribution.pool_status(session, shop_id=ctx.shop_id, campaign_id=campaign_id, partner_id=partner_id)
    click.echo(f"total {status.total}  assigned {status.assigned}  free {status.free}")


@distribution_group.command("policy")
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.option("--alert-below", type=int, default=poolhealth.DEFAULT_ALERT_BELOW, show_default=True)
@click.option("--topup-below", type=int, default=None, help="Generate more codes when fewer are free.")
@click.option("--topup-count", type=int, default=0, help="How many codes each top-up generates.")
@pass_context
def policy(ctx: Context, /, campaign_id: int, alert_below: int, topup_below: int | None, topup_count: int) -> None:
    """Set the pool's low-stock alert and automatic top-up."""
    with clear_errors(), transaction(ctx.engine) as session:
        poolhealth.set_policy(
            session, shop_id=ctx.shop_id, campaign_id=campaign_id, alert_below=alert_below, topup_below=topup_below,
            topup_count=topup_count,
        )  # fmt: skip
    click.echo("policy saved")


@distribution_group.command("export")
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.option("--output", "-o", type=click.File("w"), default="-", help="File (default stdout).")
@pass_context
def export(ctx: Context, /, campaign_id: int, output: IO[str]) -> None:
    """Assignments as CSV: recipient, code, claim link, expiry (for direct mail and print)."""
    settings = ctx.settings
    with clear_errors():
        for chunk in distribution.export_assignments(
            ctx.engine,
            shop_id=ctx.shop_id,
            campaign_id=campaign_id,
            public_url=settings.public_url,
            secret=keyring.signing_key(settings),
        ):
            output.write(chunk)


@distribution_group.command("push")
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.option("--provider", required=True, help="klaviyo, mailchimp, braze, twilio or sendgrid.")
@pass_context
def push(ctx: Context, /, campaign_id: int, provider: str) -> None:
    """Queue the campaign's assigned codes for the provider (the worker sends them)."""
    with clear_errors(), transaction(ctx.engine) as session:
        queued = pushes.enqueue_push(session, shop_id=ctx.shop_id, campaign_id=campaign_id, provider=provider.lower())
    click.echo(f"{queued} recipient(s) queued for {provider.lower()}")


@distribution_group.command("deliveries")
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.option("--status", default=None, type=click.Choice(["queued", "sending", "sent", "accepted", "delivered", "failed"]))
@pass_context
def deliveries(ctx: Context, /, campaign_id: int, status: str | None) -> None:
    """Per-recipient push status."""
    with clear_errors(), Session(ctx.engine) as session:
        rows = pushes.list_deliveries(session, shop_id=ctx.shop_id, campaign_id=campaign_id, status=status, limit=10_000)
    for d in rows:
        click.echo(f"{d.recipient}\t{d.provider}\t{d.status}\t{d.provider_id or ''}\t{d.error or ''}")
    for provider, counts in pushes.delivery_counts(ctx.engine, shop_id=ctx.shop_id, campaign_id=campaign_id).items():
        click.echo(f"# {provider}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


@distribution_group.command("alerts")
@pass_context
def alerts(ctx: Context, /) -> None:
    """Open and resolved pool alerts, newest first."""
    with Session(ctx.engine) as session:
        rows = poolhealth.list_alerts(session, shop_id=ctx.shop_id)
    for a in rows:
        state = "resolved" if a.resolved_at else "open"
        click.echo(f"{a.created_at.isoformat()}\t{a.kind}\t{state}\tx{a.count}\t{a.message}")


# --- partners -------------------------------------------------------------------------------


@main.group("partners")
def partners_group() -> None:
    """Partners with their own blocks of codes and API keys."""


@partners_group.command("create")
@click.argument("name")
@pass_context
def partners_create(ctx: Context, /, name: str) -> None:
    with clear_errors(), transaction(ctx.engine) as session:
        partner = partners.create_partner(session, shop_id=ctx.shop_id, name=name)
    click.echo(str(partner.id))


@partners_group.command("list")
@pass_context
def partners_list(ctx: Context, /) -> None:
    with Session(ctx.engine) as session:
        for p in partners.list_partners(session, shop_id=ctx.shop_id):
            click.echo(f"{p.id}\t{p.name}")


@partners_group.command("key")
@click.argument("partner_id", type=int)
@pass_context
def partners_key(ctx: Context, /, partner_id: int) -> None:
    """Create an API key scoped to the partner's codes; shown only this once."""
    with clear_errors(), transaction(ctx.engine) as session:
        _key, secret = partners.create_partner_key(session, shop_id=ctx.shop_id, partner_id=partner_id)
    click.echo(secret)


@partners_group.command("allocate")
@click.argument("partner_id", type=int)
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.option("--count", type=int, required=True)
@pass_context
def partners_allocate(ctx: Context, /, partner_id: int, campaign_id: int, count: int) -> None:
    """Move COUNT free codes of the campaign into the partner's block."""
    with clear_errors(), transaction(ctx.engine) as session:
        moved = partners.allocate(session, shop_id=ctx.shop_id, campaign_id=campaign_id, partner_id=partner_id, count=count)
    click.echo(f"{moved} code(s) allocated")


@partners_group.command("links")
@click.argument("partner_id", type=int)
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.option("--slots", type=int, required=True, help="How many numbered links (slot 1..N).")
@click.option("--days", type=int, default=30, show_default=True, help="How long the links work.")
@pass_context
def partners_links(ctx: Context, /, partner_id: int, campaign_id: int, slots: int, days: int) -> None:
    """Signed claim links for a partner's slots, as CSV: whoever opens slot n gets its code."""
    if not 1 <= slots <= 1_000_000 or not 1 <= days <= 400:
        raise click.ClickException("--slots is 1 to 1,000,000 and --days 1 to 400")
    with clear_errors(), Session(ctx.engine) as session:
        partners.get_partner(session, shop_id=ctx.shop_id, partner_id=partner_id)
        distribution.pool_status(session, shop_id=ctx.shop_id, campaign_id=campaign_id, partner_id=partner_id)
    writer = csv.writer(sys.stdout)
    writer.writerow(("slot", "link"))
    expires = utcnow() + timedelta(days=days)
    settings = ctx.settings
    for recipient, link in distribution.slot_links(
        settings.public_url, keyring.signing_key(settings), shop_id=ctx.shop_id, campaign_id=campaign_id, partner_id=partner_id,
        slots=range(1, slots + 1), expires_at=expires,
    ):  # fmt: skip
        writer.writerow((recipient, link))


# --- referrals ------------------------------------------------------------------------------


@main.group("referrals")
def referrals_group() -> None:
    """Referral programs: shareable codes, friends' discounts, referrers' rewards."""


@referrals_group.command("create")
@click.option("--campaign", "campaign_id", type=int, required=True, help="The campaign of shareable referral codes.")
@click.option("--reward-campaign", "reward_campaign_id", type=int, required=True)
@click.option("--provider", default=None, help="Push rewards to referrers through this provider.")
@pass_context
def referrals_create(ctx: Context, /, campaign_id: int, reward_campaign_id: int, provider: str | None) -> None:
    with clear_errors(), transaction(ctx.engine) as session:
        referrals.create_program(
            session, shop_id=ctx.shop_id, campaign_id=campaign_id, reward_campaign_id=reward_campaign_id, provider=provider
        )
    click.echo("referral program saved")


@referrals_group.command("code")
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.option("--address1", default=None, help="The referrer's street address: friends' orders shipped to it are refused.")
@click.option("--address2", default="", help="Its second line (apartment, suite).")
@click.option("--postcode", default=None, help="Its postal or ZIP code.")
@click.option("--country", default=None, help="Its ISO 3166-1 alpha-2 country code, e.g. GB.")
@click.argument("referrer")
@pass_context
def referrals_code(
    ctx: Context,
    /,
    campaign_id: int,
    referrer: str,
    address1: str | None,
    address2: str,
    postcode: str | None,
    country: str | None,
) -> None:
    """The referrer's own shareable code (the same on every call); only a keyed fingerprint of
    the address is kept."""
    key = _recipient(referrer)
    address_key = None
    if address1 or postcode or country:
        address = ShippingAddress(line1=address1 or "", line2=address2, postcode=postcode or "", country=country or "")
        address_key = addresses.fingerprint(tokens.address_key(ctx.settings), address)
        if address_key is None:
            raise click.UsageError("an address needs --address1, --postcode and a two-letter --country")
    with clear_errors(), transaction(ctx.engine) as session:
        found = referrals.referral_code(
            session, shop_id=ctx.shop_id, campaign_id=campaign_id, referrer=key, now=utcnow(), address_key=address_key
        )
    click.echo(found.display)


@referrals_group.command("list")
@click.option("--campaign", "campaign_id", type=int, required=True)
@pass_context
def referrals_list(ctx: Context, /, campaign_id: int) -> None:
    with Session(ctx.engine) as session:
        for r, code in referrals.list_referrals(session, shop_id=ctx.shop_id, campaign_id=campaign_id):
            click.echo(f"{r.created_at.isoformat()}\t{r.referrer}\t{r.friend}\torder {r.order_id}\treward {code or '-'}")


# --- Klaviyo's own coupon pools -----------------------------------------------------------------


@main.group("klaviyo-pool")
def klaviyo_pool_group() -> None:
    """Codes handed to a Klaviyo coupon: Klaviyo assigns them at send time (never bound to anyone)."""


def _print_counts(ctx: Context, pool_id: int) -> None:
    with Session(ctx.engine) as session:
        pool = klaviyopools.get_pool(session, shop_id=ctx.shop_id, pool_id=pool_id)
        counts = klaviyopools.upload_counts(session, shop_id=ctx.shop_id, pool_id=pool_id)
    click.echo(
        f"pool {pool.id}\tcampaign {pool.campaign_id}\tcoupon {pool.coupon_id}\t"
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    if pool.checked_at is not None:
        click.echo(f"# Klaviyo had {pool.unassigned} unassigned code(s) at {pool.checked_at.isoformat()}")


@klaviyo_pool_group.command("create")
@click.option("--campaign", "campaign_id", type=int, required=True)
@click.option("--coupon", "coupon_id", required=True, help="The Klaviyo coupon id (created if missing).")
@click.option("--description", default="", help="The coupon's description at Klaviyo.")
@click.option("--count", type=click.IntRange(0, klaviyopools.MAX_ADD), default=0, help="Free codes to hand over now.")
@click.option("--batch", "batch_id", type=int, default=None, help="Only this batch's codes.")
@pass_context
def klaviyo_pool_create(
    ctx: Context, /, campaign_id: int, coupon_id: str, description: str, count: int, batch_id: int | None
) -> None:
    """Hand COUNT free codes of the campaign to a Klaviyo coupon (the worker uploads them)."""
    with clear_errors(), transaction(ctx.engine) as session:
        pool = klaviyopools.create_pool(
            session, shop_id=ctx.shop_id, campaign_id=campaign_id, coupon_id=coupon_id, description=description
        )
        assert pool.id is not None
        pool_id = pool.id
        added = (
            klaviyopools.add_codes(session, shop_id=ctx.shop_id, pool_id=pool_id, count=count, batch_id=batch_id) if count else 0
        )
    click.echo(f"{added} code(s) queued for Klaviyo coupon {coupon_id}; templates use {{% coupon_code '{coupon_id}' %}}")
    _print_counts(ctx, pool_id)


@klaviyo_pool_group.command("add")
@click.argument("pool_id", type=int)
@click.option("--count", type=click.IntRange(1, klaviyopools.MAX_ADD), required=True)
@click.option("--batch", "batch_id", type=int, default=None, help="Only this batch's codes.")
@pass_context
def klaviyo_pool_add(ctx: Context, /, pool_id: int, count: int, batch_id: int | None) -> None:
    """Hand COUNT more free codes of the pool's campaign to it."""
    with clear_errors(), transaction(ctx.engine) as session:
        added = klaviyopools.add_codes(session, shop_id=ctx.shop_id, pool_id=pool_id, count=count, batch_id=batch_id)
    click.echo(f"{added} code(s) queued")


@klaviyo_pool_group.command("status")
@click.argument("pool_id", type=int, required=False)
@pass_context
def klaviyo_pool_status(ctx: Context, /, pool_id: int | None) -> None:
    """Codes per upload status (queued, sending, submitted, uploaded, failed), of one pool or all."""
    with clear_errors():
        if pool_id is not None:
            _print_counts(ctx, pool_id)
            return
        with Session(ctx.engine) as session:
            ids = [p.id for p in klaviyopools.list_pools(session, shop_id=ctx.shop_id) if p.id is not None]
        for found in ids:
            _print_counts(ctx, found)


@klaviyo_pool_group.command("codes")
@click.argument("pool_id", type=int)
@click.option("--status", type=click.Choice(klaviyopools.STATUSES), default=None)
@pass_context
def klaviyo_pool_codes(ctx: Context, /, pool_id: int, status: str | None) -> None:
    """Each code's upload status, with Klaviyo's job and error."""
    with clear_errors(), Session(ctx.engine) as session:
        rows = klaviyopools.list_uploads(session, shop_id=ctx.shop_id, pool_id=pool_id, status=status, limit=100_000)
    for r in rows:
        click.echo(f"{r.code}\t{r.status}\t{r.job_id or ''}\t{r.error or ''}")


@klaviyo_pool_group.command("retry")
@click.argument("pool_id", type=int)
@pass_context
def klaviyo_pool_retry(ctx: Context, /, pool_id: int) -> None:
    """Upload the pool's failed codes again."""
    with clear_errors(), transaction(ctx.engine) as session:
        requeued = klaviyopools.retry_failed(session, shop_id=ctx.shop_id, pool_id=pool_id)
    click.echo(f"{requeued} code(s) queued again")


@klaviyo_pool_group.command("policy")
@click.argument("pool_id", type=int)
@click.option("--alert-below", type=int, default=poolhealth.DEFAULT_ALERT_BELOW, show_default=True)
@click.option("--topup-below", type=int, default=None, help="Hand over more codes when Klaviyo has fewer unassigned.")
@click.option("--topup-count", type=int, default=0, help="How many codes each top-up hands over.")
@pass_context
def klaviyo_pool_policy(ctx: Context, /, pool_id: int, alert_below: int, topup_below: int | None, topup_count: int) -> None:
    """Alert (and top up) when Klaviyo's unassigned codes of the pool run low."""
    with clear_errors(), transaction(ctx.engine) as session:
        klaviyopools.set_policy(
            session, shop_id=ctx.shop_id, pool_id=pool_id, alert_below=alert_below, topup_below=topup_below,
            topup_count=topup_count,
        )  # fmt: skip
    click.echo("policy saved")
