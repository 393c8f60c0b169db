"""Run Alembic migrations programmatically (`couponry migrate`, the `release` process, tests).

Two releases may start together (a deploy retried, two apps sharing a database): `upgrade`
runs every migration in one transaction that first takes a lock, so the second waits for the
first to commit and then finds nothing left to do. PostgreSQL: a transaction-level advisory
lock on a fixed key (released by the commit or rollback, even if the process dies). SQLite:
the transaction begins IMMEDIATE (plugin.store.db), so the database file's write lock
serialises the two the same way (the second waits up to the busy timeout, 30 s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from plugin.errors import ConfigError
from plugin.store.db import connected

MIGRATIONS = Path(__file__).parent / "migrations"
# the advisory lock key every couponry release takes ("coupmigr" in ASCII, a bigint; the job
# claims' key, plugin.store.jobstore.CLAIM_LOCK, is "couponry": a release never holds up claims).
# Advisory locks are per database: releases of apps on other databases of the server never wait.
MIGRATION_LOCK = int.from_bytes(b"coupmigr", "big")


@dataclass(frozen=True)
class Upgraded:
    """The revisions a database was at before and after `upgrade`."""

    before: frozenset[str]
    after: frozenset[str]

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # configparser treats % as interpolation; URLs may hold percent-escapes
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head", *, on_wait: Callable[[], None] | None = None) -> Upgraded:
    """Migrate to `revision`, one release at a time (see the module's docstring); `on_wait` is
    called if another release holds the lock, before waiting for it."""
    config = alembic_config(engine)
    with connected(engine) as connection, _foreign_keys_deferred(connection), connection.begin():
        _take_migration_lock(connection, on_wait)
        before = _heads(connection)  # read under the lock: what an earlier release left
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        _check_foreign_keys(connection)
        return Upgraded(before=before, after=_heads(connection))


def _take_migration_lock(connection: Connection, on_wait: Callable[[], None] | None) -> None:
    if connection.dialect.name != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE holds the file's write lock already
    if connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}).scalar_one():
        return
    if on_wait is not None:
        on_wait()
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})


def _heads(connection: Connection) -> frozenset[str]:
    return frozenset(MigrationContext.configure(connection).get_current_heads())


@contextmanager
def _foreign_keys_deferred(connection: Connection) -> Iterator[None]:
    """SQLite alters a table by copying it and dropping the original (Alembic's batch mode);
    with foreign keys enforced, dropping a table other rows reference fails, so a migration
    that alters `campaign` could only run on an empty database. As SQLite's documentation
    prescribes for such changes, enforcement is off while migrating, and the result is checked
    (`_check_foreign_keys`) before it commits. The pragma is a no-op inside a transaction: it
    is set on the driver's connection before ours begins."""
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")  # the pooled connection goes back as the app expects it


def _check_foreign_keys(connection: Connection) -> None:
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise ConfigError(f"the migration would leave {len(broken)} row(s) pointing at rows that don't exist: {broken[:3]}")


def stamp(engine: Engine, revision: str = "head") -> None:
    """Record `revision` as applied without running it (tests that build the schema with
    `create_all`, so that the commands accept the database as migrated)."""
    config = alembic_config(engine)
    with connected(engine) as connection, connection.begin():
        config.attributes["connection"] = connection
        command.stamp(config, revision)


def require_current(engine: Engine) -> None:
    """Refuse, in one line, a database whose schema is not this version's: never migrated or
    behind (run `couponry migrate`), or migrated by a newer couponry. One small read, at start."""
    with connected(engine) as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    script = ScriptDirectory(str(MIGRATIONS))
    heads = set(script.get_heads())
    if current == heads:
        return
    where = _where(engine)
    if not current:
        raise ConfigError(f"the database {where} is not migrated yet: run `couponry migrate` first, with the same DATABASE_URL")
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = sorted(current - known)
    if unknown:
        raise ConfigError(
            f"the database {where} was migrated by a newer couponry (revision {', '.join(unknown)}, unknown to this one): "
            "upgrade couponry, or point DATABASE_URL at this version's database"
        )
    raise ConfigError(f"the database {where} is behind this couponry: run `couponry migrate` first, with the same DATABASE_URL")


def known_revisions() -> tuple[set[str], set[str]]:
    """This version's migration revisions: (all of them, the heads)."""
    script = ScriptDirectory(str(MIGRATIONS))
    return {rev.revision for rev in script.walk_revisions()}, set(script.get_heads())


def _where(engine: Engine) -> str:
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return url.database or "in memory"
    return f"{url.database} at {url.host}:{url.port or 5432}" if url.host else str(url.database)


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a migration from the models (development only)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True)
