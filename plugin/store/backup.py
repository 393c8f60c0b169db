"""Backup and restore of the embedded default: the SQLite database and the key file beside it.

A backup is one tar file: the database, copied with SQLite's online backup API (a consistent
snapshot taken while the app keeps writing: WAL lets writers go on while the copy reads), the
key file (without it stored platform tokens cannot be decrypted nor signed links verified),
and `manifest.json` naming each file with its SHA-256 and the database's migration revision.

Restoring verifies every checksum and that this couponry knows the backup's revision (a newer
one's database would be refused at start anyway), refuses a database some process has open,
and refuses to replace a database or key file that exists unless forced; what it replaces is
kept beside, renamed `*.before-restore-<time>`. A key file with no database beside it is no
data (any couponry command on a new directory generates one) and is replaced without --force.
PostgreSQL is backed up with pg_dump: the commands answer with PG_DUMP_HELP instead.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from plugin.errors import PluginError
from plugin.settings import embedded_key_file
from plugin.store import migrate

FORMAT = 1
MANIFEST = "manifest.json"
DATABASE = "couponry.db"  # names inside the archive, whatever the files are called on disk
KEY_FILE = "couponry.secret"
_CHUNK = 1024 * 1024

PG_DUMP_HELP = (
    "couponry backup and restore copy the embedded SQLite database; on PostgreSQL use its own tools: "
    'pg_dump --format=custom --file=couponry.dump "$DATABASE_URL", and to restore '
    'pg_restore --clean --if-exists --no-owner --dbname="$DATABASE_URL" couponry.dump. '
    "Keep COUPONRY_SECRET_KEY (and COUPONRY_TOKEN_KEY, COUPONRY_SIGNING_KEY if set) with the dump: "
    "without them stored platform tokens cannot be decrypted nor links verified"
)


class BackupError(PluginError):
    status = 409
    reason = "backup_refused"


@dataclass(frozen=True)
class BackupReport:
    path: Path
    revision: str | None
    key_file: bool  # the key file was found and archived
    bytes: int


@dataclass(frozen=True)
class RestoreReport:
    database: Path
    revision: str | None
    key_file: Path | None
    kept: tuple[Path, ...]  # what was replaced, renamed beside


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _revision(database: Path) -> str | None:
    with _closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:  # no such table: never migrated
            return None
    return None if row is None else str(row[0])


@contextmanager
def _closing(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        yield conn
    finally:
        conn.close()


def backup(database: Path, target: Path) -> BackupReport:
    """Write a backup of `database` (and its key file) to the tar file `target`, which must
    not exist. Safe while the app runs: the copy is one read transaction's snapshot."""
    if not database.is_file():
        raise BackupError(f"there is no database at {database} to back up")
    if target.exists():
        raise BackupError(f"{target} exists: choose a new file name (a backup never overwrites one)")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".couponry-backup-") as work:
        copy = Path(work) / DATABASE
        with _closing(sqlite3.connect(database, timeout=30)) as source, _closing(sqlite3.connect(copy)) as dest:
            source.backup(dest)  # all pages in one step: one consistent snapshot, writers go on (WAL)
        files = {DATABASE: copy}
        key_file = embedded_key_file(database)
        if key_file.is_file():
            files[KEY_FILE] = key_file
        revision = _revision(copy)
        manifest = {
            "format": FORMAT,
            "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "revision": revision,
            "files": {name: {"sha256": _sha256(path), "bytes": path.stat().st_size} for name, path in files.items()},
        }
        partial = Path(work) / "backup.tar"
        with tarfile.open(partial, "w") as tar:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
            for name, path in files.items():
                tar.add(path, arcname=name, recursive=False, filter=_private)
        partial.chmod(0o600)  # it holds the key
        os.link(partial, target)  # whole or not at all, and never over a file that appeared meanwhile
    return BackupReport(target, revision, KEY_FILE in files, target.stat().st_size)


def _private(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
    return info


@contextmanager
def _open_archive(source: Path) -> Iterator[tarfile.TarFile]:
    if not tarfile.is_tarfile(source):
        raise BackupError(f"{source} is not a couponry backup (not a tar file)")
    with tarfile.open(source, "r") as tar:
        yield tar


def _read_manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        member = tar.getmember(MANIFEST)
        stream = tar.extractfile(member)
        assert stream is not None
        manifest: dict[str, Any] = json.loads(stream.read())
    except (KeyError, AssertionError, ValueError):
        raise BackupError("this file is not a couponry backup: it has no readable manifest.json") from None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict) or DATABASE not in manifest["files"]:
        raise BackupError(f"this backup's manifest is not one this couponry reads (format {manifest.get('format')!r})")
    return manifest


def _extract_verified(tar: tarfile.TarFile, manifest: dict[str, Any], work: Path) -> dict[str, Path]:
    """The archive's files, written under `work` (by name: nothing in the archive chooses a
    path) and each checked against the manifest's checksum and size."""
    extracted: dict[str, Path] = {}
    for name, expected in manifest["files"].items():
        if name not in (DATABASE, KEY_FILE):
            raise BackupError(f"this backup names an unexpected file {name!r}")
        try:
            member = tar.getmember(name)
        except KeyError:
            raise BackupError(f"this backup is missing {name}, which its manifest lists") from None
        stream = tar.extractfile(member) if member.isfile() else None
        if stream is None:
            raise BackupError(f"{name} in this backup is not a regular file")
        out = work / name
        digest = hashlib.sha256()
        with out.open("wb") as f:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if digest.hexdigest() != expected.get("sha256") or out.stat().st_size != expected.get("bytes"):
            raise BackupError(f"{name} in this backup does not match its checksum: the file is damaged; nothing was restored")
        extracted[name] = out
    return extracted


def in_use(database: Path) -> bool:
    """Whether some process has the database open. Every connection to a WAL database holds a
    shared lock on the shared-memory file's "dead man switch" byte (SQLite's unix VFS, offset
    128) while it is open; an exclusive probe of that byte fails while any other process does.
    (Locks are per process: this process's own connections do not count.)"""
    shm = database.with_name(database.name + "-shm")
    try:
        fd = os.open(shm, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 128)
        return False
    finally:
        os.close(fd)


def _has_data(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def restore(source: Path, database: Path, *, force: bool = False, now: datetime) -> RestoreReport:
    """Restore the backup `source` as `database` (and its key file)."""
    if not source.is_file():
        raise BackupError(f"there is no backup at {source}")
    known, _heads = migrate.known_revisions()
    with _open_archive(source) as tar, tempfile.TemporaryDirectory(dir=database.parent, prefix=".couponry-restore-") as work:
        manifest = _read_manifest(tar)
        files = _extract_verified(tar, manifest, Path(work))
        revision = _revision(files[DATABASE])
        if revision != manifest.get("revision"):
            raise BackupError("this backup's database is not at the revision its manifest records: nothing was restored")
        if revision is not None and revision not in known:
            raise BackupError(
                f"this backup was made by a newer couponry (migration revision {revision}, unknown to this one): "
                "restore it with that version or a later one"
            )
        key_file = embedded_key_file(database)
        if in_use(database):
            raise BackupError(f"{database} is open in another process: stop couponry (web and worker) before restoring")
        existing = [p for p in (database, key_file) if _has_data(database) and _has_data(p)]
        if existing and not force:
            names = " and ".join(str(p) for p in existing)
            raise BackupError(f"{names} already exist: restore into an empty place, or pass --force to replace them")
        kept = _put_in_place(database, key_file, files, stamp=now.strftime("%Y%m%dT%H%M%S"))
    return RestoreReport(database, revision, key_file if KEY_FILE in files else None, kept)


def _put_in_place(database: Path, key_file: Path, files: dict[str, Path], *, stamp: str) -> tuple[Path, ...]:
    kept: list[Path] = []
    # the old database's -wal/-shm go with it: left behind, SQLite would replay the old WAL
    # into the restored file
    moving: list[tuple[Path, str | None]] = [
        (database, DATABASE),
        (database.with_name(database.name + "-wal"), None),
        (database.with_name(database.name + "-shm"), None),
    ]
    if KEY_FILE in files:  # else the keys come from the environment: the key file is left alone
        moving.append((key_file, KEY_FILE))
    for path, _name in moving:
        if path.exists():
            aside = path.with_name(f"{path.name}.before-restore-{stamp}")
            os.replace(path, aside)
            kept.append(aside)
    for path, name in moving:
        if name is not None and name in files:
            os.replace(files[name], path)  # same directory (the temporary one is inside it): atomic
            if name == KEY_FILE:
                path.chmod(0o600)
    return tuple(kept)
