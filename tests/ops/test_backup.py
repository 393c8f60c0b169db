"""Backup and restore of the embedded default: taken while the app writes, restored into a new
directory where stored tokens still decrypt and emailed links still verify; damaged, foreign,
newer or in-use targets refused; PostgreSQL pointed at pg_dump."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine
from sqlmodel import select
from starlette.testclient import TestClient

from plugin.cli import main
from plugin.settings import Settings
from plugin.shops import tokens
from plugin.store import backup as archive
from plugin.store.db import make_engine, session_scope
from plugin.store.models import Shop
from tests.cli.test_cli_distribution import RULES

# A second process writing to the database the whole time: one row per short transaction.
WRITER = """
import sqlite3, sys, time, pathlib
db, stop, count = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
n = 0
while not stop.exists():
    conn.execute(
        "INSERT INTO auditevent (shop_id, action, subject, actor, details, created_at) "
        "VALUES (1, 'test.write', ?, 'writer', '{}', '2026-01-01 00:00:00')", (str(n),))
    n += 1
    count.with_suffix(".tmp").write_text(str(n))
    count.with_suffix(".tmp").replace(count)  # whole, never half-written
    time.sleep(0.002)
"""


def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr if result.stderr_bytes else ""


def _ok(env: dict[str, str], *args: str) -> str:
    code, out, err = _run(env, *args)
    assert code == 0, out + err
    return out


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The embedded default in its own directory: no secret configured, so it generates its key file."""
    for name in ("COUPONRY_SECRET_KEY", "COUPONRY_TOKEN_KEY", "COUPONRY_SIGNING_KEY", "DATABASE_URL", "COUPONRY_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "a").mkdir()
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'a' / 'couponry.db'}"}


def _writes(path: Path) -> int:
    return int(path.read_text()) if path.exists() else 0


def _wait_for(writer: subprocess.Popen[bytes], count: Path, at_least: int) -> int:
    deadline = time.monotonic() + 30
    while (n := _writes(count)) < at_least:
        assert writer.poll() is None, writer.communicate()[1].decode()
        assert time.monotonic() < deadline, f"the writer is stuck at {n} rows"
        time.sleep(0.01)
    return n


def _audit_rows(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT count(*) FROM auditevent WHERE action = 'test.write'").fetchone()[0])


def _open_link(settings: Settings, link: str) -> tuple[int, str]:
    from plugin.web.app import create_app

    engine = make_engine(settings.database_url)
    try:
        with TestClient(create_app(settings, engine=engine)) as client:
            answer = client.get(urlsplit(link).path)
            return answer.status_code, answer.text
    finally:
        engine.dispose()


def test_a_backup_taken_while_the_app_writes_restores_whole_in_a_new_directory(embedded: dict[str, str], tmp_path: Path) -> None:
    a = tmp_path / "a" / "couponry.db"
    campaign_id = _ok(embedded, "campaigns", "create", "--name", "Spring", "--rules", RULES).strip().split()[0]
    _ok(embedded, "codes", "generate", "--campaign", campaign_id, "--count", "20000")  # a few MB to copy
    claim = _ok(embedded, "distribution", "claim", "--campaign", campaign_id, "ann@example.com").splitlines()
    code, link = claim[0].split("\t")[1], claim[1]
    settings_a = Settings.from_env(embedded)
    engine_a = make_engine(settings_a.database_url)
    with session_scope(engine_a) as session:
        stored = tokens.encrypt(settings_a, "shpat_1")
        session.add(Shop(platform="shopify", domain="a.myshopify.com", access_token_encrypted=stored))
    engine_a.dispose()

    stop, count = tmp_path / "stop", tmp_path / "count"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(a), str(stop), str(count)], stderr=subprocess.PIPE)
    try:
        before = _wait_for(writer, count, 20)
        out = _ok(embedded, "backup", str(tmp_path / "backup.tar"))
        during = _writes(count)
        _wait_for(writer, count, during + 20)  # the writer goes on after the backup
        # a database another process has open is never restored over, even by force
        refused = _run(embedded, "restore", str(tmp_path / "backup.tar"), "--force")
        assert refused[0] == 1 and "open in another process: stop couponry" in refused[2]
    finally:
        stop.touch()
        _, errors = writer.communicate(timeout=30)
    assert writer.returncode == 0, errors.decode()  # never refused a write ("database is locked")
    assert f"backed up {a}" in out

    new = {"DATABASE_URL": f"sqlite:///{tmp_path / 'c' / 'couponry.db'}"}
    (tmp_path / "c").mkdir()
    restored = _ok(new, "restore", str(tmp_path / "backup.tar"))
    # only the key the command itself generated on the empty directory was replaced (kept beside)
    assert "restored" in restored and "couponry.db.before-restore" not in restored
    c = tmp_path / "c" / "couponry.db"
    with sqlite3.connect(c) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert before <= _audit_rows(c) <= during  # one snapshot taken while the writer wrote
    assert (tmp_path / "c" / "couponry.secret").read_text() == (tmp_path / "a" / "couponry.secret").read_text()
    assert (tmp_path / "c" / "couponry.secret").stat().st_mode & 0o777 == 0o600

    # the app there: stored tokens decrypt, the emailed link verifies and reveals the same code
    settings_c = Settings.from_env(new)
    engine_c = make_engine(settings_c.database_url)
    with session_scope(engine_c) as session:
        shop = session.exec(select(Shop).where(Shop.domain == "a.myshopify.com")).one()
        assert tokens.decrypt(settings_c, str(shop.access_token_encrypted)).access_token == "shpat_1"
    engine_c.dispose()
    status, page = _open_link(settings_c, link)
    assert status == 200 and code in page


def test_restore_refuses_to_replace_a_database_without_force_and_keeps_what_it_replaces(
    embedded: dict[str, str], tmp_path: Path
) -> None:
    _ok(embedded, "campaigns", "create", "--name", "First")
    _ok(embedded, "backup", str(tmp_path / "one.tar"))
    code, _out, err = _run(embedded, "backup", str(tmp_path / "one.tar"))
    assert code == 1 and "exists: choose a new file name" in err
    _ok(embedded, "campaigns", "create", "--name", "Second")
    code, _out, err = _run(embedded, "restore", str(tmp_path / "one.tar"))
    assert code == 1 and "already exist: restore into an empty place, or pass --force" in err
    out = _ok(embedded, "restore", str(tmp_path / "one.tar"), "--force")
    assert "kept the replaced" in out and ".before-restore-" in out
    names = _ok(embedded, "campaigns", "list")
    assert "First" in names and "Second" not in names
    kept = next((tmp_path / "a").glob("couponry.db.before-restore-*"))
    with sqlite3.connect(kept) as conn:
        assert conn.execute("SELECT count(*) FROM campaign").fetchone()[0] == 2


def _rewrite(source: Path, target: Path, *, database: bytes | None = None, manifest: dict | None = None) -> None:  # type: ignore[type-arg]
    with tarfile.open(source) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    if database is not None:
        members[archive.DATABASE] = database
    if manifest is not None:
        members[archive.MANIFEST] = json.dumps(manifest).encode()
    with tarfile.open(target, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_damaged_foreign_or_newer_backup_is_refused_and_nothing_is_restored(embedded: dict[str, str], tmp_path: Path) -> None:
    _ok(embedded, "campaigns", "list")
    good = tmp_path / "good.tar"
    _ok(embedded, "backup", str(good))
    with tarfile.open(good) as tar:
        manifest = json.loads(tar.extractfile(archive.MANIFEST).read())  # type: ignore[union-attr]
        database = tar.extractfile(archive.DATABASE).read()  # type: ignore[union-attr]
    damaged = bytearray(database)
    damaged[len(damaged) // 2] ^= 0xFF
    _rewrite(good, tmp_path / "damaged.tar", database=bytes(damaged))

    newer_db = tmp_path / "newer.db"
    newer_db.write_bytes(database)
    with sqlite3.connect(newer_db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    conn.close()
    newer = newer_db.read_bytes()
    files = dict(manifest["files"])
    files[archive.DATABASE] = {"sha256": hashlib.sha256(newer).hexdigest(), "bytes": len(newer)}
    _rewrite(good, tmp_path / "newer.tar", database=newer, manifest={**manifest, "files": files, "revision": "ffffffffffff"})
    (tmp_path / "foreign.tar").write_bytes(b"not a tar at all" * 100)

    target = {"DATABASE_URL": f"sqlite:///{tmp_path / 'c' / 'couponry.db'}"}
    (tmp_path / "c").mkdir()
    for name, says in (
        ("damaged.tar", "does not match its checksum: the file is damaged; nothing was restored"),
        ("newer.tar", "made by a newer couponry (migration revision ffffffffffff"),
        ("foreign.tar", "is not a couponry backup"),
    ):
        code, _out, err = _run(target, "restore", str(tmp_path / name))
        assert code == 1 and says in err, (name, err)
        assert not (tmp_path / "c" / "couponry.db").exists()
    assert not list((tmp_path / "c").glob(".couponry-restore-*"))  # no leftovers


def test_on_postgresql_backup_and_restore_explain_pg_dump(engine: Engine, database_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": database_url, "COUPONRY_SECRET_KEY": "test-secret-0123456789-abcdefghijklm"}
    if not database_url.startswith("postgresql"):
        env["DATABASE_URL"] = "postgresql://postgres@127.0.0.1:5432/unused"  # never connected to
    for command in ("backup", "restore"):
        code, _out, err = _run(env, command, str(tmp_path / "x.tar"))
        assert code == 1 and "pg_dump --format=custom" in err and "pg_restore" in err
    assert not (tmp_path / "x.tar").exists()
