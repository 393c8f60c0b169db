"""`couponry keys ...`: per-shop API keys, and the app's own keys (generate, rotate the token key)."""

from __future__ import annotations

import secrets

import click

from plugin.cli import Context, clear_errors, main, pass_context
from plugin.shops import tokens
from plugin.shops.apikeys import SCOPES, create_key, revoke_key
from plugin.store.units import transaction


@main.group()
def keys() -> None:
    """Create and revoke API keys; generate and rotate the app's own keys."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new random key for COUPONRY_SECRET_KEY, COUPONRY_TOKEN_KEY or COUPONRY_SIGNING_KEY."""
    click.echo(secrets.token_urlsafe(32))


@keys.command("rotate-token-key")
@pass_context
def keys_rotate_token_key(ctx: Context, /) -> None:
    """Re-encrypt every shop's stored platform credentials under the current token key
    (COUPONRY_TOKEN_KEY), reading them with the old ones (COUPONRY_OLD_TOKEN_KEYS). Safe to
    run while the app serves, to interrupt and to run again: rows already current are skipped.
    Once it reports no unreadable rows, drop the old keys."""
    report = tokens.rotate_all(ctx.engine, ctx.settings)
    click.echo(f"re-encrypted {report.rotated}, already current {report.current}, unreadable {len(report.unreadable)}")
    if report.unreadable:
        shops = ", ".join(str(i) for i in report.unreadable)
        raise click.ClickException(
            f"shops {shops} hold credentials no configured token key decrypts: add the key they were "
            "encrypted with to COUPONRY_OLD_TOKEN_KEYS and run again, or reinstall the app in those shops"
        )


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
