"""Settings are read once from the environment and never show secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin.errors import ConfigError
from plugin.settings import Settings


def test_defaults_are_the_embedded_sqlite_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///couponry.db"
    assert (settings.host, settings.port, settings.run_worker_in_process) == ("127.0.0.1", 8000, True)
    # the generated key is kept beside the database so restarts keep links and tokens valid
    assert Settings.from_env({}).secret_key == settings.secret_key
    assert (tmp_path / "couponry.secret").exists()


def test_environment_overrides(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgres://u:p@db/couponry",
            "COUPONRY_SECRET_KEY": "s3cret",
            "PORT": "9000",
            "REDIS_URL": "redis://r:6379/0",
            "COUPONRY_SHOPIFY_CLIENT_ID": "abc",
        }
    )
    assert settings.database_url == "postgresql+psycopg://u:p@db/couponry"
    assert settings.port == 9000 and settings.redis_url == "redis://r:6379/0"
    assert settings.connector_config["shopify"]["client_id"] == "abc"
    assert "s3cret" not in repr(settings)


def test_a_shared_database_needs_a_secret_key() -> None:
    with pytest.raises(ConfigError, match="COUPONRY_SECRET_KEY"):
        Settings.from_env({"DATABASE_URL": "postgresql://db/couponry"})
