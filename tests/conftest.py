"""Shared fixtures. Backends: every store-backed fixture runs on SQLite and on a
real PostgreSQL (SCITQ_TEST_PG_DSN, or a throwaway cluster started here).
Without PostgreSQL the postgres cases skip, unless SCITQ_TEST_REQUIRE_PG=1
(as in CI), where they fail."""
from __future__ import annotations

import os
import sys
import uuid
from typing import Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scitq_app.config import load_config  # noqa: E402
from scitq_app.store import open_store  # noqa: E402
from tests.support.postgres import ThrowawayPostgres  # noqa: E402
from tests.support.machines import machines, pytest_xdist_make_scheduler  # noqa: E402,F401 - fixture, hook

BACKENDS = ["sqlite", "postgres"]


def no_postgres() -> None:
    """Skip the running test for want of PostgreSQL, or fail it when CI requires PostgreSQL."""
    if os.environ.get("SCITQ_TEST_REQUIRE_PG") == "1":
        pytest.fail("PostgreSQL is required (SCITQ_TEST_REQUIRE_PG=1) but none is available")
    pytest.skip("no PostgreSQL available (set SCITQ_TEST_PG_DSN)")


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str | None]:
    dsn = os.environ.get("SCITQ_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    cluster = ThrowawayPostgres()
    if not cluster.available():
        yield None
        return
    try:
        dsn = cluster.start()
    except Exception as e:  # noqa: BLE001 - reported through the skip/fail below
        print(f"could not start PostgreSQL: {e}", file=sys.stderr)
        yield None
        return
    try:
        yield dsn
    finally:
        cluster.stop()


def _pg_run(dsn: str, sql: str) -> None:
    import pg8000.native
    from scitq_app.store.postgres import parse_url
    con = pg8000.native.Connection(**parse_url(dsn))
    try:
        con.run(sql)
    finally:
        con.close()


@pytest.fixture
def database_url(backend: str, tmp_path, pg_admin_dsn) -> Iterator[str]:
    """An empty database URL of the backend under test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/scitq.db"
        return
    if pg_admin_dsn is None:
        no_postgres()
    name = "scitq_t_" + uuid.uuid4().hex[:12]
    _pg_run(pg_admin_dsn, f"CREATE DATABASE {name}")
    base = pg_admin_dsn.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        _pg_run(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(database_url: str) -> Iterator[Callable]:
    """Open stores on the test database (all share it); the first call initialises the schema."""
    opened = []

    def make(clock: Callable[[], float] | None = None, init: bool = True):
        s = open_store(database_url, clock=clock) if clock else open_store(database_url)
        if init and s.schema_status()["current"] == 0:
            s.init_schema()
        opened.append(s)
        return s
    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(make_store, clock):
    """An initialised store on the backend under test, driven by a FakeClock."""
    return make_store(clock)


@pytest.fixture
def config():
    """The default configuration, isolated from the machine's /etc/scitq.conf and SCITQ_* variables."""
    return load_config(os.devnull, env={})
