"""The store: the only place that writes SQL. `open_store(url)` picks the backend.

Composition, not inheritance: a backend (`sqlite.py`, `postgres.py`) gives transactions over
named queries (`sql/*.sql`, `queries.py`); the operation modules `admin`, `batches`, `tasks`,
`protocol` and `dispatcher` are plain functions taking a transaction, each behaviour in one
place; `sql.SqlStore` composes them into the contract (`contract.py`), one transaction per call."""
from __future__ import annotations

import time
from typing import Callable

from ..errors import ConfigError
from .contract import Store
from .sql import SqlStore

__all__ = ["Store", "open_store"]


def open_store(url: str, clock: Callable[[], float] = time.time, pool_size: int = 10) -> Store:
    """Open `sqlite:///PATH` or `postgresql://USER:PASS@HOST:PORT/DB`.

    Drivers are imported here, lazily, so roles that never touch the database
    (the worker) never load them."""
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteBackend
        path = url[len("sqlite:///"):]
        if not path:
            raise ConfigError("sqlite URL needs a path: sqlite:///scitq.db or sqlite:////var/lib/scitq/scitq.db")
        return SqlStore(SqliteBackend(path, clock=clock, pool_size=min(pool_size, 8)))
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresBackend
        return SqlStore(PostgresBackend(url, clock=clock, pool_size=pool_size))
    raise ConfigError(f"unsupported database URL {url.split(':', 1)[0]}:… "
                      "(use sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB)")
