"""`couponry campaigns ...` and `couponry codes ...`."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import IO, Any

import click

from plugin.campaigns.campaigns import campaign_summaries, code_count, create_campaign
from plugin.campaigns.issuing import decode_import, export_codes, import_codes, import_lines, run_batch, start_batch
from plugin.campaigns.lookup import campaign_format, get_campaign
from plugin.checkout import guessing
from plugin.cli import Context, clear_errors, main, pass_context
from plugin.codes import percode
from plugin.errors import PluginError
from plugin.formats import codes
from plugin.platforms import sync
from plugin.shops import shops
from plugin.store.models import utcnow
from plugin.store.units import transaction

# --- campaigns ------------------------------------------------------------------------------


@main.group()
def campaigns() -> None:
    """Create and list campaigns."""


def format_options(fn: Any) -> Any:
    options = [
        click.option("--length", type=int, default=None, help="Random characters per code (default 10)."),
        click.option(
            "--alphabet",
            default=None,
            help="Preset (safe, numeric, alphanumeric, alphabetic) or the characters to use.",
        ),
        click.option("--prefix", default=None, help="Fixed text before the code, e.g. VIP-."),
        click.option("--suffix", default=None, help="Fixed text after the code."),
        click.option("--pattern", default=None, help="Pattern with # for random characters, e.g. BF-####-####."),
        click.option("--group", "group_size", type=int, default=None, help="Insert a separator every N characters."),
        click.option("--separator", default=None, help="Group separator (default -)."),
        click.option("--check-chars", type=int, default=None, help="Check characters to catch typos (0 or more)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@campaigns.command("create")
@click.option("--name", required=True, help="Campaign name.")
@click.option("--currency", default="USD", show_default=True, help="ISO 4217 currency of amounts.")
@click.option("--rules", "rules_json", default=None, help="Rules as JSON, or @FILE (see the API's CampaignRules schema).")
@format_options
@pass_context
def campaigns_create(ctx: Context, /, name: str, currency: str, rules_json: str | None, **fmt: Any) -> None:
    """Create a campaign and print its id (a draft until it has rules)."""
    code_format = {k: v for k, v in fmt.items() if v is not None}
    rules = _read_json(rules_json) if rules_json else None
    with clear_errors(), transaction(ctx.engine) as session:
        campaign = create_campaign(
            session, shop_id=ctx.shop_id, name=name, code_format=code_format, currency=currency, rules=rules
        )
        fmt_obj = codes.CodeFormat.from_dict(campaign.code_format)
    click.echo(campaign.id)
    click.echo(
        f"format: {codes.display(fmt_obj, codes.generate(fmt_obj, 1)[0])} (example), "
        f"{codes.entropy_bits(fmt_obj):.1f} bits of entropy",
        err=True,
    )


def _read_json(value: str) -> Any:
    text = value
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise click.BadParameter(f"can't read {value[1:]}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from exc


@campaigns.command("list")
@pass_context
def campaigns_list(ctx: Context) -> None:
    """List this shop's campaigns with their code counts."""
    with transaction(ctx.engine) as session:
        rows = campaign_summaries(session, shop_id=ctx.shop_id)
    for campaign_id, name, status, count in rows:
        click.echo(f"{campaign_id}\t{name}\t{status}\t{count} codes")


@campaigns.command("show")
@click.argument("campaign_id", type=int)
@pass_context
def campaigns_show(ctx: Context, campaign_id: int) -> None:
    """A campaign as JSON, with where it stands on the shop's platform (`platform`: its discount
    id, its codes per sync status, the last follow-up of a pause/resume/end/rule edit, and the
    error of a sync job still failing)."""
    with clear_errors(), transaction(ctx.engine) as session:
        campaign = get_campaign(session, shop_id=ctx.shop_id, campaign_id=campaign_id)
        shown = {
            "id": campaign.id,
            "name": campaign.name,
            "status": campaign.status,
            "codes": code_count(session, campaign_id=campaign_id),
            "platform": sync.platform_status(session, campaign),
        }
    click.echo(json.dumps(shown, default=_iso, sort_keys=True))


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


# --- codes ----------------------------------------------------------------------------------


@main.group("codes")
def codes_group() -> None:
    """Generate, import and export codes; look one up, void, extend or reassign it."""


@codes_group.command("generate")
@click.option("--campaign", "campaign_id", type=int, required=True, help="Campaign id.")
@click.option("--count", type=click.IntRange(min=1), required=True, help="How many codes to generate.")
@pass_context
def codes_generate(ctx: Context, campaign_id: int, count: int) -> None:
    """Generate COUNT new unique codes into a campaign."""
    with clear_errors():
        with transaction(ctx.engine) as session:  # refuses an unsafe request before any work
            batch = start_batch(session, shop_id=ctx.shop_id, campaign_id=campaign_id, count=count)
        assert batch.id is not None
        with click.progressbar(length=count, label="generating", file=sys.stderr) as bar:
            done = 0

            def progress(created: int, _requested: int) -> None:
                nonlocal done
                bar.update(created - done)
                done = created

            batch = run_batch(ctx.engine, shop_id=ctx.shop_id, batch_id=batch.id, on_progress=progress)
        with transaction(ctx.engine) as session:
            campaign = get_campaign(session, shop_id=ctx.shop_id, campaign_id=campaign_id)
            fmt, live = campaign_format(campaign), code_count(session, campaign_id=campaign_id)
    click.echo(json.dumps({"batch_id": batch.id, "created": batch.created}))
    odds = guessing.odds(fmt, live, guessing.Budgets.from_settings(ctx.settings))
    click.echo(f"{live:,} codes, {codes.entropy_bits(fmt):.1f} bits each; {guessing.describe(odds, ctx.settings)}", err=True)


@codes_group.command("export")
@click.option("--campaign", "campaign_id", type=int, required=True, help="Campaign id.")
@click.option("--output", type=click.File("w", encoding="utf-8"), default="-", help="CSV file (default: stdout).")
@pass_context
def codes_export(ctx: Context, campaign_id: int, output: IO[str]) -> None:
    """Export a campaign's codes as CSV (streamed)."""
    with clear_errors():
        for chunk in export_codes(ctx.engine, shop_id=ctx.shop_id, campaign_id=campaign_id):
            output.write(chunk)


@codes_group.command("import")
@click.option("--campaign", "campaign_id", type=int, required=True, help="Campaign id.")
@click.option(
    "--encoding",
    default=None,
    help="The file's text encoding, e.g. utf-8, cp1252, utf-16 (default: its byte-order mark, else UTF-8, else cp1252).",
)
@click.argument("file", type=click.File("rb"))
@pass_context
def codes_import(ctx: Context, campaign_id: int, encoding: str | None, file: IO[bytes]) -> None:
    """Import codes from a CSV FILE (a `code` column, or one code per line); `email` and/or
    `customer_id` columns bind each code to that person (only they may use it)."""
    try:
        decoded = decode_import(file.read(), encoding)
    except PluginError as exc:
        raise click.ClickException(
            f"{file.name}: {exc.message}; name its encoding with --encoding (e.g. utf-8, cp1252, utf-16-le)"
        ) from exc
    if decoded.detected_by == "fallback":
        click.echo(f"{file.name}: not UTF-8, read as {decoded.encoding} (pass --encoding if that is wrong)", err=True)
    with clear_errors():
        batch = import_codes(ctx.engine, shop_id=ctx.shop_id, campaign_id=campaign_id, lines=import_lines(decoded.text))
    click.echo(json.dumps({"batch_id": batch.id, "imported": batch.created, "encoding": decoded.encoding}))


# --- one code: look up, void, extend, reassign (plugin.codes.percode) ------------------------------


def _show(session: Any, found: percode.Found) -> None:
    code = found.code
    shop = shops.get_shop(session, code.shop_id)
    expires = code.expires_at.isoformat() if code.expires_at else "never"
    platform = f"{shop.platform if shop else '?'} {code.sync_status}" + (f" ({code.sync_error})" if code.sync_error else "")
    click.echo(f"{found.display}\tcampaign {code.campaign_id}\t{code.status}\t{code.uses} use(s)\texpires {expires}")
    click.echo(f"recipient: {code.recipient or '-'}\tplatform: {platform}")
    for event in percode.story(session, found):
        details = " ".join(f"{k}={v}" for k, v in event.details.items() if v is not None)
        click.echo(f"{event.at.isoformat()}\t{event.event}\t{details}")


@codes_group.command("show")
@click.argument("code")
@pass_context
def codes_show(ctx: Context, code: str) -> None:
    """Look CODE up as a shopper typed it: its state, platform status and story."""
    with clear_errors(), transaction(ctx.engine) as session:
        _show(session, percode.find(session, shop_id=ctx.shop_id, typed=code))


@codes_group.command("void")
@click.argument("code")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@pass_context
def codes_void(ctx: Context, code: str, reason: str) -> None:
    """Void CODE: validation refuses it, and the worker takes it off the platform."""
    with clear_errors(), transaction(ctx.engine) as session:
        found = percode.void(session, shop_id=ctx.shop_id, typed=code, actor="cli", now=utcnow(), reason=reason)
        _show(session, found)


@codes_group.command("extend")
@click.argument("code")
@click.option("--expires-at", "expires_at", required=True, help="New end, ISO 8601 with a timezone, e.g. 2027-01-31T23:59:59Z.")
@pass_context
def codes_extend(ctx: Context, code: str, expires_at: str) -> None:
    """Give CODE a later end; the worker pushes it to the platform."""
    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {expires_at!r}", param_hint="--expires-at") from exc
    with clear_errors(), transaction(ctx.engine) as session:
        found = percode.extend(session, shop_id=ctx.shop_id, typed=code, expires_at=when, actor="cli", now=utcnow())
        _show(session, found)


@codes_group.command("reassign")
@click.argument("code")
@click.option("--recipient", required=True, help="An email, a phone number (+<country><number>) or id:<customer id>.")
@pass_context
def codes_reassign(ctx: Context, code: str, recipient: str) -> None:
    """Give CODE (live and unused) to another recipient."""
    with clear_errors(), transaction(ctx.engine) as session:
        found = percode.reassign(session, shop_id=ctx.shop_id, typed=code, recipient=recipient, actor="cli", now=utcnow())
        _show(session, found)
