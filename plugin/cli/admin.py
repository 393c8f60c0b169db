"""`couponry admin`: the merchant admin's standalone logins and the upkeep of what it reads."""

from __future__ import annotations

import json

import click

from plugin.campaigns import figures
from plugin.cli import Context, clear_errors, main, pass_context
from plugin.shops import users
from plugin.shops.shops import get_shop
from plugin.store.units import reading, transaction


@main.group("admin")
def admin_group() -> None:
    """The merchant admin (web pages at /admin)."""


@admin_group.command("setup-token")
@pass_context
def setup_token(ctx: Context) -> None:
    """Print a one-time link that creates an owner login for the shop (--shop, default the local
    one). It works once, for 24 hours; print another if it is lost. With an owner already set up,
    the link resets that email's password (an owner locked out)."""
    with clear_errors(), reading(ctx.engine) as session:
        shop = get_shop(session, ctx.shop_id)
        has_owner = users.has_owner(session, ctx.shop_id)
        domain = shop.domain
    click.echo(users.setup_link(ctx.settings, ctx.shop_id))
    note = "an owner is already set up: this link adds or resets an owner" if has_owner else "open it to create the owner login"
    click.echo(f"shop {domain}: {note}; it works once, within 24 hours", err=True)


@admin_group.command("recount")
@click.option("--all-shops", is_flag=True, help="Every shop, not only the current one.")
@pass_context
def admin_recount(ctx: Context, /, all_shops: bool) -> None:
    """Rebuild the figures' counters from the codes and redemptions; print each one that was off.

    On PostgreSQL writes to codes and redemptions wait until it finishes."""
    with clear_errors(), transaction(ctx.engine) as session:
        report = figures.recount(session, shop_id=None if all_shops else ctx.shop_id)
    changed = [{"key": k, "counter": c, "was": str(was), "now": str(now)} for k, c, was, now in report.changed]
    click.echo(json.dumps({"repaired": len(changed), "changed": changed}))
