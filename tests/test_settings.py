"""Settings are read once from the environment and never show secrets."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
import time
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
            "COUPONRY_SECRET_KEY": "s3cret-0123456789-0123456789-abcd",
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


@pytest.mark.parametrize("key", ["", "short", "x" * 31])
def test_a_short_secret_key_is_refused_at_start_up(key: str) -> None:
    with pytest.raises(ValueError, match="at least 32 characters"):
        Settings.from_env({"COUPONRY_SECRET_KEY": key})
    assert Settings.from_env({"COUPONRY_SECRET_KEY": "x" * 32}).secret_key == "x" * 32


def test_the_generated_key_file_is_private_and_whole(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    key = Settings.from_env({"DATABASE_URL": url}).secret_key
    key_file = tmp_path / "shop.secret"
    assert key_file.read_text() == key and len(key) >= 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["shop.secret"]  # no temporary file left behind


def test_an_empty_key_file_is_refused_not_used(tmp_path: Path) -> None:
    (tmp_path / "shop.secret").write_text("")  # what the old non-atomic write could leave
    with pytest.raises(ValueError, match="delete the file"):
        Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}"})


def test_processes_started_together_share_one_full_key(tmp_path: Path) -> None:
    """Reproduces the race: several processes on a fresh directory, at the same instant."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from plugin.settings import Settings
        start = float(sys.argv[1])
        while time.time() < start:
            pass
        print(Settings.from_env({{"DATABASE_URL": "sqlite:///{tmp_path / "couponry.db"}"}}).secret_key)
        """
    )
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", script, str(start)], stdout=subprocess.PIPE, text=True) for _ in range(8)]
    keys = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(keys) == 1
    (key,) = keys
    assert len(key) >= 32 and (tmp_path / "couponry.secret").read_text() == key


def test_a_new_sqlite_database_is_private(tmp_path: Path) -> None:
    from plugin.store.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine.dispose()
    assert stat.S_IMODE((tmp_path / "shop.db").stat().st_mode) == 0o600


def test_the_worker_lease_is_configurable_and_never_below_a_second(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    assert Settings.from_env(env).worker_lease_seconds == 60.0
    assert Settings.from_env({**env, "COUPONRY_WORKER_LEASE_SECONDS": "2.5"}).worker_lease_seconds == 2.5
    with pytest.raises(ConfigError, match="COUPONRY_WORKER_LEASE_SECONDS must be at least 1"):
        Settings.from_env({**env, "COUPONRY_WORKER_LEASE_SECONDS": "0.5"})
