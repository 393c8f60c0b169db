"""`couponry admin`: the merchant admin's standalone logins."""

from __future__ import annotations

import click

from plugin.cli import Context, clear_errors, main, pass_context
from plugin.shops import users
from plugin.shops.shops import get_shop
from plugin.store.units import reading


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
