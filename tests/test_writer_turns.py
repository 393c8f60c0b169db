"""Writers of a file SQLite database take turns through a lock file (`plugin.db.writer_turn`):
the next one goes the moment the holder is done, in another thread or another process."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from plugin.db import make_engine, write_cursor, writer_turn


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'turns.db'}")


def test_a_second_thread_waits_for_the_turn_and_goes_right_after(sqlite_engine: Engine) -> None:
    order: list[str] = []
    holding = threading.Event()

    def other() -> None:
        holding.wait()
        with writer_turn(sqlite_engine):
            order.append("other")

    thread = threading.Thread(target=other)
    thread.start()
    with writer_turn(sqlite_engine):
        holding.set()
        time.sleep(0.2)  # the other thread is waiting by now
        order.append("first")
    thread.join(5)
    assert order == ["first", "other"]


def _take_turn(database: str, ready: threading.Event, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    engine = make_engine(f"sqlite:///{database}")
    ready.set()
    with writer_turn(engine):
        out.put(time.monotonic())


def test_another_process_waits_for_the_turn(sqlite_engine: Engine) -> None:
    ctx = multiprocessing.get_context("spawn")
    got: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    ready = ctx.Event()
    with writer_turn(sqlite_engine):
        proc = ctx.Process(target=_take_turn, args=(str(sqlite_engine.url.database), ready, got))
        proc.start()
        assert ready.wait(30)
        time.sleep(0.5)  # it asked for its turn by now
        released = time.monotonic()
    assert got.get(timeout=30) >= released  # the monotonic clock is the machine's: comparable across processes
    proc.join(10)


def test_turns_nest_in_one_thread_and_the_engine_closes_its_files(sqlite_engine: Engine) -> None:
    with writer_turn(sqlite_engine), write_cursor(sqlite_engine) as db:  # write_cursor takes its turn too
        db.execute("CREATE TABLE t (x INTEGER)", ())
    assert Path(str(sqlite_engine.url.database) + ".writers").exists()
    opened = len(os.listdir("/proc/self/fd"))
    sqlite_engine.dispose()
    assert len(os.listdir("/proc/self/fd")) < opened
    with write_cursor(sqlite_engine) as db:  # a disposed engine still writes
        db.execute("INSERT INTO t VALUES (1)", ())
        assert db.rows("SELECT count(*) FROM t", ()) == [(1,)]


def test_other_databases_take_no_turn(tmp_path: Path) -> None:
    memory = make_engine("sqlite://")
    with writer_turn(memory), writer_turn(memory):
        pass
    assert list(tmp_path.iterdir()) == []
