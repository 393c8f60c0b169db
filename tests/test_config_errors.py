"""Configuration mistakes (issue 12, section 6): each ends the command with ONE line on stderr
saying what is wrong and how to fix it, and a non-zero exit status; never a traceback.

The CLI runs in-process (CliRunner) except where the process itself is the subject (`serve`
holding its port, the real entry point printing no traceback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, event, text
from sqlmodel import Session

from plugin.cli import main
from plugin.errors import ConfigError
from plugin.settings import Settings
from plugin.shops.shops import ensure_local_shop
from plugin.store import migrate, outbox
from plugin.store.db import connected, make_engine, session_scope
from plugin.store.models import Job

ROOT = Path(__file__).resolve().parents[1]
SECRET = "config-test-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_line_error(result: Result) -> str:
    """The command failed with exactly one line on stderr (no traceback): that line."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught error
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def run_cli(monkeypatch: pytest.MonkeyPatch, database_url: str, *args: str) -> Result:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("COUPONRY_SECRET_KEY", SECRET)
    return CliRunner().invoke(main, list(args))


# --- 1. an unusable DATABASE_URL ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nonsense", "is not a database URL"),
        ("mysql://shop:hunter2secret@db.example/couponry", "mysql"),
        ("postgresql://shop:hunter2secret@db.example:notaport/couponry", "port"),
        ("postgresql+psycopg2://shop:hunter2secret@db.example/couponry", "psycopg2"),
    ],
)
@pytest.mark.parametrize("command", [("campaigns", "list"), ("migrate",), ("serve",)])
def test_an_unusable_database_url_is_one_line(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str, command: tuple[str, ...]
) -> None:
    line = one_line_error(run_cli(monkeypatch, url, *command))
    assert line.startswith("Error: DATABASE_URL ") and says in line, line
    assert "SQLite" in line and "PostgreSQL" in line  # what is supported
    assert "hunter2secret" not in line


def test_the_prefixed_variable_is_named_when_it_is_the_one_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("COUPONRY_DATABASE_URL", "nonsense")
    line = one_line_error(CliRunner().invoke(main, ["campaigns", "list"]))
    assert line.startswith("Error: COUPONRY_DATABASE_URL is not a database URL"), line


def test_settings_refuse_the_url_before_touching_the_disk(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL names a mysql database"):
        Settings.from_env({"DATABASE_URL": "mysql://u@h/db", "COUPONRY_SECRET_KEY": SECRET})
    with pytest.raises(ConfigError, match="PORT must be a whole number"):
        Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PORT": "eighty"})
    with pytest.raises(ConfigError, match="COUPONRY_SECRET_KEY must be set"):
        Settings.from_env({"DATABASE_URL": "postgresql://u@h/db"})


def test_the_real_entry_point_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": "nonsense", "COUPONRY_SECRET_KEY": SECRET}
    done = subprocess.run(
        [sys.executable, "-c", "from plugin.cli import main; main()", "campaigns", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


# --- 2. an unreachable PostgreSQL ----------------------------------------------------------------

UNREACHABLE = "postgresql://postgres:hunter2secret@127.0.0.1:1/test"


@pytest.mark.parametrize("command", [("campaigns", "list"), ("migrate",), ("worker",)])
def test_an_unreachable_postgresql_is_one_line(monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]) -> None:
    line = one_line_error(run_cli(monkeypatch, UNREACHABLE, *command))
    assert "could not connect to PostgreSQL at 127.0.0.1:1" in line, line
    assert "Connection refused" in line and "DATABASE_URL" in line  # why, and what to check
    assert "hunter2secret" not in line


def test_connecting_to_postgresql_gives_up_in_bounded_time() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    seen: list[dict[str, Any]] = []

    @event.listens_for(engine, "do_connect")
    def _record(_dialect: Any, _record: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(dict(kwargs))

    with pytest.raises(ConfigError), connected(engine):
        pass
    assert seen and int(seen[0]["connect_timeout"]) == 10
    # a timeout the operator put in the URL wins
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=3")
    event.listen(engine, "do_connect", _record)
    with pytest.raises(ConfigError), connected(engine):
        pass
    assert int(seen[-1]["connect_timeout"]) == 3


# --- 3. a PostgreSQL database not yet migrated --------------------------------------------------


@pytest.fixture
def empty_schema(postgres_engine: Engine | None, database_url: str) -> Iterator[str]:
    """A URL of a fresh, empty schema of the test database (PostgreSQL only)."""
    if postgres_engine is None:
        pytest.skip("needs PostgreSQL: set COUPONRY_TEST_DATABASE_URL")
    with postgres_engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS config_unmigrated CASCADE"))
        conn.execute(text("CREATE SCHEMA config_unmigrated"))
    url = postgres_engine.url.update_query_dict({"options": "-csearch_path=config_unmigrated"})
    yield url.render_as_string(hide_password=False)
    with postgres_engine.begin() as conn:
        conn.execute(text("DROP SCHEMA config_unmigrated CASCADE"))


@pytest.mark.postgres
def test_an_unmigrated_postgresql_says_to_run_migrate(monkeypatch: pytest.MonkeyPatch, empty_schema: str) -> None:
    for command in (("campaigns", "list"), ("worker",), ("serve", "--port", str(free_port()))):
        line = one_line_error(run_cli(monkeypatch, empty_schema, *command))
        assert "not migrated" in line and "couponry migrate" in line, line
    migrated = run_cli(monkeypatch, empty_schema, "migrate")
    assert migrated.exit_code == 0, migrated.output
    listed = run_cli(monkeypatch, empty_schema, "campaigns", "list")
    assert listed.exit_code == 0, listed.output


@pytest.mark.postgres
def test_a_postgresql_behind_or_ahead_of_this_version_says_so(monkeypatch: pytest.MonkeyPatch, empty_schema: str) -> None:
    engine = make_engine(empty_schema)
    migrate.upgrade(engine)
    with monkeypatch.context() as patched:  # as if this version shipped a newer revision
        patched.setattr(migrate.ScriptDirectory, "get_heads", lambda _self: ["a1b2c3d4e5f6"])
        line = one_line_error(run_cli(monkeypatch, empty_schema, "campaigns", "list"))
    assert "is behind this couponry" in line and "couponry migrate" in line, line
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedcafe'"))
    engine.dispose()
    line = one_line_error(run_cli(monkeypatch, empty_schema, "campaigns", "list"))
    assert "f00dfeedcafe" in line and "newer couponry" in line, line


def test_the_embedded_sqlite_default_still_migrates_itself(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result = run_cli(monkeypatch, f"sqlite:///{tmp_path / 'fresh.db'}", "campaigns", "list")
    assert result.exit_code == 0, result.output


def test_migration_state_is_read_from_alembic_version(engine: Engine) -> None:
    """The check itself, on both databases: the test tables carry the head (conftest stamps it)
    on PostgreSQL; a SQLite file made with create_all carries none."""
    if engine.dialect.name == "postgresql":
        migrate.require_current(engine)  # passes
    else:
        with pytest.raises(ConfigError, match="couponry migrate"):
            migrate.require_current(engine)


# --- 4. a SQLite file in a missing directory ---------------------------------------------------


@pytest.mark.parametrize("variable", ["DATABASE_URL", "COUPONRY_DATABASE_URL"])
def test_a_sqlite_path_in_a_missing_directory_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str) -> None:
    missing = tmp_path / "no" / "such"
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("COUPONRY_SECRET_KEY", raising=False)  # the embedded default writes its key beside the file
    monkeypatch.setenv(variable, f"sqlite:///{missing / 'couponry.db'}")
    line = one_line_error(CliRunner().invoke(main, ["campaigns", "list"]))
    assert f"the directory {missing} does not exist" in line and variable in line, line
    assert not (tmp_path / "no").exists()


# --- 5. importing a CSV that is not UTF-8, or not CSV ----------------------------------------


@pytest.fixture
def import_cli(
    tmp_path: Path, postgres_engine: Engine | None, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[CliRunner, str]:
    """A runner on the database under test and a campaign to import into."""
    if postgres_engine is not None:
        request.getfixturevalue("engine")  # clean tables
        url = postgres_engine.url.render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp_path / 'import.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("COUPONRY_SECRET_KEY", SECRET)
    runner = CliRunner()
    created = runner.invoke(main, ["campaigns", "create", "--name", "Imports"])
    assert created.exit_code == 0, created.output
    return runner, created.stdout.strip()


def import_file(runner: CliRunner, campaign_id: str, path: Path, *options: str) -> Result:
    return runner.invoke(main, ["codes", "import", "--campaign", campaign_id, *options, str(path)])


def test_import_of_a_latin1_file_names_the_encoding_it_used(import_cli: tuple[CliRunner, str], tmp_path: Path) -> None:
    runner, campaign_id = import_cli
    path = tmp_path / "excel.csv"
    path.write_bytes("code,note\nCAFE10,café\nTHE20,déjà vu\n".encode("cp1252"))
    result = import_file(runner, campaign_id, path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"batch_id": json.loads(result.stdout)["batch_id"], "imported": 2, "encoding": "cp1252"}
    assert "read as cp1252" in result.stderr and "--encoding" in result.stderr


def test_import_of_a_utf16_file_with_its_bom(import_cli: tuple[CliRunner, str], tmp_path: Path) -> None:
    runner, campaign_id = import_cli
    path = tmp_path / "utf16.csv"
    path.write_bytes("code\r\nWIDE1\r\nWIDE2\r\n".encode("utf-16"))
    result = import_file(runner, campaign_id, path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["imported"] == 2 and json.loads(result.stdout)["encoding"] == "utf-16"


def test_import_with_a_wrong_encoding_is_one_line(import_cli: tuple[CliRunner, str], tmp_path: Path) -> None:
    runner, campaign_id = import_cli
    path = tmp_path / "latin.csv"
    path.write_bytes("code,note\nCAFE10,café\n".encode("latin-1"))
    line = one_line_error(import_file(runner, campaign_id, path, "--encoding", "utf-8"))
    assert "not valid utf-8 (line 2" in line and "--encoding" in line, line
    assert json.loads(import_file(runner, campaign_id, path, "--encoding", "latin-1").stdout)["imported"] == 1


def test_import_of_an_unterminated_quote_is_one_line_naming_it(import_cli: tuple[CliRunner, str], tmp_path: Path) -> None:
    runner, campaign_id = import_cli
    path = tmp_path / "quote.csv"
    path.write_text('code\nGOOD1\n"BROKEN2\nGOOD3\n')
    line = one_line_error(import_file(runner, campaign_id, path))
    assert "row 3: a quote opened on this line is never closed" in line and "nothing imported" in line, line


# --- 6. serve binds its port before anything else starts ----------------------------------------


@pytest.fixture
def queued_job(
    tmp_path: Path, postgres_engine: Engine | None, request: pytest.FixtureRequest
) -> Iterator[tuple[str, Engine, int]]:
    """(DATABASE_URL, engine, id of a job due now) on a database `couponry serve` accepts as is."""
    if postgres_engine is not None:
        engine: Engine = request.getfixturevalue("engine")
        url = engine.url.render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp_path / 'serve.db'}"
        engine = make_engine(url)
        migrate.upgrade(engine)
    with session_scope(engine) as session:
        shop = ensure_local_shop(session, "local.couponry.test")
        job_id = outbox.enqueue(session, "test.anything", {}, shop.id)
    assert job_id is not None
    yield url, engine, job_id
    if postgres_engine is None:
        engine.dispose()


def test_serve_on_a_port_in_use_exits_before_its_worker_takes_a_job(queued_job: tuple[str, Engine, int], tmp_path: Path) -> None:
    url, engine, job_id = queued_job
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": url,
            "COUPONRY_SECRET_KEY": SECRET,
            "COUPONRY_IN_PROCESS_WORKER": "true",
        }
        done = subprocess.run(
            [sys.executable, "-c", "from plugin.cli import main; main()", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    with Session(engine) as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempts) == ("queued", 0), done.stderr  # no worker ran
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port} is already in use" in lines[0] and "--port" in lines[0], lines[0]
