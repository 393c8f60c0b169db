"""Engines and sessions; every dialect difference between SQLite and PostgreSQL lives here."""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, suppress
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy import Engine, Table, create_engine, event, make_url, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from plugin.errors import ConfigError
from plugin.store import rollups
from plugin.store.perengine import PerEngine

T = TypeVar("T")
_READ_ONLY = "couponry_read_only"
# a PostgreSQL that doesn't answer fails a command in seconds, not after the system's TCP
# timeout (minutes); a `connect_timeout` in DATABASE_URL wins
CONNECT_TIMEOUT_SECONDS = 10


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine tuned per dialect: SQLite in WAL mode with immediate write transactions."""
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        if not memory:
            _create_private_file(make_url(url).database)
        engine = create_engine(
            url,
            echo=echo,
            # room for every chunk size of every hot statement (`CHUNK_SIZES`) to stay prepared
            connect_args={"check_same_thread": False, "timeout": 30, "cached_statements": 512},
            poolclass=StaticPool if memory else None,
        )
        _tune_sqlite(engine)
        return engine
    connect_args = {} if "connect_timeout" in make_url(url).query else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return create_engine(url, echo=echo, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args=connect_args)


@contextmanager
def connected(engine: Engine) -> Iterator[Connection]:
    """A connection; or, when the database can't be reached, a ConfigError whose one line says
    where it tried, why it failed (as the driver puts it, without the password) and what to check."""
    try:
        conn = engine.connect()
    except OperationalError as exc:
        raise ConfigError(_unreachable(engine.url, exc)) from None
    with conn:
        yield conn


def _unreachable(url: URL, exc: OperationalError) -> str:
    reason = str(exc.orig or exc).strip().splitlines()[0]
    # psycopg: 'connection failed: connection to server at "h", port 1 failed: Connection refused'
    reason = reason.rpartition(" failed: ")[2].removeprefix("FATAL:").strip()
    if url.password:
        reason = reason.replace(str(url.password), "***")
    if url.get_backend_name() == "sqlite":
        return (
            f"could not open the SQLite database {url.database} ({reason}): "
            "check that its directory exists and this user may write there"
        )
    where = f"{url.host}:{url.port or 5432}" if url.host else "its local socket"
    return (
        f"could not connect to PostgreSQL at {where} ({reason}): check that the server is running and "
        "reachable from here, and the host, port, user, password and database name in DATABASE_URL"
    )


def _create_private_file(path: str | None) -> None:
    """A new SQLite database file is readable by its owner only (0600, like the key beside it):
    it holds API key digests, encrypted platform tokens and shoppers' emails. SQLite gives its
    -wal and -shm files the database file's mode. An existing file keeps the mode it has."""
    if not path or path.startswith("file:"):
        return
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy own transaction boundaries (pysqlite's implicit BEGIN is deferred,
        # and a deferred reader that later writes fails with SQLITE_BUSY instead of waiting).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()
        rollups.register_sqlite(dbapi_connection)  # the results triggers' day function

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front; readers (read_session) begin DEFERRED: in WAL
        # mode they see a snapshot and neither wait for nor block the writer.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reads only. On SQLite its transaction begins DEFERRED, so it takes no
    write lock (WAL readers don't block the writer, nor wait for it); on PostgreSQL it is an
    ordinary transaction. Nothing is committed: writing through it is a mistake."""
    with engine.connect() as conn:
        conn.execution_options(**{_READ_ONLY: True})
        with Session(bind=conn, expire_on_commit=False) as session:
            try:
                yield session
            finally:
                session.rollback()


# rows (or IN-list items) per statement for `chunked`: a few recurring sizes, each under every
# driver's parameter limit for the widest rows we write. Halving steps below 64 cut a batch of
# up to 64 (a webhook group commit under 50 busy connections) into at most 6 statements
CHUNK_SIZES = (256, 64, 32, 16, 8, 4, 2, 1)


def chunked(items: Sequence[T], sizes: Sequence[int] = CHUNK_SIZES) -> Iterator[Sequence[T]]:
    """Consecutive slices of `items` of the given sizes, largest first, as many of each as fit:
    a statement over many rows is cut into chunks of a few recurring sizes, so its few texts
    recur and stay prepared (SQLite prepares a 1,000-row VALUES in ~12 ms, 3x its run)."""
    start = 0
    for size in sizes:
        while len(items) - start >= size:
            yield items[start : start + size]
            start += size
    if start < len(items):  # only if `sizes` doesn't end with 1
        yield items[start:]


@lru_cache(maxsize=512)
def repeated(template: str, n: int, item: str = "?") -> str:
    """`template` for a chunk of `n` items, each written `item` (`{items}` in the template): one
    text per size, built once."""
    return template.format(items=", ".join([item] * n))


class Reader:
    """Raw DBAPI reads for the hot path, inside one read transaction (see `read_cursor`).

    Statements are written once with `?` placeholders; this class speaks each driver's dialect:
    placeholders, instants (SQLite keeps naive UTC text) and nothing else. Cast JSON columns
    to text in the SQL (`CAST(x AS TEXT)`) and parse them where they are cached.
    """

    def __init__(self, cursor: Any, sqlite: bool) -> None:
        self.cursor = cursor
        self.sqlite = sqlite

    def rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        if not self.sqlite:
            sql = sql.replace("?", "%s")
        self.cursor.execute(sql, tuple(params))
        return list(self.cursor.fetchall())

    def execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        if not self.sqlite:
            sql = sql.replace("?", "%s")
        self.cursor.execute(sql, tuple(params))
        return int(self.cursor.rowcount)

    def bulk(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """`rows` for a statement with many parameters (a multi-row VALUES, a long IN list); []
        when it returns none. On PostgreSQL it goes in the server's own `$n` placeholders: psycopg
        rewrites `%s` in Python, and caches that only for statements of up to 50 parameters.
        Never prepared: a generic plan for a long IN list can be many times slower than each
        execution's own plan (measured 15x on tables without statistics)."""
        if self.sqlite:
            return self.rows(sql, params)
        import psycopg  # the PostgreSQL driver

        with psycopg.RawCursor(self.cursor.connection) as cursor:
            cursor.execute(_numbered(sql), tuple(params), prepare=False)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement that returns no rows once per parameter row (the driver's executemany:
        one prepared statement; pipelined on PostgreSQL)."""
        if rows:
            self.cursor.executemany(sql if self.sqlite else sql.replace("?", "%s"), [tuple(r) for r in rows])

    def insert(self, table: Table, values: Mapping[str, Any], *, unique: Sequence[str]) -> int | None:
        """INSERT a row (all its columns given; instants converted); its new id, or None when a
        row with the same `unique` columns exists (ON CONFLICT DO NOTHING, on both dialects)."""
        names = list(values)
        bound = [self.instant(v) if isinstance(v, datetime) else v for v in values.values()]
        sql = (
            f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            f" ON CONFLICT ({', '.join(unique)}) DO NOTHING RETURNING id"
        )
        rows = self.rows(sql, bound)
        return int(rows[0][0]) if rows else None

    def instant(self, moment: datetime) -> Any:
        """A bind value for an aware UTC instant, stored the way `UtcDateTime` stores it."""
        if not self.sqlite:
            return moment
        if moment.tzinfo is not UTC:
            moment = moment.astimezone(UTC)
        # the text without its "+00:00": datetime.replace(tzinfo=None) costs more than the rest
        return moment.isoformat(" ", "microseconds")[:-6]

    @staticmethod
    def as_instant(value: Any) -> datetime | None:
        """An instant read back from a row: timezone-aware UTC on every dialect."""
        if value is None:
            return None
        if isinstance(value, str):
            try:  # SQLite's naive UTC text, read as UTC at once (cheaper than parse, then replace)
                return datetime.fromisoformat(value + "+00:00")
            except ValueError:  # text that names its own offset
                value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """`sql` with its `?` placeholders as PostgreSQL's `$1`, `$2`, ..."""
    parts = sql.split("?")
    return "".join(f"{part}${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1]


class _ThreadReaders:
    """One read connection per thread for a file SQLite database, outside the pool.

    A pool checkout and return cost more than the checkout's one indexed read (~30 µs against
    ~20 µs), so the hot path keeps a connection per thread: detached from the pool once made,
    so it was opened by the same `connect` hook (WAL, pragmas), and closed with the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.local = threading.local()
        self.opened: list[Any] = []
        self.lock = threading.Lock()

    def connection(self) -> Any:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            fairy = self.engine.raw_connection()
            fairy.detach()
            conn = self.local.conn = fairy.dbapi_connection
            with self.lock:
                self.opened.append(conn)
        return conn

    def close_all(self) -> None:
        with self.lock:
            opened, self.opened = self.opened, []
        for conn in opened:
            conn.close()
        self.local = threading.local()


_readers: PerEngine[_ThreadReaders] = PerEngine()


def _thread_readers(engine: Engine) -> _ThreadReaders | None:
    """The per-thread readers of a file SQLite engine; None for other engines (in-memory
    SQLite has one shared connection, PostgreSQL's pool is what spreads readers)."""
    found = _readers.get(engine)
    if found is None:
        if not is_sqlite(engine) or isinstance(engine.pool, StaticPool):
            return None
        found = _readers[engine] = _ThreadReaders(engine)
        event.listen(engine, "engine_disposed", lambda _engine: found.close_all())
    return found


def read_cursor(engine: Engine, *, snapshot: bool = True) -> AbstractContextManager[Reader]:
    """One read transaction on a DBAPI connection, without the ORM or Core machinery:
    DEFERRED on SQLite, like `read_session`, on the thread's own read connection.

    `snapshot=False` (SQLite) runs each statement on its own instead: for a caller whose
    one statement decides, or whose statements need not agree, it saves a BEGIN and a
    ROLLBACK. A read inside another on the same thread shares its transaction, if any."""
    readers = _thread_readers(engine)
    if readers is None:
        return _pooled_read(engine)
    return _ThreadRead(readers.connection(), snapshot)


class _ThreadRead:
    """`read_cursor` on a thread's own SQLite connection. A class rather than a generator:
    this is every validation's path, and a generator's context manager costs more."""

    __slots__ = ("begin", "conn", "cursor")

    def __init__(self, conn: Any, snapshot: bool) -> None:
        self.conn = conn
        self.begin = snapshot and not conn.in_transaction

    def __enter__(self) -> Reader:
        self.cursor = cursor = self.conn.cursor()
        if self.begin:
            try:
                cursor.execute("BEGIN")
            except BaseException:
                self.__exit__()
                raise
        return Reader(cursor, True)

    def __exit__(self, *_exc: object) -> None:
        self.cursor.close()
        if self.begin:
            self.conn.rollback()  # ends the read transaction, releasing its WAL snapshot


@contextmanager
def _pooled_read(engine: Engine) -> Iterator[Reader]:
    sqlite = is_sqlite(engine)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            if sqlite:
                cursor.execute("BEGIN")
            yield Reader(cursor, sqlite)
        finally:
            cursor.close()
            raw.rollback()  # ends the read transaction (a no-op when none is open)
    finally:
        raw.close()


class _WriterTurns:
    """Turns at the write lock of one file SQLite database, for the writers that write the most
    (webhook deliveries stored by the web processes, processed by the workers' intake).

    SQLite lets one writer in at a time; a writer that finds the lock taken sleeps in SQLite's
    busy handler, in steps that grow to 100 ms, and so comes back long after the lock is free.
    Two processes that both write all the time then spend most of their time asleep. These
    writers first take an exclusive `flock` on a file beside the database instead: the kernel
    wakes the next one the moment the holder lets go (or dies). One descriptor per thread, so
    threads of one process take turns too; nested turns in one thread are one turn."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.local = threading.local()
        self.opened: list[int] = []
        self.lock = threading.Lock()
        self.loop_fd: int | None = None

    @contextmanager
    def turn(self) -> Iterator[None]:
        depth = getattr(self.local, "depth", 0)
        fd = getattr(self.local, "fd", None)
        if fd is None:
            fd = self.local.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            with self.lock:
                self.opened.append(fd)
        if depth == 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
        self.local.depth = depth + 1
        try:
            yield
        finally:
            self.local.depth = depth
            if depth == 0:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @asynccontextmanager
    async def turn_on_loop(self) -> AsyncIterator[None]:
        """A turn for a task on the event loop: waited for in a thread, so the loop serves on
        meanwhile, then held by the loop's thread (its nested turns are part of it). One such
        turn at a time per process; its holder must not await before it lets go."""
        fd = self.loop_fd
        if fd is None:
            fd = self.loop_fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            with self.lock:
                self.opened.append(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: no thread needed
        except BlockingIOError:
            try:
                await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
            except BaseException:  # cancelled: the lock may have come before the cancellation did
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise
        depth = getattr(self.local, "depth", 0)
        self.local.depth = depth + 1
        try:
            yield
        finally:
            self.local.depth = depth
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close_all(self) -> None:
        with self.lock:
            opened, self.opened = self.opened, []
        self.loop_fd = None
        for fd in opened:
            os.close(fd)
        self.local = threading.local()


_turns: weakref.WeakKeyDictionary[Engine, _WriterTurns | None] = weakref.WeakKeyDictionary()


def _writer_turns(engine: Engine) -> _WriterTurns | None:
    if engine not in _turns:
        database = engine.url.database if is_sqlite(engine) else None
        made = _turns[engine] = _WriterTurns(database + ".writers") if database and database != ":memory:" else None
        if made is not None:
            event.listen(engine, "engine_disposed", lambda _engine: made.close_all())
    return _turns[engine]


@contextmanager
def writer_turn(engine: Engine) -> Iterator[None]:
    """Wait for this writer's turn at a file SQLite database's write lock (`_WriterTurns`); on
    other databases, go ahead (PostgreSQL's writers lock rows, not the database)."""
    turns = _writer_turns(engine)
    if turns is None:
        yield
        return
    with turns.turn():
        yield


@asynccontextmanager
async def writer_turn_on_loop(engine: Engine) -> AsyncIterator[None]:
    """`writer_turn` for a task on the event loop, waited for without blocking the loop
    (`_WriterTurns.turn_on_loop`); its holder must not await before it lets go."""
    turns = _writer_turns(engine)
    if turns is None:
        yield
        return
    async with turns.turn_on_loop():
        yield


@contextmanager
def write_cursor(engine: Engine) -> Iterator[Reader]:
    """One write transaction on a pooled DBAPI connection, without the ORM or Core machinery
    (`BEGIN IMMEDIATE` on SQLite, as every writer here, after its turn: `writer_turn`):
    committed when the block ends, rolled back if it raises. For hot-path writes whose
    statements `Reader` can speak."""
    sqlite = is_sqlite(engine)
    with writer_turn(engine):
        yield from _write_cursor(engine, sqlite)


def _write_cursor(engine: Engine, sqlite: bool) -> Iterator[Reader]:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            if sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            yield Reader(cursor, sqlite)
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            cursor.close()
    finally:
        raw.close()


@contextmanager
def session_reader(session: Session) -> Iterator[Reader]:
    """A `Reader` inside the session's own transaction (it sees the session's flushed writes)."""
    conn = session.connection()
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        yield Reader(cursor, is_sqlite(conn.engine))
    finally:
        cursor.close()


async def run(engine: Engine, fn: Callable[[], T]) -> T:
    """Run blocking database work from async code.

    SQLite work runs right on the event loop: one writer at a time is what SQLite wants, and
    a thread pool only adds lock contention (DESIGN.md). PostgreSQL work goes to a thread.
    """
    if is_sqlite(engine):
        return fn()
    return await anyio.to_thread.run_sync(fn)


def ping(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
