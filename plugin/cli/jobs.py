"""`couponry worker` and `couponry jobs ...`: the outbox from the command line."""

from __future__ import annotations

import json

import click

from plugin.cli import Context, clear_errors, main, pass_context
from plugin.store import outbox
from plugin.store.units import transaction


@main.command()
@click.option("--poll", "poll_interval", type=float, default=1.0, show_default=True, help="Seconds between polls when idle.")
@pass_context
def worker(ctx: Context, poll_interval: float) -> None:
    """Run the job worker until SIGTERM or Ctrl-C (the running job finishes first)."""
    from plugin.jobs.worker import run_worker

    run_worker(ctx.settings, ctx.engine, poll_interval=poll_interval)


@main.group()
def jobs() -> None:
    """Inspect and retry outbox jobs."""


@jobs.command("list")
@click.option("--status", type=click.Choice(["queued", "running", "done", "dead"]), default=None)
@click.option("--kind", default=None, help="Job kind, e.g. sync.push.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def jobs_list(ctx: Context, status: str | None, kind: str | None, limit: int, as_json: bool) -> None:
    """List this shop's jobs, newest first."""
    with transaction(ctx.engine) as session:
        rows = outbox.list_jobs(session, status=status, kind=kind, shop_id=ctx.shop_id, limit=limit)
    for job in rows:
        if as_json:
            click.echo(json.dumps(job.model_dump(mode="json"), sort_keys=True))
        else:
            error = f"\t{job.last_error}" if job.last_error else ""
            click.echo(f"{job.id}\t{job.kind}\t{job.status}\tattempts {job.attempts}/{job.max_attempts}{error}")


@jobs.command("retry")
@click.argument("job_id", type=int)
@pass_context
def jobs_retry(ctx: Context, job_id: int) -> None:
    """Queue a dead job again with fresh attempts."""
    with clear_errors(), transaction(ctx.engine) as session:
        job = outbox.retry_dead(session, job_id, actor="cli", shop_id=ctx.shop_id)
    click.echo(f"job {job.id} queued again")
