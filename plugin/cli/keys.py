"""`couponry keys ...`: per-shop API keys."""

from __future__ import annotations

import click

from plugin.cli import Context, clear_errors, main, pass_context
from plugin.shops.apikeys import SCOPES, create_key, revoke_key
from plugin.store.units import transaction


@main.group()
def keys() -> None:
    """Create and revoke API keys."""


@keys.command("create")
@click.option("--name", default="", help="What the key is for.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(sorted(SCOPES)),
    default=("checkout",),
    show_default=True,
    help="Repeat for several scopes.",
)
@pass_context
def keys_create(ctx: Context, /, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key and print it: it is shown only this once."""
    with clear_errors(), transaction(ctx.engine) as session:
        _key, secret = create_key(session, shop_id=ctx.shop_id, name=name, scopes=scopes)
    click.echo(secret)


@keys.command("revoke")
@click.argument("prefix")
@pass_context
def keys_revoke(ctx: Context, /, prefix: str) -> None:
    """Revoke the key whose public prefix (the part after cpy_) is PREFIX."""
    with transaction(ctx.engine) as session:
        if not revoke_key(session, shop_id=ctx.shop_id, prefix=prefix):
            raise click.ClickException(f"no live key with prefix {prefix!r} in this shop")
    click.echo("revoked")
