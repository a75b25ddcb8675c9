"""PostgreSQL backend (pg8000, pure Python).

A small pool of native pg8000 connections, READ COMMITTED transactions with
explicit row locks (`FOR UPDATE`, `SKIP LOCKED` for claims), bulk inserts sent as
one JSON parameter, and large inserts of tasks as a COPY sent by a thread while the caller
makes its next rows (`_CopyInFlight`). Deadlocks and serialization failures are retried
by `SqlStore` (sql.py).
"""
from __future__ import annotations

import json
import logging
import queue
import re
import secrets
import select
import struct
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import ConfigError, Conflict, MissingDependency, StoreUnavailable
from . import queries
from .backend import Tx

log = logging.getLogger(__name__)

RETRYABLE_CODES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
COPY_MIN = 100  # rows from which tasks are inserted by COPY (one round trip more than an INSERT)
# The frontend messages of PgTx._exchange: no parameter or result format codes (all text), a NULL
# parameter, Execute (unnamed portal, every row), Sync.
_NO_FORMATS = struct.pack("!H", 0)
_NULL = struct.pack("!i", -1)
_EXECUTE = b"E" + struct.pack("!i", 9) + b"\x00" + struct.pack("!i", 0)
_SYNC = b"S" + struct.pack("!i", 4)
# ... and the answers that end a command's: CommandComplete, EmptyQueryResponse, ErrorResponse
_COMMAND_ENDS = (b"C", b"I", b"E")


def _unnamed(sql: str) -> bytes:
    """Parse, Bind and Execute of `sql` (no parameters) as the unnamed statement: a command in a
    pipeline without the Sync, hence the ReadyForQuery packet, a simple query would cost."""
    q = sql.encode("ascii") + b"\x00"
    return (b"P" + struct.pack("!i", 4 + 1 + len(q) + 2) + b"\x00" + q + _NO_FORMATS
            + b"B" + struct.pack("!i", 12) + b"\x00\x00" + _NO_FORMATS * 3 + _EXECUTE)


_START, _COMMIT = "START TRANSACTION", "COMMIT"
# Around a statement planned for each run's values (PostgresBackend.custom), in its round trip.
_PLAN_CUSTOM = "SET plan_cache_mode = force_custom_plan"
_PLAN_AUTO = "SET plan_cache_mode = auto"
_COMMANDS = {sql: _unnamed(sql) for sql in (_START, _COMMIT, _PLAN_CUSTOM, _PLAN_AUTO)}
# ":x IS NULL OR" or "CAST(:x AS type) IS NULL OR": a filter that a parameter's value turns off
_OPTIONAL_FILTER = re.compile(r"(?::\w+|CAST\(\s*:\w+\s+AS\s+[\w ]+\))\s+IS\s+NULL\s+OR\b", re.IGNORECASE)
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]").search  # a third of translate's time on texts without any


def _code(exc: BaseException) -> str | None:
    arg = exc.args[0] if exc.args else None
    return arg.get("C") if isinstance(arg, dict) else None


class PgTx(Tx):
    dialect = "postgres"

    def __init__(self, con: Any, sql: Mapping[str, str], now: float, begin: bool = False,
                 custom: frozenset[str] = frozenset()) -> None:
        super().__init__(sql, now)
        self.con = con
        self.custom = custom  # the names of the statements planned for each run's values
        # Named queries are prepared once per connection: a run is then one round
        # trip (bind + execute) instead of three (parse, describe, execute).
        self.prepared: dict[str, Any] = con.__dict__.setdefault("scitq_prepared", {})
        # A write transaction's START goes with its first statement, in one round trip (a round
        # trip costs the server more CPU in system calls than most statements do in Python);
        # one that runs no statement costs none.
        self._begin = begin
        self.begun = False
        self.finished = False  # COMMIT went with the last statement (finish)
        self._copy: _CopyInFlight | None = None

    def _statement(self, name: str, suffix: str = "") -> Any:
        key = name + suffix
        ps = self.prepared.get(key)
        if ps is None:
            self.settle()  # preparing is a round trip of its own
            ps = self.prepared[key] = self.con.prepare(self.sql[name] + suffix)
            ps.scitq_custom = name in self.custom
        return ps

    def begin_now(self) -> None:
        """Send the transaction's START now (before what cannot carry it: DDL)."""
        self.settle()
        if self._begin and not self.begun:
            self.begun = True
            self.con.run("START TRANSACTION")

    def _exchange(self, items: Sequence[tuple[Any, Mapping[str, Any]]], commit: bool = False) -> list[Any]:
        """Run the prepared statements `items` (statement, parameters) in order, in one round trip
        with the transaction's START if it is not sent yet, and COMMIT if `commit`; their pg8000
        contexts (rows, columns, row count). Raises the first statement's error, after reading
        the answer to the end: the connection stays in step.

        Each statement runs in a snapshot of its own (taken when it starts: it sees what the ones
        before it did and waited for). They share one Sync: after a failure PostgreSQL skips the
        rest up to it, COMMIT included (the transaction is then rolled back by its owner), and it
        answers the whole round trip when it reaches the Sync, in one packet. pg8000 has no
        pipelining and sends a Flush after each Bind and Execute and a Sync after each statement
        (a packet of answer each): on this path the system calls cost more than the rest."""
        from pg8000 import converters, core
        self.settle()
        if self.finished:
            raise RuntimeError("a statement after the transaction's last")
        con = self.con
        values = [converters.make_params(con.py_types, ps.make_vals(params)) for ps, params in items]
        out = bytearray()
        answers, contexts = [], []  # a context per command sent, and those of `items`

        def command(sql: str) -> None:
            out.extend(_COMMANDS[sql])
            answers.append(core.Context(sql))

        if self._begin and not self.begun:
            self.begun = True  # from here on, a failure rolls back
            command(_START)
        encoding = con._client_encoding
        for (ps, _), vals in zip(items, values):
            custom = ps.scitq_custom
            if custom:
                command(_PLAN_CUSTOM)
            bind = bytearray(core.NULL_BYTE + ps.name_bin + _NO_FORMATS + core.H_pack(len(vals)))
            for v in vals:
                if v is None:
                    bind += _NULL
                else:
                    b = v.encode(encoding)
                    bind += core.i_pack(len(b)) + b
            bind += _NO_FORMATS
            out += core.BIND + core.i_pack(len(bind) + 4) + bind + _EXECUTE
            answers.append(core.Context(ps.statement, columns=ps.cols, input_funcs=ps.input_funcs))
            contexts.append(answers[-1])
            if custom:  # (in a transaction that fails, this is skipped, and the rollback undoes both)
                command(_PLAN_AUTO)
        if commit:
            command(_COMMIT)
        out += _SYNC
        core._write(con._sock, out)
        core._flush(con._sock)
        error = _read_answers(con, answers)
        if error is not None:
            raise error
        self.finished = commit
        return contexts

    def execute(self, name: str, params: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
        return _result(self._exchange([(self._statement(name), params)])[0])

    def pipeline(self, *statements: tuple[str, Mapping[str, Any]]) -> list[tuple[list[dict[str, Any]], int]]:
        return [_result(c) for c in self._exchange([(self._statement(n), p) for n, p in statements])]

    def finish(self, *statements: tuple[str, Mapping[str, Any]]) -> list[tuple[list[dict[str, Any]], int]]:
        if not self._begin:
            return self.pipeline(*statements)
        return [_result(c) for c in self._exchange([(self._statement(n), p) for n, p in statements], commit=True)]

    def insert(self, name: str, /, **params: Any) -> int:
        return int(self._exchange([(self._statement(name, " RETURNING id"), params)])[0].rows[0][0])

    def many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        for start in range(0, len(rows), 20_000):
            self.execute(name + "_json", {"rows": json.dumps(list(rows[start:start + 20_000]))})

    def insert_tasks(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """A large insert is a COPY: PostgreSQL reads its text format at half the cost of a JSON
        parameter (json_to_recordset), and the count trigger and foreign keys run as for an INSERT.

        The COPY is sent by a thread and its answer read by the next use of the connection
        (`settle`): PostgreSQL inserts these rows while the caller reads and checks its next ones."""
        if len(rows) < COPY_MIN:
            self.many("task_insert", rows)
            return
        data = copy_text(map(queries.in_order(self.sql["task_insert"]), rows)).encode("utf-8")
        self.settle()
        queries_sent = [self.sql["task_copy"]]
        if self._begin and not self.begun:
            self.begun = True
            queries_sent.insert(0, "START TRANSACTION")
        self._copy = _CopyInFlight(self.con, queries_sent, data)

    def settle(self) -> None:
        """Wait for the COPY in flight, if any, and read its answers: raises its error (the
        transaction then rolls back) or a broken connection's."""
        copy, self._copy = self._copy, None
        if copy is not None:
            copy.finish()

    def reserve_ids(self, table: str, n: int) -> list[int]:
        return sorted(int(i) for i in self.value("reserve_ids", table=table, n=n).split(","))

    def script(self, text: str) -> None:
        self.begin_now()  # DDL cannot go with it
        for stmt in queries.split_statements(text):
            self.con.run(stmt)


class _CopyInFlight:
    """A COPY FROM STDIN sent by a thread of its own, so that the caller's Python work and the
    database's insert run at once (a thread, because writing more than the socket's buffer holds
    waits for the database to read it; the sending thread holds the GIL only between writes).

    Everything goes as simple-protocol messages: the `queries` (the last one the COPY), the rows
    and CopyDone. `finish` reads one answer per query: PostgreSQL drops the rows it is sent after a
    COPY failed, so the connection stays in step whatever happened."""

    def __init__(self, con: Any, queries_sent: Sequence[str], data: bytes) -> None:
        from pg8000 import core
        self.con = con
        self.answers = len(queries_sent)
        for q in queries_sent:
            con.send_QUERY(q)
        core._flush(con._sock)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._send, args=(data, core.COPY_DONE_MSG), name="scitq-copy",
                                       daemon=True)
        self.thread.start()

    def _send(self, data: bytes, tail: bytes) -> None:
        from pg8000 import core
        sock = self.con._sock
        try:
            core._write(sock, core.COPY_DATA + core.i_pack(len(data) + 4))
            core._write(sock, data)
            core._write(sock, tail)
            core._flush(sock)
        except BaseException as e:  # given to finish(), in the caller's thread
            self.error = e

    def finish(self) -> None:
        from pg8000 import core
        self.thread.join()
        if self.error is not None:
            raise self.error
        con, error = self.con, None
        for _ in range(self.answers):
            context = core.Context(None)
            code = None
            while code != core.READY_FOR_QUERY:
                code, size = core.ci_unpack(core._read(con._sock, 5))
                data = core._read(con._sock, size - 4)
                if code != core.COPY_IN_RESPONSE:  # the rows were sent already
                    con.message_types[code](data, context)
            error = error or context.error
        if error is not None:
            raise error


def _result(context: Any) -> tuple[list[dict[str, Any]], int]:
    """A pg8000 context's rows as dicts, and the number of rows changed."""
    count = context.row_count if context.row_count is not None and context.row_count >= 0 else 0
    cols = context.columns
    if not cols:
        return [], count
    names = [c["name"] for c in cols]
    return [dict(zip(names, r)) for r in context.rows or []], count


def _read_answers(con: Any, answers: Sequence[Any]) -> BaseException | None:
    """Read the messages of one Sync's answer into `answers` (a pg8000 context per command, in
    order: a command ends at its CommandComplete or its error, after which PostgreSQL skips the
    rest); the first error, if any."""
    from pg8000 import core
    sock, handlers = con._sock, con.message_types
    spare = core.Context(None)  # what comes after an error (notices) or outside any command
    k = 0
    while True:
        code, size = core.ci_unpack(core._read(sock, 5))
        handlers[code](core._read(sock, size - 4), answers[k] if k < len(answers) else spare)
        if code == core.READY_FOR_QUERY:
            break
        if code in _COMMAND_ENDS:
            k += 1
    return next((c.error for c in answers if c.error is not None), spare.error)


def copy_text(rows: Iterable[Sequence[Any]]) -> str:
    """`rows` (of str, int, float or None) in COPY's text format: a line per row, tab-separated,
    \\N for NULL, backslash escapes for the characters that format gives a meaning."""
    return "".join("\t".join(["\\N" if v is None else (v.translate(_COPY_ESCAPES) if _COPY_SPECIAL(v) else v)
                               if isinstance(v, str) else str(v) for v in row]) + "\n" for row in rows)


def parse_url(url: str) -> dict[str, Any]:
    """postgresql://user:password@host:port/database -> pg8000 connect() arguments. As libpq
    reads them, a host that is a directory (`%2Fvar%2Frun%2Fpostgresql`, or `?host=/var/run/postgresql`
    with no host) names the directory of the server's Unix socket, `.s.PGSQL.PORT`."""
    try:
        u = urlparse(url)
        port = u.port  # a ValueError for a port that is not a number from 0 to 65535
    except ValueError as e:
        # the URL holds a password: name only what is wrong with it
        raise ConfigError(f"database URL must look like postgresql://USER:PASSWORD@HOST:PORT/DB ({e})") from None
    if u.scheme not in ("postgresql", "postgres") or not u.path.strip("/") or port == 0:
        raise ConfigError(f"database URL must look like postgresql://USER:PASSWORD@HOST:PORT/DB, "
                          f"not {u.scheme}://…")
    args: dict[str, Any] = {"user": unquote(u.username or "postgres"), "database": unquote(u.path.lstrip("/"))}
    if u.password is not None:
        args["password"] = unquote(u.password)
    # the host as written (urlparse's hostname is lower-cased: a socket's directory may not be)
    named, written = parse_qs(u.query).get("host"), u.netloc.rpartition("@")[2]
    host = named[-1] if named else unquote(written.rpartition(":")[0] if port else written)
    if host.startswith("/"):
        args["unix_sock"] = host if "/.s.PGSQL." in host else f"{host.rstrip('/')}/.s.PGSQL.{port or 5432}"
    else:
        args["host"] = (named[-1] if named else u.hostname) or "127.0.0.1"
        args["port"] = port or 5432
    return args


class PostgresBackend:
    """The PostgreSQL database at `url` (see the module's docstring)."""

    dialect = "postgres"

    def __init__(self, url: str, clock: Callable[[], float] = time.time, pool_size: int = 10) -> None:
        self.clock = clock
        self.sql: Mapping[str, str] = queries.load(self.dialect)
        # Statements with an optional filter ("CAST(:x AS ...) IS NULL OR col = :x") need the run's
        # values to pick an index: a plan made once for all values would read the whole table.
        # (A filter on another row's column, as claim_prospect's on its worker's, is planned whole.)
        self.custom = frozenset(name for name, text in self.sql.items() if _OPTIONAL_FILTER.search(text))
        try:
            import pg8000.native
        except ImportError:
            raise MissingDependency("PostgreSQL needs pg8000: pip install pg8000 (it is bundled in scitq.pyz)") \
                from None
        self._pg = pg8000.native
        self._args = parse_url(url)
        self._where = f"{self._args.get('host', self._args.get('unix_sock'))}:{self._args.get('port', '')}" \
                      f"/{self._args['database']}"
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        # what this process's announcements carry: its own come back to its listener, and its
        # Notifier woke its long-polls already (each wake makes them look again)
        self.origin = secrets.token_hex(8)
        self._size = pool_size
        self._open = 0
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        try:
            con = self._pg.Connection(timeout=30, application_name="scitq", **self._args)
            # Prepared statements, planned once for all their runs where PostgreSQL finds that
            # as good (its default; planning was two thirds of its time on a fleet's load): the
            # statements planned for each run's values (PostgresBackend.custom) go through PgTx._exchange.
            con.run(_PLAN_AUTO)
            return con
        except (self._pg.InterfaceError, OSError) as e:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {self._where}: {unreachable_cause(e)}") from None
        except self._pg.DatabaseError as e:
            raise StoreUnavailable(f"PostgreSQL at {self._where} refused the connection: "
                                   f"{_message(e)}") from None

    def _acquire(self) -> Any:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._open < self._size
            if grow:
                self._open += 1
        if grow:
            try:
                return self._connect()
            except BaseException:
                with self._lock:
                    self._open -= 1
                raise
        try:
            return self._pool.get(timeout=60)
        except queue.Empty:
            raise StoreUnavailable("no PostgreSQL connection free for 60 s") from None

    def _discard(self, con: Any) -> None:
        with self._lock:
            self._open -= 1
        try:
            con.close()
        except Exception:
            pass

    @contextmanager
    def transaction(self, write: bool) -> Iterator[Tx]:
        con = self._acquire()
        healthy = True
        try:
            if not write:
                # Reads run in autocommit, one snapshot per statement: two round trips
                # fewer on the hottest paths (heartbeats, claims' probes, listings),
                # and nothing read here needs its statements mutually consistent.
                yield PgTx(con, self.sql, self.clock(), custom=self.custom)
                return
            tx = PgTx(con, self.sql, self.clock(), begin=True, custom=self.custom)
            try:
                yield tx
                tx.settle()
                if tx.begun and not tx.finished:
                    con.run("COMMIT")
            except BaseException:
                if tx.begun and not tx.finished:
                    try:
                        tx.settle()
                    except self._pg.DatabaseError:
                        pass  # the error the transaction rolls back for, or a consequence of it
                    except Exception:
                        healthy = False
                        raise
                    try:
                        con.run("ROLLBACK")
                    except Exception:
                        healthy = False
                raise
        except OSError as e:
            healthy = False
            raise StoreUnavailable(f"lost the PostgreSQL connection to {self._where}: {e}") from None
        except self._pg.InterfaceError as e:
            # pg8000 also raises InterfaceError for programming errors; only a
            # broken connection is the database's unavailability.
            if not _broken(e):
                raise
            healthy = False
            raise StoreUnavailable(f"lost the PostgreSQL connection to {self._where}: {e}") from None
        except self._pg.DatabaseError as e:
            if _code(e) in ("23505", "23503"):  # unique / foreign key: a concurrent change won
                raise Conflict(f"the change conflicts with existing data: {_message(e)}") from None
            if _unavailable(e):
                healthy = False
                raise StoreUnavailable(f"PostgreSQL at {self._where} is unavailable: {_message(e)}") from None
            raise
        finally:
            if healthy:
                self._pool.put(con)
            else:
                self._discard(con)
                # one dead connection (a restart, a failover) means the idle ones are dead too:
                # drop them now rather than fail one request for each
                self._drain()

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self._pg.DatabaseError) and _code(exc) in RETRYABLE_CODES

    def reclaim_space(self) -> None:
        pass  # autovacuum's job

    def announce(self, name: str) -> None:
        with self.transaction(write=False) as tx:
            tx.run(name, origin=self.origin)

    def listen(self, name: str, wake: Callable[[], None], stop: threading.Event,
               listening: Callable[[bool], None]) -> None:
        """LISTEN on a connection of its own; the notifications pg8000 reads are handed to
        `wake`, but for this backend's own (`origin`). The socket is watched with select
        (pg8000 reads notifications only while it runs a statement: a `SELECT 1` collects them),
        and polled every second anyway, which also finds a lost connection: it is reopened after
        a pause."""
        while not stop.is_set():
            con = None
            try:
                con = self._connect()
                con.run(self.sql[name])
                listening(True)
                wake()  # announcements made while no connection listened
                while not stop.is_set():
                    if con.notifications:
                        heard = list(con.notifications)
                        con.notifications.clear()
                        if any(payload != self.origin for _pid, _channel, payload in heard):
                            wake()
                    select.select([con._usock], [], [], 1.0)  # pg8000's socket (no public name)
                    con.run(self.sql["listen_poll"])
            except (StoreUnavailable, OSError, self._pg.InterfaceError, self._pg.DatabaseError) as e:
                log.warning("listening for claimable tasks on PostgreSQL at %s: %s; again in 1 s", self._where,
                            e.message if isinstance(e, StoreUnavailable) else _message(e))
                listening(False)
                stop.wait(1.0)
            finally:
                if con is not None:
                    try:
                        con.close()
                    except Exception:
                        pass

    def _drain(self) -> None:
        while True:
            try:
                con = self._pool.get_nowait()
            except queue.Empty:
                break
            self._discard(con)

    def close(self) -> None:
        self._drain()


def _unavailable(exc: BaseException) -> bool:
    """A server-side error that says the database is away, not that the statement is wrong:
    connection exceptions (class 08), operator intervention (57P01 terminated by an admin or a
    shutdown, 57P02 crash shutdown, 57P03 cannot connect now), too many connections (53300)."""
    code = _code(exc) or ""
    return code.startswith("08") or code in ("57P01", "57P02", "57P03", "53300")


def _broken(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("network", "connection", "closed", "timed out", "timeout"))


def unreachable_cause(exc: BaseException) -> str:
    """Why a connection failed, in words (pg8000 wraps the socket error in a sentence about
    its own arguments): the first OS error in the exception's chain decides."""
    import socket
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    if isinstance(seen, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and listening on that port?)"
    if isinstance(seen, socket.gaierror):
        return "unknown host name"
    if isinstance(seen, (TimeoutError, socket.timeout)):
        return "no answer (timed out)"
    if isinstance(seen, OSError) and seen.strerror:
        return seen.strerror[0].lower() + seen.strerror[1:]
    if seen is None and _message(exc) == "network error":  # pg8000: the peer closed the connection
        return "the connection was closed before PostgreSQL answered (is PostgreSQL on that port?)"
    return _message(exc)


def _message(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.get("M", str(arg)) if isinstance(arg, dict) else str(arg)
