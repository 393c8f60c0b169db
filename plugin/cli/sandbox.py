"""`couponry sandbox ...`: place, cancel and refund test orders in the sandbox store; set its knobs.

Orders go straight into the sandbox's tables and queue their webhooks; the running
`couponry serve` delivers them within a moment (or `couponry sandbox deliver` does, now)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from plugin.cli import Context, main, pass_context
from plugin.sandbox import store
from plugin.sandbox.store import SandboxError
from plugin.store.units import transaction


def _shop(ctx: Context) -> str:
    return ctx.shop_domain or ctx.settings.default_shop_domain


class _SandboxErrors:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, SandboxError):
            raise click.ClickException(exc.message) from exc


@main.group("sandbox")
def sandbox_group() -> None:
    """The sandbox store: test orders and test knobs."""


@sandbox_group.command("order")
@click.option("--code", "codes", multiple=True, help="A discount code to use (repeatable).")
@click.option("--email", default=None)
@click.option("--subtotal", required=True, help="Order subtotal in major units, e.g. 80.00.")
@click.option("--customer", "customer_id", default=None, help="Platform customer id.")
@click.option("--channel", default="web", show_default=True)
@click.option("--currency", default="USD", show_default=True)
@click.option("--force", is_flag=True, help="Skip the platform's own checks, as if the shop had a generic code.")
@click.option("--address1", default=None, help="Ship to this street address (with --zip and --country).")
@click.option("--address2", default="")
@click.option("--zip", "zip_code", default="", help="The shipping address's postal or ZIP code.")
@click.option("--country", default="", help="The shipping address's ISO alpha-2 country code.")
@pass_context
def sandbox_order(
    ctx: Context,
    codes: tuple[str, ...],
    email: str | None,
    subtotal: str,
    customer_id: str | None,
    channel: str,
    currency: str,
    force: bool,
    address1: str | None,
    address2: str,
    zip_code: str,
    country: str,
) -> None:
    """Place a paid test order; its orders/create webhook is queued."""
    ship_to = (
        {"address1": address1 or "", "address2": address2, "zip": zip_code, "country_code": country}
        if address1 or zip_code or country
        else None
    )
    with _SandboxErrors(), transaction(ctx.engine) as session:
        order = store.place_order(
            session,
            _shop(ctx),
            codes=list(codes),
            subtotal=store.to_minor(subtotal, currency),
            currency=currency,
            email=email,
            customer_id=customer_id,
            channel=channel,
            force=force,
            shipping_address=ship_to,
        )
        click.echo(json.dumps(store.order_json(order)))


def _change(ctx: Context, order_id: int, action: str) -> None:
    with _SandboxErrors(), transaction(ctx.engine) as session:
        order = store.change_order(session, _shop(ctx), order_id, action)
        click.echo(json.dumps(store.order_json(order)))


@sandbox_group.command("cancel")
@click.argument("order_id", type=int)
@pass_context
def sandbox_cancel(ctx: Context, order_id: int) -> None:
    """Cancel a test order (orders/cancelled webhook)."""
    _change(ctx, order_id, "cancel")


@sandbox_group.command("refund")
@click.argument("order_id", type=int)
@pass_context
def sandbox_refund(ctx: Context, order_id: int) -> None:
    """Refund a test order (orders/refunded webhook)."""
    _change(ctx, order_id, "refund")


@sandbox_group.command("fail")
@click.argument("order_id", type=int)
@pass_context
def sandbox_fail(ctx: Context, order_id: int) -> None:
    """Fail a test order's payment (orders/failed webhook)."""
    _change(ctx, order_id, "fail")


@sandbox_group.command("knobs")
@click.option("--duplicate", type=click.FloatRange(0, 1), default=None, help="Chance a webhook is sent twice.")
@click.option("--reorder/--no-reorder", default=None, help="Deliver due webhooks in random order.")
@click.option("--delay-ms", type=click.IntRange(0), default=None, help="Hold new webhooks up to this long.")
@click.option("--webhook-fail-rate", type=click.FloatRange(0, 1), default=None, help="Chance a delivery attempt fails.")
@click.option("--api-fail-rate", type=click.FloatRange(0, 1), default=None, help="Chance an API request gets a 503.")
@click.option("--api-timeout-rate", type=click.FloatRange(0, 1), default=None, help="Chance an API request hangs.")
@click.option("--rate-limit", type=click.FloatRange(min=0.1), default=None, help="API requests per second.")
@click.option("--batch-limit", type=click.IntRange(1), default=None, help="Codes per push.")
@click.option("--retry-base-seconds", type=click.FloatRange(0), default=None, help="First webhook retry delay.")
@click.option("--webhook-url", default=None, help="Deliver webhooks here instead of this app.")
@click.option("--reset", is_flag=True, help="Back to the defaults first.")
@pass_context
def sandbox_knobs(ctx: Context, /, reset: bool, **changes: Any) -> None:
    """Show or set the sandbox shop's test knobs."""
    given = {k: v for k, v in changes.items() if v is not None}
    with _SandboxErrors(), transaction(ctx.engine) as session:
        if reset:
            store.set_knobs(session, _shop(ctx), store.Knobs().__dict__)
        knobs = store.set_knobs(session, _shop(ctx), given) if given else store.get_knobs(session, _shop(ctx))
    click.echo(json.dumps(knobs.__dict__, sort_keys=True))


@sandbox_group.command("deliver")
@pass_context
def sandbox_deliver(ctx: Context) -> None:
    """Deliver the due webhooks now, from this process."""
    import httpx

    from plugin.sandbox.deliverer import Deliverer

    async def go() -> int:
        async with httpx.AsyncClient() as client:
            return await Deliverer(ctx.engine, ctx.settings, client).deliver_due()

    click.echo(f"{asyncio.run(go())} deliveries attempted")
