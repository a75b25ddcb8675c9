"""Write transactions, as each backend opens them: all or nothing from their first statement on.

On PostgreSQL a write's START TRANSACTION travels with its first statement (one round trip),
so these are what prove the first statement is inside the transaction."""
from __future__ import annotations

import pytest

from scitq_app.errors import Conflict, NotFound


class Abort(Exception):
    """The caller gives up inside the transaction."""


def open_transaction(store, backend: str) -> bool:
    """Is the pool's last used connection still inside a transaction (one left open)?"""
    with store.backend.transaction(write=False) as tx:
        if backend == "sqlite":
            return tx.conn.in_transaction
        # in autocommit a statement is its own transaction: it starts when the statement does
        return tx.con.run("SELECT xact_start < query_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")[0][0]


def test_a_write_given_up_after_its_first_statement_leaves_nothing(store):
    with pytest.raises(Abort):
        with store.backend.transaction(write=True) as tx:
            tx.run("batch_insert_missing", name="first", status="running", priority=0, now=tx.now)
            raise Abort()
    with pytest.raises(NotFound):
        store.get_batch("first")


def test_a_write_given_up_later_leaves_nothing_of_its_first_statement(store):
    with pytest.raises(Abort):
        with store.backend.transaction(write=True) as tx:
            tx.run("batch_insert_missing", name="first", status="running", priority=0, now=tx.now)
            tx.run("batch_insert_missing", name="second", status="running", priority=0, now=tx.now)
            assert tx.value("batch_id_by_name", name="first") is not None  # seen inside
            raise Abort()
    with pytest.raises(NotFound):
        store.get_batch("first")


def test_a_failed_first_statement_leaves_its_connection_usable(store):
    store.create_token("taken", "user")
    for _ in range(3):  # the pool hands the same connection back each time
        with pytest.raises(Conflict):
            with store.backend.transaction(write=True) as tx:
                tx.run("token_insert", name="taken", role="user", hash="x" * 64, worker_id=None, now=tx.now)
    store.create_batch("after")
    assert store.get_batch("after").name == "after"


def test_a_write_that_runs_nothing_leaves_no_transaction_open(store, backend):
    with store.backend.transaction(write=True):
        pass
    assert open_transaction(store, backend) is False
    with pytest.raises(Abort):
        with store.backend.transaction(write=True):
            raise Abort()
    assert open_transaction(store, backend) is False
    store.create_batch("after")
    assert open_transaction(store, backend) is False
    assert store.get_batch("after").name == "after"
