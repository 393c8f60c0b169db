"""`couponry backup PATH` and `couponry restore PATH`: the embedded default's database and key
file in one tar file (plugin.store.backup). On PostgreSQL both explain pg_dump instead."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import click

from plugin.cli import Context, clear_errors, main, pass_context
from plugin.store import backup as archive

# keys the environment supplies are not in the key file, so not in a backup
_KEY_VARIABLES = ("COUPONRY_SECRET_KEY", "COUPONRY_TOKEN_KEY", "COUPONRY_SIGNING_KEY", "COUPONRY_OLD_TOKEN_KEYS")


def _database(ctx: Context) -> Path:
    if not ctx.settings.is_sqlite:
        raise click.ClickException(archive.PG_DUMP_HELP)
    path = ctx.settings.sqlite_path
    if path is None:
        raise click.ClickException("the database is in memory: there is nothing to back up or restore")
    return path


@main.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@pass_context
def backup_cmd(ctx: Context, /, path: Path) -> None:
    """Back up the embedded database and its key file into the tar file PATH, while the app runs."""
    database = _database(ctx)
    with clear_errors():
        report = archive.backup(database, path)
    click.echo(f"backed up {database} (revision {report.revision or 'none'}) to {path}, {report.bytes} bytes")
    if not report.key_file:
        click.echo(f"warning: no key file beside {database}: the backup holds no key", err=True)
    from_env = [name for name in _KEY_VARIABLES if os.environ.get(name)]
    if from_env:
        click.echo(
            f"warning: {', '.join(from_env)} come from the environment and are not in the backup: keep them with it, "
            "or stored platform tokens and signed links are lost",
            err=True,
        )


@main.command("restore")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing database and key file (kept beside, renamed).")
@pass_context
def restore_cmd(ctx: Context, /, path: Path, force: bool) -> None:
    """Restore a backup made by `couponry backup` as the configured database (stop the app first)."""
    database = _database(ctx)
    with clear_errors():
        report = archive.restore(path, database, force=force, now=datetime.now(UTC))
    click.echo(f"restored {database} (revision {report.revision or 'none'}) from {path}")
    for kept in report.kept:
        click.echo(f"kept the replaced {kept}")
