"""Writers of a file SQLite database take turns through a lock file (`plugin.store.db.writer_turn`):
the next one goes the moment the holder is done, in another thread or another process."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from plugin.store.db import make_engine, write_cursor, writer_turn, writer_turn_on_loop


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


def test_a_turn_on_the_loop_is_waited_for_off_the_loop_and_nests(sqlite_engine: Engine) -> None:
    async def main() -> list[str]:
        seen: list[str] = []
        holding, release = threading.Event(), threading.Event()

        def other_thread() -> None:
            with writer_turn(sqlite_engine):
                holding.set()
                release.wait(5)
                seen.append("other done")

        thread = threading.Thread(target=other_thread)
        thread.start()
        holding.wait(5)

        async def ticker() -> None:
            seen.append("loop ran while waiting")
            release.set()

        ticking = asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(ticker()))
        async with writer_turn_on_loop(sqlite_engine):
            with write_cursor(sqlite_engine) as db:  # its own turn is part of ours: no deadlock
                db.execute("CREATE TABLE t (x INTEGER)", ())
            seen.append("ours")
        ticking.cancel()
        thread.join(5)
        return seen

    assert asyncio.run(main()) == ["loop ran while waiting", "other done", "ours"]


def test_a_turn_on_the_loop_cancelled_while_waiting_lets_go(sqlite_engine: Engine) -> None:
    async def main() -> None:
        with writer_turn(sqlite_engine):
            waiting = asyncio.create_task(_hold_on_loop(sqlite_engine))
            await asyncio.sleep(0.1)
            waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(_hold_on_loop(sqlite_engine), 5)  # not left held by the cancelled one

    asyncio.run(main())


async def _hold_on_loop(engine: Engine) -> None:
    async with writer_turn_on_loop(engine):
        pass
