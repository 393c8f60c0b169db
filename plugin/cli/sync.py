"""`couponry codes sync|deactivate|sync-status`: push codes to the shop's platform."""

from __future__ import annotations

import json

import click

from plugin.cli import Context, clear_errors, pass_context
from plugin.cli.codes import codes_group
from plugin.platforms import sync
from plugin.store.units import transaction


@codes_group.command("sync")
@click.option("--campaign", "campaign_id", type=int, required=True, help="Campaign id.")
@click.option("--retry-failed", is_flag=True, help="Push the codes that failed before again.")
@click.option("--all", "everything", is_flag=True, help="Push every active code again (a full re-sync).")
@pass_context
def codes_sync(ctx: Context, campaign_id: int, retry_failed: bool, everything: bool) -> None:
    """Queue a push of the campaign's pending codes to the shop's platform (the worker runs it)."""
    with clear_errors(), transaction(ctx.engine) as session:
        again = 0
        if retry_failed or everything:
            again = sync.resync(session, shop_id=ctx.shop_id, campaign_id=campaign_id, failed_only=not everything)
        else:
            sync.enqueue_push(session, shop_id=ctx.shop_id, campaign_id=campaign_id)
        counts = sync.sync_counts(session, shop_id=ctx.shop_id, campaign_id=campaign_id)
    click.echo(json.dumps({"queued": True, "requeued_codes": again, "codes": counts}))


@codes_group.command("deactivate")
@click.option("--campaign", "campaign_id", type=int, required=True, help="Campaign id.")
@pass_context
def codes_deactivate(ctx: Context, campaign_id: int) -> None:
    """Queue the removal of the campaign's voided and expired codes from the platform."""
    with clear_errors(), transaction(ctx.engine) as session:
        sync.enqueue_deactivate(session, shop_id=ctx.shop_id, campaign_id=campaign_id)
    click.echo(json.dumps({"queued": True}))


@codes_group.command("sync-status")
@click.option("--campaign", "campaign_id", type=int, required=True, help="Campaign id.")
@pass_context
def codes_sync_status(ctx: Context, campaign_id: int) -> None:
    """Codes per sync status (pending, synced, failed, deactivated)."""
    with clear_errors(), transaction(ctx.engine) as session:
        counts = sync.sync_counts(session, shop_id=ctx.shop_id, campaign_id=campaign_id)
    click.echo(json.dumps(counts, sort_keys=True))
