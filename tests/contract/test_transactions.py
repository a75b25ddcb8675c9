"""Write transactions, as each backend opens them: all or nothing from their first statement on.

On PostgreSQL a write's START TRANSACTION travels with its first statement (one round trip),
so these are what prove the first statement is inside the transaction."""
from __future__ import annotations

import pytest

from scitq_app.errors import Conflict, NotFound
from scitq_app.store import batches
from scitq_app.store.postgres import COPY_MIN, _code
from scitq_app.store.sqlite import UNCOUNTED_INSERT_MIN
from scitq_app.store.tasks import spec_row

from .scene import task_spec


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


# --- pipeline and finish: statements a backend may send together --------------------------


def _batch(tx, name: str) -> tuple[str, dict]:
    return "batch_insert_missing", {"name": name, "status": "running", "priority": 0, "now": tx.now}


def _add_batch(tx, name: str) -> None:
    query, params = _batch(tx, name)
    tx.run(query, **params)


def test_a_pipeline_runs_its_statements_in_order_each_seeing_the_ones_before(store):
    with store.backend.transaction(write=True) as tx:
        (_, inserted), (found, _), (missing, _) = tx.pipeline(
            _batch(tx, "first"), ("batch_id_by_name", {"name": "first"}), ("batch_id_by_name", {"name": "none"}))
        assert inserted == 1 and len(found) == 1 and missing == []
    assert store.get_batch("first").name == "first"


def test_a_failed_statement_in_a_pipeline_fails_the_whole_write(store, backend):
    store.create_token("taken", "user")
    for _ in range(3):  # the same connection each time
        with pytest.raises(Conflict):
            with store.backend.transaction(write=True) as tx:
                tx.pipeline(_batch(tx, "before"),
                            ("token_insert", {"name": "taken", "role": "user", "hash": "x" * 64, "worker_id": None,
                                              "now": tx.now}),
                            _batch(tx, "after"))
        assert open_transaction(store, backend) is False
    for name in ("before", "after"):
        with pytest.raises(NotFound):
            store.get_batch(name)
    store.create_batch("later")
    assert store.get_batch("later").name == "later"


def test_finish_commits_with_the_last_statement(store, backend):
    with store.backend.transaction(write=True) as tx:
        _add_batch(tx, "first")
        [(rows, _)] = tx.finish(("batch_id_by_name", {"name": "first"}))
        assert len(rows) == 1
    assert open_transaction(store, backend) is False
    assert store.get_batch("first").name == "first"
    with store.backend.transaction(write=True) as tx:  # as the first statement: START, it and COMMIT
        [(again, _)] = tx.finish(("batch_id_by_name", {"name": "first"}))
        assert again == rows
    assert open_transaction(store, backend) is False


def test_a_failed_last_statement_rolls_the_write_back(store, backend):
    store.create_token("taken", "user")
    for _ in range(3):
        with pytest.raises(Conflict):
            with store.backend.transaction(write=True) as tx:
                _add_batch(tx, "before")
                tx.finish(_batch(tx, "with it"),
                          ("token_insert", {"name": "taken", "role": "user", "hash": "x" * 64, "worker_id": None,
                                            "now": tx.now}))
        assert open_transaction(store, backend) is False
    for name in ("before", "with it"):
        with pytest.raises(NotFound):
            store.get_batch(name)
    store.create_batch("later")
    assert store.get_batch("later").name == "later"


@pytest.mark.parametrize("backend", ["postgres"])
def test_nothing_runs_after_the_last_statement(store):
    # the COMMIT went with it: a statement after it would run outside the transaction
    with pytest.raises(RuntimeError):
        with store.backend.transaction(write=True) as tx:
            tx.finish(("batch_id_by_name", {"name": "none"}))
            _add_batch(tx, "after")
    with pytest.raises(NotFound):
        store.get_batch("after")


# --- plans: made once, or for each run's values -------------------------------------------


def _plans(tx) -> dict[str, tuple[int, int]]:
    """Generic and custom plans made so far on this connection, by statement name."""
    names = {ps.name_bin.rstrip(b"\0").decode(): name for name, ps in tx.con.__dict__.get("scitq_prepared", {}).items()}
    return {names[n]: (g, c) for n, g, c in tx.con.run("SELECT name, generic_plans, custom_plans "
                                                         "FROM pg_prepared_statements") if n in names}


@pytest.mark.parametrize("backend", ["postgres"])
def test_statements_with_an_optional_filter_are_planned_for_each_run_and_the_others_once(store):
    assert {"task_list_by_batch", "task_counts"} <= store.backend.custom
    assert not {"claim_all", "claim_all_batch", "claim_prospect"} & store.backend.custom
    assert "task_get" not in store.backend.custom
    [task_id] = store.create_tasks([task_spec(batch="b")])
    for _ in range(10):
        store.list_tasks(batch="b")  # task_list_by_batch: its filters are optional
        store.get_task(task_id)  # task_get: by id, whatever the id
    with store.backend.transaction(write=False) as tx:  # the same connection (a LIFO pool)
        plans = _plans(tx)
        mode = tx.con.run("SHOW plan_cache_mode")[0][0]
    assert plans["task_list_by_batch"] == (0, 10)
    assert plans["task_get"][0] >= 5  # PostgreSQL plans the first five runs for their values
    assert mode == "auto"


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_write_that_fails_after_a_statement_planned_for_its_values_leaves_the_session_mode(store):
    store.create_token("taken", "user")
    for how in ("pipeline", "later"):
        with pytest.raises(Conflict):
            with store.backend.transaction(write=True) as tx:
                failing = ("token_insert", {"name": "taken", "role": "user", "hash": "x" * 64, "worker_id": None,
                                            "now": tx.now})
                if how == "pipeline":
                    tx.pipeline(("task_counts", {"batch_id": None}), failing)
                else:
                    tx.all("task_counts", batch_id=None)
                    tx.run(failing[0], **failing[1])
        with store.backend.transaction(write=False) as tx:
            assert tx.con.run("SHOW plan_cache_mode")[0][0] == "auto"


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_read_that_fails_after_a_statement_planned_for_its_values_leaves_the_session_mode(store):
    # a read's statements share one Sync: PostgreSQL skips what follows the failure, the SET that
    # would restore the mode included; the implicit transaction's rollback must undo the first SET
    from pg8000.native import DatabaseError
    [task_id] = store.create_tasks([task_spec(batch="b")])
    for _ in range(3):  # the same connection each time (a LIFO pool)
        with pytest.raises(DatabaseError) as e:
            with store.backend.transaction(write=False) as tx:
                tx.pipeline(("task_counts", {"batch_id": None}), ("task_get", {"id": "not a number"}))
        assert _code(e.value) == "22P02"  # invalid text for a bigint: the second statement's own error
        with store.backend.transaction(write=False) as tx:
            assert tx.con.run("SHOW plan_cache_mode")[0][0] == "auto"
            assert tx.con.run("SELECT 1")[0][0] == 1  # and the connection is in step
    assert store.get_task(task_id).id == task_id
