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
