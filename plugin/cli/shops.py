"""`couponry shops connect woocommerce`: connect a store with keys made by hand (no install flow)."""

from __future__ import annotations

import asyncio
import json

import click

from connectors.egress import AddressPolicy, public_client
from connectors.errors import ConnectorError
from connectors.woocommerce import WooAuthKeys, WooCommerceConnector
from plugin.cli import Context, clear_errors, main, pass_context
from plugin.platforms import installs
from plugin.platforms.connections import connector_config, normalise_store_url
from plugin.store.units import transaction


@main.group("shops")
def shops_group() -> None:
    """Shops (tenants) on shop platforms."""


@shops_group.group("connect")
def connect_group() -> None:
    """Connect a shop with credentials made by hand."""


@connect_group.command("woocommerce")
@click.option("--url", "store_url", required=True, help="The store's address, e.g. https://shop.example")
@click.option("--key", "consumer_key", required=True, help="REST API consumer key (ck_...).")
@click.option("--secret", "consumer_secret", required=True, prompt=True, hide_input=True, help="Consumer secret (cs_...).")
@click.option("--query-auth", is_flag=True, help="Send the keys as query parameters (servers that drop Authorization).")
@pass_context
def connect_woocommerce(ctx: Context, store_url: str, consumer_key: str, consumer_secret: str, query_auth: bool) -> None:
    """Check the keys against the store, store them encrypted and queue the webhook registration."""
    url = normalise_store_url(store_url)
    if url is None:
        raise click.BadParameter("not a store address", param_hint="--url")
    keys = WooAuthKeys(user_id="cli", consumer_key=consumer_key, consumer_secret=consumer_secret, key_permissions="read_write")
    credentials = WooCommerceConnector.credentials(
        url, keys, auth="query" if query_auth else "basic", webhook_secret=installs.new_webhook_secret()
    )
    config = connector_config(ctx.settings, "woocommerce")

    async def verify() -> None:
        async with public_client(AddressPolicy(allow_private=ctx.settings.allow_private_stores)) as http:
            await WooCommerceConnector(http, config, credentials).verify_credentials()

    try:
        asyncio.run(verify())
    except ConnectorError as exc:
        raise click.ClickException(f"the store refused the keys: {exc}") from exc
    with clear_errors(), transaction(ctx.engine) as session:
        shop = installs.save_install(session, ctx.settings, platform="woocommerce", credentials=credentials, actor="cli")
        shop_id = shop.id
    click.echo(json.dumps({"shop_id": shop_id, "platform": "woocommerce", "domain": url, "webhooks": "queued"}))


@shops_group.command("refusals")
@click.argument("mode", required=False, type=click.Choice(["default", "detailed", "generic"]))
@pass_context
def shop_refusals(ctx: Context, mode: str | None) -> None:
    """Show or set what shoppers are told when a code is refused: `detailed` (storefront keys
    too: "already used", "belongs to another customer"), `generic` (masked everywhere) or
    `default` (detailed to your servers, generic to storefront keys, where a guesser sits)."""
    from plugin.shops.shops import get_shop, refusal_mode, set_refusal_mode

    with clear_errors(), transaction(ctx.engine) as session:
        shop = get_shop(session, ctx.shop_id) if mode is None else set_refusal_mode(session, ctx.shop_id, mode)
        shown = refusal_mode(shop)
    click.echo(json.dumps({"shop_id": ctx.shop_id, "refusals": shown}))


@shops_group.command("origins")
@click.argument("origins", nargs=-1)
@click.option("--clear", is_flag=True, help="Allow no page at all.")
@pass_context
def shop_origins(ctx: Context, origins: tuple[str, ...], clear: bool) -> None:
    """Show or set (replacing the list) the pages the shop's storefront keys may be used from
    (CORS): exact origins such as https://shop.example or https://shop.example:8443."""
    from plugin.shops.shops import allowed_origins, get_shop, set_allowed_origins

    if clear and origins:
        raise click.UsageError("give origins or --clear, not both")
    with clear_errors(), transaction(ctx.engine) as session:
        changing = clear or bool(origins)
        shop = set_allowed_origins(session, ctx.shop_id, origins) if changing else get_shop(session, ctx.shop_id)
        shown = allowed_origins(shop)
    click.echo(json.dumps({"shop_id": ctx.shop_id, "origins": shown}))
