"""Run Alembic migrations programmatically (`couponry migrate`, the `release` process, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from plugin.errors import ConfigError
from plugin.store.db import connected

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # configparser treats % as interpolation; URLs may hold percent-escapes
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config(engine)
    with connected(engine) as connection, connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


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
