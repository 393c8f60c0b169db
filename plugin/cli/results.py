"""`couponry campaigns results ID` and `couponry campaigns redemption-log ID`: what a campaign
earned, as JSON or CSV; `couponry shops timezone`: the zone results' days are counted in."""

from __future__ import annotations

import json
from typing import IO

import click

from plugin.campaigns import results
from plugin.cli import Context, clear_errors, pass_context
from plugin.cli.codes import campaigns
from plugin.cli.shops import shops_group
from plugin.store.units import reading, transaction

_FILTERS = [
    click.option("--from", "start", default=None, help="First day, YYYY-MM-DD in the shop's time zone."),
    click.option("--to", "end", default=None, help="Last day, inclusive."),
    click.option("--partner", "partner_id", default=None, help="Only this partner's codes and redemptions."),
]


def _filters(fn: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_FILTERS):
        fn = option(fn)
    return fn


@campaigns.command("results")
@click.argument("campaign_id", type=int)
@click.option("--group-by", default=None, help="One or two of channel, partner, batch, provider, day (comma-separated).")
@_filters
@click.option("--csv", "as_csv", is_flag=True, help="The table as CSV: one line per group and currency.")
@pass_context
def campaigns_results(
    ctx: Context, campaign_id: int, group_by: str | None, start: str | None, end: str | None, partner_id: str | None, as_csv: bool
) -> None:
    """What a campaign earned: codes issued and assigned, redemptions, revenue and discount per
    currency, return per unit of discount, median wait, rollbacks and flagged uses."""
    with clear_errors():
        query = results.parse_query(campaign_id, group_by=group_by, start=start, end=end, partner_id=partner_id)
        with reading(ctx.engine) as session:
            report = results.results(session, shop_id=ctx.shop_id, query=query)
    if as_csv:
        click.echo(results.report_csv(report), nl=False)
    else:
        click.echo(json.dumps(results.report_json(report), sort_keys=True))


@campaigns.command("redemption-log")
@click.argument("campaign_id", type=int)
@_filters
@click.option("--output", type=click.File("w", encoding="utf-8"), default="-", help="CSV file (default: stdout).")
@pass_context
def campaigns_redemption_log(
    ctx: Context, campaign_id: int, start: str | None, end: str | None, partner_id: str | None, output: IO[str]
) -> None:
    """The campaign's redemptions as CSV, oldest first (streamed)."""
    with clear_errors():
        query = results.parse_query(campaign_id, group_by=None, start=start, end=end, partner_id=partner_id)
        for chunk in results.redemption_log_csv(ctx.engine, shop_id=ctx.shop_id, query=query):
            output.write(chunk)


@shops_group.command("timezone")
@click.argument("name", required=False)
@pass_context
def shop_timezone(ctx: Context, name: str | None) -> None:
    """Show or set the shop's IANA time zone (e.g. Europe/London), in which results count days.
    Setting it rebuilds the shop's results rollups (their days move with it)."""
    from plugin.shops.shops import get_shop
    from plugin.shops.timezones import set_timezone

    with clear_errors(), transaction(ctx.engine) as session:
        shop = get_shop(session, ctx.shop_id) if name is None else set_timezone(session, ctx.shop_id, name)
        shown = shop.timezone
    click.echo(json.dumps({"shop_id": ctx.shop_id, "timezone": shown}))
