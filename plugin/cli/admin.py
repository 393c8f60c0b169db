"""`couponry admin ...`: upkeep of what the merchant admin reads."""

from __future__ import annotations

import json

import click

from plugin.campaigns import figures
from plugin.cli import Context, clear_errors, main, pass_context
from plugin.store.units import transaction


@main.group()
def admin() -> None:
    """Upkeep of the admin's figures."""


@admin.command("recount")
@click.option("--all-shops", is_flag=True, help="Every shop, not only the current one.")
@pass_context
def admin_recount(ctx: Context, /, all_shops: bool) -> None:
    """Rebuild the figures' counters from the codes and redemptions; print each one that was off.

    On PostgreSQL writes to codes and redemptions wait until it finishes."""
    with clear_errors(), transaction(ctx.engine) as session:
        report = figures.recount(session, shop_id=None if all_shops else ctx.shop_id)
    changed = [{"key": k, "counter": c, "was": str(was), "now": str(now)} for k, c, was, now in report.changed]
    click.echo(json.dumps({"repaired": len(changed), "changed": changed}))
