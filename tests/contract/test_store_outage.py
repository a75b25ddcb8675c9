"""The database going away is an outage (StoreUnavailable, a 503), never a driver error (a 500),
and the store carries on once it is back."""
from __future__ import annotations

import pytest

from scitq_app.errors import StoreUnavailable
from scitq_app.store import batches
from scitq_app.store.tasks import spec_row

from .scene import pg_run


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite has no server whose connections can be killed
def test_connections_the_database_killed_are_an_outage_and_the_next_call_reconnects(store, backend, database_url):
    for _ in range(3):
        store.create_batch(f"warm-{_}")  # several connections in the pool
    # what a PostgreSQL restart or failover does to every open connection (SQLSTATE 57P01)
    pg_run(database_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(StoreUnavailable) as e:
        store.list_batches()
    assert "PostgreSQL" in e.value.message
    # one failure drains the pool: the very next calls work on new connections
    store.create_batch("after")
    assert "after" in [b.name for b in store.list_batches()]


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_connection_killed_while_a_bulk_insert_is_sent_is_an_outage_that_stores_nothing(store, backend,
                                                                                          database_url):
    # the COPY of a large insert is still being sent (or its answer not read) when the database
    # ends the connection: the write fails as an outage, none of it stays, the pool recovers
    with pytest.raises(StoreUnavailable):
        with store.backend.transaction(write=True) as tx:
            batch_id = batches.batch_id(tx, "b", create=True)
            ids = tx.reserve_ids("task", 5000)
            tx.insert_tasks([spec_row(i, batch_id, {"command": "x" * 2000}, "pending", tx.now) for i in ids])
            pg_run(database_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert store.count_tasks() == {}
    assert store.create_tasks([{"command": "true", "batch": "b"} for _ in range(200)])
    assert store.count_tasks("b") == {"pending": 200}


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_store_reaches_postgresql_through_its_unix_socket(store, database_url):
    # a database on the same machine, named by the directory of its socket (as libpq does)
    import pg8000.native

    from scitq_app.store import open_store
    from scitq_app.store.postgres import parse_url
    con = pg8000.native.Connection(**parse_url(database_url))
    try:
        [[directories]], [[port]] = con.run("SHOW unix_socket_directories"), con.run("SHOW port")
    finally:
        con.close()
    directory = directories.split(",")[0].strip()
    if not directory:
        pytest.skip("this PostgreSQL listens on no Unix socket")
    store.create_batch("by-tcp")
    u = database_url.rpartition("@")
    by_socket = open_store(f"{u[0]}@{directory.replace('/', '%2F')}:{port}{u[2][u[2].index('/'):]}")
    try:
        assert by_socket.backend._args.get("unix_sock") == f"{directory}/.s.PGSQL.{port}"
        assert by_socket.get_batch("by-tcp").name == "by-tcp"
        by_socket.create_batch("by-socket")
    finally:
        by_socket.close()
    assert store.get_batch("by-socket").name == "by-socket"
