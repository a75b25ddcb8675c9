"""What a database backend gives the store: transactions over named queries.

A backend (`sqlite.SqliteBackend`, `postgres.PostgresBackend`) owns connections and
dialect details and nothing else. It opens a `Tx`; the operation modules (`admin`,
`batches`, `tasks`, `protocol`, `dispatcher`) are plain functions taking that `Tx`,
and `sql.SqlStore` composes them into the `Store` contract.
"""
from __future__ import annotations

import json
import threading
from json.encoder import encode_basestring_ascii
from contextlib import AbstractContextManager
from typing import Any, Callable, Mapping, Protocol, Sequence


_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)  # json.dumps would make one per call


def dumps(value: Any) -> str:
    """Compact, stable JSON: the form list parameters ({{ints :p}}) and JSON columns take."""
    if type(value) is list and all(type(v) is str for v in value):
        # a task's inputs and resources, the same text four times faster (a bulk makes 200,000)
        return "[" + ",".join(map(encode_basestring_ascii, value)) + "]"
    return _ENCODER.encode(value)


class Tx:
    """One open transaction (or, for reads, a connection in autocommit).

    `now` is the store clock's time when the transaction began: every time it writes
    is that one. `dialect` is "sqlite" or "postgres", for the few operations whose
    best form differs by more than a query's text (see protocol.claim)."""

    dialect = "abstract"

    def __init__(self, sql: Mapping[str, str], now: float) -> None:
        self.sql = sql
        self.now = now

    def execute(self, name: str, params: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """Run the named query; return its rows (as dicts) and the number of rows changed."""
        raise NotImplementedError

    def all(self, name: str, /, **params: Any) -> list[dict[str, Any]]:
        return self.execute(name, params)[0]

    def one(self, name: str, /, **params: Any) -> dict[str, Any] | None:
        rows = self.execute(name, params)[0]
        return rows[0] if rows else None

    def value(self, name: str, /, **params: Any) -> Any:
        row = self.one(name, **params)
        return None if row is None else next(iter(row.values()))

    def run(self, name: str, /, **params: Any) -> int:
        """Execute; return the number of rows changed."""
        return self.execute(name, params)[1]

    def pipeline(self, *statements: tuple[str, Mapping[str, Any]]) -> list[tuple[list[dict[str, Any]], int]]:
        """Execute the named queries (name, parameters) in order, each seeing what the ones before
        it did (and, in READ COMMITTED, what committed while it waited for their locks); their
        results as `execute` gives them. The backend may send them together (PostgreSQL: one round
        trip). An error in one raises after the others ran or were refused: nothing is half-read."""
        return [self.execute(name, params) for name, params in statements]

    def finish(self, *statements: tuple[str, Mapping[str, Any]]) -> list[tuple[list[dict[str, Any]], int]]:
        """Execute the transaction's last statements as `pipeline` does: the backend may send the
        COMMIT with them (PostgreSQL: all in one round trip), so nothing may run or fail after
        them. If one fails, the transaction rolls back."""
        return self.pipeline(*statements)

    def insert(self, name: str, /, **params: Any) -> int:
        """Execute an INSERT of one row; return its new id."""
        raise NotImplementedError

    def many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute the statement once per row, as fast as the backend allows (PostgreSQL
        sends the rows as one JSON parameter to the query `NAME_json`, which it must have)."""
        raise NotImplementedError

    def insert_tasks(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert task rows (`task_insert`), keeping the counts by batch and status exact."""
        self.many("task_insert", rows)

    def reserve_ids(self, table: str, n: int) -> list[int]:
        """n fresh ids for explicit inserts into `table` (task or execution)."""
        raise NotImplementedError

    def script(self, text: str) -> None:
        """Run DDL statements."""
        raise NotImplementedError


class Backend(Protocol):
    """A database: connections, transactions and the dialect's named queries."""

    dialect: str
    sql: Mapping[str, str]
    clock: Callable[[], float]

    def transaction(self, write: bool) -> AbstractContextManager[Tx]:
        """A transaction: write ones commit at the end (roll back on an exception) and hold
        the locks they take; read ones see each statement's latest committed state. Raises
        StoreUnavailable when the database cannot be reached, Conflict for a unique or
        foreign key violation."""
        ...

    def retryable(self, exc: BaseException) -> bool:
        """True for a deadlock or serialization failure: the whole transaction may be rerun."""
        ...

    def reclaim_space(self) -> None:
        """Give back to the file system some of the space deleted rows left (SQLite's
        incremental vacuum; PostgreSQL's autovacuum does it by itself)."""
        ...

    def announce(self, name: str) -> None:
        """Run the named notification query outside any transaction (nothing on SQLite)."""
        ...

    def listen(self, name: str, wake: Callable[[], None], stop: threading.Event,
               listening: Callable[[bool], None]) -> None:
        """On a connection of its own, run the named LISTEN query and call `wake` at each
        notification until `stop` is set, and `listening` as it starts and stops hearing
        them; returns at once where there are none (SQLite)."""
        ...

    def close(self) -> None:
        ...
