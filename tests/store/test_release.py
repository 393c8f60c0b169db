"""`release` (`couponry migrate`) run twice at once migrates once (issue 17, Upgrades): real
processes against a fresh database (schema). PostgreSQL: an advisory lock makes the second wait for the
first; SQLite: the file's write lock does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text

from plugin.store import jobstore, migrate
from tests.processes import child_env, couponry_command, fresh_postgres_schema, wait_until

SECRET = "release-test-secret-0123456789-abcdef"
HEAD = ScriptDirectory(str(migrate.MIGRATIONS)).get_current_head()


def start_release(database_url: str) -> subprocess.Popen[str]:
    env = child_env(DATABASE_URL=database_url, COUPONRY_SECRET_KEY=SECRET)
    return subprocess.Popen(couponry_command("migrate"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(releases: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    outcomes = []
    for proc in releases:
        out, err = proc.communicate(timeout=60)
        outcomes.append((proc.returncode, out, err))
    return outcomes


def assert_migrated_once(outcomes: list[tuple[int, str, str]], dialect: str) -> None:
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    said = sorted(out.strip() for _, out, _ in outcomes)
    assert said == [
        f"database already current ({dialect}): at {HEAD}",
        f"database migrated ({dialect}): from an empty database to {HEAD}",
    ], outcomes


def version_rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


@pytest.mark.postgres
def test_two_releases_at_once_on_postgresql_migrate_once(postgres_engine: Engine | None) -> None:
    assert postgres_engine is not None
    assert migrate.MIGRATION_LOCK != jobstore.CLAIM_LOCK  # workers' claims take their own lock
    server = postgres_engine.url.render_as_string(hide_password=False)
    with fresh_postgres_schema(server, "couponry_release") as url:
        engine = create_engine(url)
        try:
            # a release already migrating: we hold its lock while two more start
            with engine.connect() as holder:
                holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": migrate.MIGRATION_LOCK})
                releases = [start_release(url), start_release(url)]

                def both_waiting() -> bool:
                    if any(proc.poll() is not None for proc in releases):
                        raise AssertionError(f"a release did not wait: {finish(releases)}")
                    # a bigint advisory key shows as classid (high 32 bits) and objid (low), objsubid 1
                    waiting = text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 "
                        "AND classid::bigint = :high AND objid::bigint = :low AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                    key = {"high": migrate.MIGRATION_LOCK >> 32, "low": migrate.MIGRATION_LOCK & 0xFFFFFFFF}
                    return int(holder.execute(waiting, key).scalar_one()) == 2

                try:
                    wait_until(both_waiting, 30, "both releases waiting for the lock", interval=0.05)
                    assert "alembic_version" not in inspect(engine).get_table_names()  # neither went ahead
                finally:
                    holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": migrate.MIGRATION_LOCK})
                    holder.commit()
            outcomes = finish(releases)
            assert all("another release is migrating this database: waiting for it" in err for _, _, err in outcomes)
            assert_migrated_once(outcomes, "postgresql")
            assert version_rows(engine) == [HEAD]
            # and a release racing another with nobody holding the lock: the same, whoever wins
            with engine.begin() as conn:
                schema = conn.execute(text("SELECT current_schema()")).scalar_one()
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            assert_migrated_once(finish([start_release(url), start_release(url)]), "postgresql")
            assert version_rows(engine) == [HEAD]
        finally:
            engine.dispose()


def test_two_releases_at_once_on_sqlite_migrate_once(tmp_path: Path) -> None:
    """The embedded database: BEGIN IMMEDIATE makes the second wait for the first's commit."""
    url = f"sqlite:///{tmp_path / 'release.db'}"
    assert_migrated_once(finish([start_release(url), start_release(url)]), "sqlite")
    engine = create_engine(url)
    try:
        assert version_rows(engine) == [HEAD]
    finally:
        engine.dispose()
