"""The database going away is an outage (StoreUnavailable, a 503), never a driver error (a 500),
and the store carries on once it is back."""
from __future__ import annotations

import pytest

from scitq_app.errors import StoreUnavailable

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
