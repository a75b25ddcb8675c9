"""SQLite backend (sqlite-utils over the stdlib sqlite3 driver).

A small pool of connections shared by all threads (a connection per thread
would give each of the server's many threads its own page cache), WAL
journal so readers never block the writer, a busy timeout so writers queue
instead of failing, and BEGIN IMMEDIATE for write transactions so a
transaction never has to upgrade its lock midway.
"""
from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from ..errors import Conflict, MissingDependency, StoreUnavailable
from . import queries
from .backend import Tx

if TYPE_CHECKING:
    import sqlite_utils

BUSY_TIMEOUT_MS = 30_000
# Rows from which an insert of tasks goes without the per-row count trigger (SqliteTx.insert_tasks):
# below, the two schema changes cost more than the trigger saves.
UNCOUNTED_INSERT_MIN = 500


@lru_cache(maxsize=1)
def count_insert_trigger() -> str:
    """The CREATE TRIGGER of task_count_insert, as the schema has it (triggers_sqlite.sql)."""
    return next(stmt for stmt in queries.split_statements(queries.read_resource("sql", "triggers_sqlite.sql"))
                if stmt.startswith("CREATE TRIGGER task_count_insert "))


class SqliteTx(Tx):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, sql: Mapping[str, str], now: float) -> None:
        super().__init__(sql, now)
        self.conn = conn

    def execute(self, name: str, params: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
        cur = self.conn.execute(self.sql[name], params)
        rows = cur.fetchall()
        if cur.description is None:
            return [], cur.rowcount
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in rows], cur.rowcount

    def insert(self, name: str, /, **params: Any) -> int:
        cur = self.conn.execute(self.sql[name], params)
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.conn.executemany(self.sql[name], rows)

    def insert_tasks(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """SQLite runs the count trigger once per row, more than half of a large insert's time: a
        large insert goes without it and adds its counts in one statement per batch and status.
        The trigger is dropped and re-created inside this transaction (SQLite's DDL is
        transactional and its writers one at a time): no other connection ever sees the table
        without it, and a transaction rolled back restores it."""
        if len(rows) < UNCOUNTED_INSERT_MIN:
            self.many("task_insert", rows)
            return
        self.conn.execute(self.sql["task_count_insert_trigger_drop"])
        insert = self.sql["task_insert"]
        # a quarter faster than binding by name
        self.conn.executemany(queries.positional(insert), map(queries.in_order(insert), rows))
        counts: dict[tuple[int, str], int] = {}
        for r in rows:
            counts[r["batch_id"], r["status"]] = counts.get((r["batch_id"], r["status"]), 0) + 1
        self.conn.executemany(self.sql["task_count_add"],
                              [{"batch_id": b, "status": st, "n": n} for (b, st), n in counts.items()])
        self.conn.execute(count_insert_trigger())

    def reserve_ids(self, table: str, n: int) -> list[int]:
        # Safe because write transactions hold SQLite's single write lock.
        top = int(self.value("sequence_value", table=table) or 0)
        return list(range(top + 1, top + n + 1))

    def script(self, text: str) -> None:
        for stmt in queries.split_statements(text):
            self.conn.execute(stmt)


def _enter_wal(db: "sqlite_utils.Database") -> None:
    """Put the database in WAL mode, waiting up to the busy timeout for the other connections.

    Switching the journal mode answers "database is locked" at once, without the busy handler,
    when another connection opens or switches the same new file at that moment (several server
    threads or `db init` processes starting together): retried here like any busy statement.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            db.enable_wal()  # a no-op when the file is in WAL mode already
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class SqliteBackend:
    """The SQLite database at `path` (see the module's docstring)."""

    dialect = "sqlite"

    def __init__(self, path: str, clock: Callable[[], float] = time.time, pool_size: int = 8) -> None:
        self.clock = clock
        self.sql: Mapping[str, str] = queries.load(self.dialect)
        try:
            import sqlite_utils
        except ImportError:
            raise MissingDependency("the server needs sqlite-utils: pip install sqlite-utils "
                                    "(it is bundled in scitq.pyz)") from None
        self._sqlite_utils = sqlite_utils
        self.path = path
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._size = pool_size
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise StoreUnavailable(f"cannot open SQLite database {path}: {parent} is not a directory")

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            db = self._sqlite_utils.Database(conn, execute_plugins=False)
            # Before the first table exists, this makes the file shrink as rows are pruned
            # (reclaim_space); on an older file it changes nothing until a VACUUM.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            _enter_wal(db)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {e}") from None
        return conn

    def _acquire(self) -> sqlite3.Connection:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = len(self._conns) < self._size
            if grow:
                conn = self._connect()
                self._conns.append(conn)
                return conn
        try:
            return self._pool.get(timeout=BUSY_TIMEOUT_MS / 1000)
        except queue.Empty:
            raise StoreUnavailable(f"no SQLite connection free for {BUSY_TIMEOUT_MS // 1000} s") from None

    @contextmanager
    def transaction(self, write: bool) -> Iterator[Tx]:
        conn = self._acquire()
        try:
            if not write:
                # Reads run in autocommit, one snapshot per statement, as on PostgreSQL:
                # two statements fewer on the hottest paths (heartbeats, claim probes).
                yield SqliteTx(conn, self.sql, self.clock())
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"SQLite database {self.path} is unavailable: {e}") from None
            try:
                yield SqliteTx(conn, self.sql, self.clock())
                conn.execute("COMMIT")
            except sqlite3.IntegrityError as e:
                conn.execute("ROLLBACK")
                raise Conflict(f"the change conflicts with existing data: {e}") from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            self._pool.put(conn)

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)

    def reclaim_space(self) -> None:
        # A few pages at a time, in its own short write: the file shrinks without a long lock.
        conn = self._acquire()
        try:
            # run to completion (sqlite3_exec): a single step of this pragma frees one page only
            conn.executescript("PRAGMA incremental_vacuum(512);")
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"SQLite database {self.path} is unavailable: {e}") from None
        finally:
            self._pool.put(conn)

    def announce(self, name: str) -> None:
        pass  # one server process serves a SQLite database: its own Notifier tells its claims

    def listen(self, name: str, wake: Callable[[], None], stop: threading.Event,
               listening: Callable[[bool], None]) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()
        self._pool = queue.LifoQueue()
