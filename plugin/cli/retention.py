"""`couponry prune`: apply the data retention settings now (plugin.orders.retention)."""

from __future__ import annotations

import click

from plugin.cli import Context, main, pass_context
from plugin.orders import retention


@main.command("prune")
@pass_context
def prune_cmd(ctx: Context, /) -> None:
    """Delete or empty what the retention settings say is old (the worker also does it hourly):
    ignored/failed deliveries (COUPONRY_WEBHOOK_RETENTION_DAYS), processed deliveries' payloads
    (COUPONRY_WEBHOOK_PAYLOAD_RETENTION_DAYS), audit rows (COUPONRY_AUDIT_RETENTION_DAYS)."""
    pruned = retention.prune(ctx.engine, ctx.settings)
    click.echo(
        f"deleted {pruned.deliveries} unused deliveries, emptied {pruned.payloads} payloads, deleted {pruned.audit} audit rows"
    )
