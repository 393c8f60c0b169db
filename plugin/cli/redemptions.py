"""`couponry redemptions ...`: review recorded redemptions and give one back."""

from __future__ import annotations

import click

from plugin.checkout.redemptions import REDEMPTION_STATUSES, list_redemptions, rollback_redemption
from plugin.cli import Context, clear_errors, main, pass_context
from plugin.store.models import utcnow
from plugin.store.units import transaction


@main.group()
def redemptions() -> None:
    """Review redemptions (from the API and from order webhooks)."""


@redemptions.command("list")
@click.option("--campaign", "campaign_id", type=int, default=None, help="Only this campaign's.")
@click.option("--flagged/--not-flagged", default=None, help="Only those that broke a rule (or only those that didn't).")
@click.option("--status", type=click.Choice(REDEMPTION_STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@pass_context
def redemptions_list(ctx: Context, /, campaign_id: int | None, flagged: bool | None, status: str | None, limit: int) -> None:
    """Newest first: id, order, code, discount, status, source, flag."""
    with clear_errors(), transaction(ctx.engine) as session:
        page = list_redemptions(session, ctx.shop_id, campaign_id=campaign_id, flagged=flagged, status=status, limit=limit)
        for r in page.items:
            click.echo(
                f"{r.id}\torder {r.order_id}\t{r.code}\t{r.amount} {r.currency}\t{r.status}\t{r.source}\t{r.flagged_reason or ''}"
            )


@redemptions.command("rollback")
@click.argument("redemption_id", type=int)
@click.option("--reason", default="", help="Why, for the audit trail.")
@pass_context
def redemptions_rollback(ctx: Context, /, redemption_id: int, reason: str) -> None:
    """Give a redemption back, following its campaign's on_cancel policy (idempotent)."""
    with clear_errors(), transaction(ctx.engine) as session:
        redemption = rollback_redemption(
            session, shop_id=ctx.shop_id, redemption_id=redemption_id, now=utcnow(), actor="cli", reason=reason
        )
        click.echo(f"{redemption.id}\t{redemption.status}")
