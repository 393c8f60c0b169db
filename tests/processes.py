"""Real processes for the multi-process tests: `couponry` commands as the Procfile runs them,
fresh PostgreSQL databases to run them against, and polling instead of sleeping."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]


def couponry_command(*args: str) -> list[str]:
    """The `couponry` console script of this environment (as the Procfile runs it), importing
    this checkout's code (PYTHONPATH, see `child_env`)."""
    script = Path(sys.executable).parent / "couponry"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from plugin.cli import main; main()", *args]


def child_env(**settings: str) -> dict[str, str]:
    """The environment of a child process: ours, minus any couponry settings of the machine,
    plus `settings`."""
    machine = ("DATABASE_URL", "REDIS_URL", "PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUPONRY_") and k not in machine}
    return {**env, "PYTHONPATH": str(ROOT), **settings}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def fresh_postgres_schema(database_url: str, prefix: str) -> Iterator[str]:
    """A new, empty schema (named `prefix` and a random tail) of the database of `database_url`,
    dropped afterwards; yields a URL whose connections use it (their search_path): to the
    processes, a database of their own. (Not a new database: dropping one forces a checkpoint
    of the whole server, tens of seconds on a busy machine.)"""
    url = make_url(database_url)
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        try:
            yield url.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    finally:
        admin.dispose()


class Processes:
    """Child processes of one test, each logging to its own file; all killed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as log:  # the child keeps its own handle
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        """Every child's log, for an assertion's message."""
        return "\n".join(f"--- {name} (exit {p.poll()})\n{self.log(name)[-3000:]}" for name, p in self.started.items())

    def stop_all(self) -> None:
        for proc in self.started.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.started.values():
            proc.wait(10)
