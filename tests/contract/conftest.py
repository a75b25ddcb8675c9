"""Fixtures of the store contract suite.

Every test here runs once per backend (SQLite and PostgreSQL): the autouse
fixture below puts `backend` in each test's closure, which is what
parametrizes `store`, `make_store` and `database_url`. Factories build the
usual scene (tasks, workers, claimed executions) through the public contract
only, with request bodies validated by `scitq_app.schema` as the server would.
`database_url` is overridden here only to recycle PostgreSQL databases.
"""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import no_postgres

from scitq_app.schema import validate

from .scene import LEASE, pg_run, task_spec


@pytest.fixture(autouse=True)
def every_backend(backend: str) -> str:
    """Run each contract test on every backend."""
    return backend


class DatabasePool:
    """PostgreSQL databases reused from one contract test to the next.

    A CREATE DATABASE costs about half a second; emptying a database (its
    schema dropped and recreated) through a connection kept open for the
    purpose costs a few milliseconds, which keeps the suite fast."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.free: list[str] = []
        self.made: dict[str, Any] = {}  # name -> the pool's own connection to it

    def url(self, name: str) -> str:
        return self.admin_dsn.rsplit("/", 1)[0] + "/" + name

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        import pg8000.native

        from scitq_app.store.postgres import parse_url
        name = "scitq_c_" + uuid.uuid4().hex[:12]
        pg_run(self.admin_dsn, f"CREATE DATABASE {name}")
        self.made[name] = pg8000.native.Connection(**parse_url(self.url(name)))
        return name

    def give_back(self, name: str) -> None:
        """Empty the database (ending connections a test left open) for the next test."""
        con = self.made[name]
        try:
            con.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            con.run("SET lock_timeout = '10s'")
            con.run("DROP SCHEMA public CASCADE")
            con.run("CREATE SCHEMA public")
        except Exception:  # noqa: BLE001 - a database that cannot be emptied is dropped instead
            self.drop(name)
            return
        self.free.append(name)

    def drop(self, name: str) -> None:
        try:
            self.made.pop(name).close()
        except Exception:  # noqa: BLE001 - the connection may be the reason we drop it
            pass
        pg_run(self.admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_databases(pg_admin_dsn: str | None) -> Iterator[DatabasePool | None]:
    if pg_admin_dsn is None:
        yield None
        return
    pool = DatabasePool(pg_admin_dsn)
    yield pool
    for name in list(pool.made):
        pool.drop(name)


@contextmanager
def _empty_database(backend: str, sqlite_path: str, pool: DatabasePool | None) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{sqlite_path}"
        return
    if pool is None:
        no_postgres()
    name = pool.take()
    try:
        yield pool.url(name)
    finally:
        pool.give_back(name)


@pytest.fixture
def database_url(backend: str, tmp_path, pg_databases: DatabasePool | None) -> Iterator[str]:
    """An empty database of the backend under test (PostgreSQL ones are recycled)."""
    with _empty_database(backend, f"{tmp_path}/scitq.db", pg_databases) as url:
        yield url


@pytest.fixture
def other_database_url(backend: str, tmp_path, pg_databases: DatabasePool | None) -> Iterator[str]:
    """A second empty database of the backend under test."""
    with _empty_database(backend, f"{tmp_path}/other.db", pg_databases) as url:
        yield url


@pytest.fixture
def submit(store) -> Callable[..., int]:
    """submit(**fields) -> the id of one new task."""
    def submit(**fields: Any) -> int:
        return store.create_tasks([task_spec(**fields)])[0]
    return submit


@pytest.fixture
def register(store) -> Callable[..., Any]:
    """register(name, **fields) -> a new Worker (concurrency 4 unless given)."""
    counter = iter(range(1, 1_000_000))

    def register(name: str | None = None, **fields: Any):
        body = validate("register", {"name": name or f"w{next(counter)}", "concurrency": 4, **fields})
        return store.register_worker(body)[0]
    return register


@pytest.fixture
def start(store, register, submit) -> Callable[..., dict[str, Any]]:
    """start(phase='assigned', worker=None, **task_fields) -> the execution dict of a
    new task claimed by `worker` (a new one if None) and reported up to `phase`."""
    def start(phase: str = "assigned", worker: Any = None, **fields: Any) -> dict[str, Any]:
        worker = worker or register()
        task_id = submit(priority=1_000_000, **fields)  # claimed before anything else pending
        got = store.claim(worker.id, 1, LEASE)
        assert [e["task_id"] for e in got] == [task_id]
        execution = got[0]
        for p in ("running", "uploading"):
            if phase == "assigned":
                break
            store.report(execution["id"], worker.id, {"phase": p})
            if p == phase:
                break
        return execution
    return start
