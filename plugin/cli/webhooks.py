"""`couponry webhooks ...`: review stored deliveries, process failed ones again, redact PII."""

from __future__ import annotations

import json

import click

from plugin.cli import Context, clear_errors, main, pass_context
from plugin.orders import orders, webhooks
from plugin.store.units import transaction


@main.group("webhooks")
def webhooks_group() -> None:
    """Review webhook deliveries and their outcome."""


@webhooks_group.command("list")
@click.option("--platform", default=None)
@click.option("--status", type=click.Choice(webhooks.STATUSES), default=None)
@click.option("--flagged/--not-flagged", default=None, help="Only deliveries with (or without) a misuse flag.")
@click.option("--campaign", "campaign_id", type=int, default=None)
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--cursor", default=None, help="Continue after a previous page.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def webhooks_list(
    ctx: Context,
    platform: str | None,
    status: str | None,
    flagged: bool | None,
    campaign_id: int | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List deliveries, newest first."""
    with clear_errors(), transaction(ctx.engine) as session:
        page = webhooks.list_deliveries(
            session,
            ctx.shop_id,
            platform=platform,
            status=status,
            flagged=flagged,
            campaign_id=campaign_id,
            limit=limit,
            cursor=cursor,
        )
        views = [webhooks.delivery_view(e) for e in page.items]
    for v in views:
        if as_json:
            click.echo(json.dumps(v, sort_keys=True))
        else:
            flag = "\tFLAGGED" if v["flagged"] else ""
            error = f"\t{v['error']}" if v["error"] else ""
            click.echo(f"{v['id']}\t{v['platform']}\t{v['topic']}\torder {v['order_id']}\t{v['status']}{flag}{error}")
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@webhooks_group.command("show")
@click.argument("event_id", type=int)
@pass_context
def webhooks_show(ctx: Context, event_id: int) -> None:
    """One delivery with its raw payload and outcome."""
    with clear_errors(), transaction(ctx.engine) as session:
        view = webhooks.delivery_view(webhooks.get_delivery(session, ctx.shop_id, event_id), with_payload=True)
    click.echo(json.dumps(view, indent=2, sort_keys=True))


@webhooks_group.command("reprocess")
@click.argument("event_id", type=int)
@pass_context
def webhooks_reprocess(ctx: Context, event_id: int) -> None:
    """Put a failed delivery back in line; the worker processes it within seconds."""
    with clear_errors(), transaction(ctx.engine) as session:
        orders.reprocess(session, ctx.shop_id, event_id)
    click.echo(f"delivery {event_id} queued for processing")


@webhooks_group.command("redact")
@click.argument("event_id", type=int, required=False)
@click.option("--email", default=None, help="Redact every delivery about this customer email.")
@click.option("--customer", "customer_id", default=None, help="... or this platform customer id.")
@click.option("--order", "order_ids", multiple=True, help="... or these orders (repeatable).")
@pass_context
def webhooks_redact(
    ctx: Context, event_id: int | None, email: str | None, customer_id: str | None, order_ids: tuple[str, ...]
) -> None:
    """Remove the payload (and the PII in it) of one delivery, or of every delivery about a customer."""
    with clear_errors(), transaction(ctx.engine) as session:
        if event_id is not None:
            webhooks.redact_delivery(session, ctx.shop_id, event_id, actor="cli")
            count = 1
        else:
            count = webhooks.redact_customer(
                session, ctx.shop_id, email=email, customer_id=customer_id, order_ids=order_ids, actor="cli"
            )
    click.echo(f"{count} deliveries redacted")
