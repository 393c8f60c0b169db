"""`couponry admin setup-token`: a one-time link for the shop's owner login (never "whoever arrives first")."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import Engine

from plugin.cli import main
from plugin.errors import InvalidInput
from plugin.settings import Settings
from plugin.shops import users
from plugin.store.db import make_engine, session_scope
from tests.cli.test_cli import cli, cli_database_url  # noqa: F401  (fixtures)


def test_setup_token_prints_a_link_that_works_once(cli: CliRunner, cli_database_url: str, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("COUPONRY_PUBLIC_URL", "https://admin.example")
    first = cli.invoke(main, ["admin", "setup-token"], catch_exceptions=False)
    second = cli.invoke(main, ["admin", "setup-token"], catch_exceptions=False)
    assert first.exit_code == 0 and second.exit_code == 0, first.output
    link = first.stdout.strip()
    assert link.startswith("https://admin.example/admin/setup?token=") and link != second.stdout.strip()
    assert "works once" in first.stderr
    settings = Settings.from_env()
    engine: Engine = make_engine(cli_database_url)
    try:
        with session_scope(engine) as session:
            user = users.create_owner(
                session, settings, link.split("token=")[1], email="o@shop.example", password="x" * 12, confirm="x" * 12
            )
            assert user.role == "owner"
        with session_scope(engine) as session:
            try:
                users.read_setup_token(session, settings, link.split("token=")[1])
            except InvalidInput as exc:
                assert exc.reason == "bad_link"
            else:
                raise AssertionError("a spent setup link was accepted")
        again = cli.invoke(main, ["admin", "setup-token"], catch_exceptions=False)
        assert "already set up" in again.stderr
    finally:
        engine.dispose()
