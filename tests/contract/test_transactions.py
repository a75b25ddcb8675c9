"""Write transactions, as each backend opens them: all or nothing from their first statement on.

On PostgreSQL a write's START TRANSACTION travels with its first statement (one round trip),
so these are what prove the first statement is inside the transaction."""
from __future__ import annotations

import pytest

from scitq_app.errors import Conflict, NotFound
from scitq_app.store import batches
from scitq_app.store.postgres import COPY_MIN
from scitq_app.store.sqlite import UNCOUNTED_INSERT_MIN
from scitq_app.store.tasks import spec_row


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


def _task_rows(tx, n: int, batch_id: int, key: str, command: str = "true") -> list[dict]:
    ids = tx.reserve_ids("task", n)
    return [spec_row(i, batch_id, {"command": command}, "pending", tx.now, key) for i in ids]


def test_statements_right_after_a_bulk_insert_see_all_its_rows(store):
    # PostgreSQL sends a large insert's rows from a thread and reads its answer later: what
    # follows at once (here a statement the connection has not prepared yet, a round trip
    # of its own) must wait for it, whatever the rows' size
    with store.backend.transaction(write=True) as tx:
        batch_id = batches.batch_id(tx, "b", create=True)
        rows = _task_rows(tx, 5000, batch_id, "k", command="x" * 2000)
        tx.insert_tasks(rows)
        assert sorted(int(r["id"]) for r in tx.all("task_ids_by_key", key="k")) == [r["id"] for r in rows]
    assert store.count_tasks("b") == {"pending": 5000}


def test_a_bulk_insert_the_database_refuses_leaves_nothing_and_its_connection_usable(store):
    for _ in range(3):  # the pool hands the same connection back each time
        with pytest.raises(Conflict):  # no such batch: the foreign key refuses the rows
            with store.backend.transaction(write=True) as tx:
                tx.insert_tasks(_task_rows(tx, max(COPY_MIN, UNCOUNTED_INSERT_MIN), 999_999, "k"))
                tx.run("batch_insert_missing", name="after", status="running", priority=0, now=tx.now)
    assert store.count_tasks() == {}
    with pytest.raises(NotFound):
        store.get_batch("after")
    store.create_batch("after")
    assert store.get_batch("after").name == "after"


def test_a_write_given_up_while_its_bulk_insert_is_sent_leaves_nothing(store, backend):
    for _ in range(3):
        with pytest.raises(Abort):
            with store.backend.transaction(write=True) as tx:
                batch_id = batches.batch_id(tx, "b", create=True)
                tx.insert_tasks(_task_rows(tx, 5000, batch_id, "k", command="x" * 2000))
                raise Abort()
        assert open_transaction(store, backend) is False
    assert store.count_tasks() == {}
    with pytest.raises(NotFound):
        store.get_batch("b")
