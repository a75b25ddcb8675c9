"""Schema: init, migrations, status."""
from __future__ import annotations

import pytest

from scitq_app.errors import Conflict
from scitq_app.store import open_store

from .scene import dump_database


def test_status_of_an_empty_database_lists_every_migration_as_pending(make_store):
    s = make_store(init=False)
    status = s.schema_status()
    assert status["current"] == 0
    assert status["latest"] >= 2
    assert status["pending"] == sorted(status["pending"])
    assert len(status["pending"]) == status["latest"]
    assert status["pending"][0].startswith("0001_")


def test_init_schema_reaches_the_latest_version_with_nothing_pending(make_store):
    s = make_store(init=False)
    latest = s.schema_status()["latest"]
    assert s.init_schema() == latest
    status = s.schema_status()
    assert (status["current"], status["latest"], status["pending"]) == (latest, latest, [])


def test_upgrading_migration_by_migration_gives_the_same_schema_as_init(make_store, other_database_url):
    reference = make_store(init=True).describe_schema()
    assert {"task", "execution", "worker", "batch", "output_chunk", "api_token", "event", "signal",
            "task_dependency", "dispatcher_lock", "schema_migration"} <= set(reference)
    upgraded = open_store(other_database_url)
    try:
        before = upgraded.schema_status()
        assert before["current"] == 0
        assert upgraded.upgrade_schema() == before["pending"]
        assert upgraded.describe_schema() == reference
        after = upgraded.schema_status()
        assert (after["current"], after["pending"]) == (before["latest"], [])
        assert upgraded.upgrade_schema() == []  # nothing left to apply
        assert upgraded.get_batch("Default").status == "running"
    finally:
        upgraded.close()


def test_upgrade_stops_at_each_version_in_order(make_store):
    s = make_store(init=False)
    pending = s.schema_status()["pending"]
    assert s.upgrade_schema() == pending
    versions = [int(n.split("_", 1)[0]) for n in pending]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_init_on_an_initialised_database_is_a_conflict_and_changes_nothing(store):
    store.create_batch("keep")
    with pytest.raises(Conflict):
        store.init_schema()
    assert [b.name for b in store.list_batches()] == ["Default", "keep"]


def test_init_after_upgrade_is_a_conflict(make_store):
    s = make_store(init=False)
    s.upgrade_schema()
    with pytest.raises(Conflict):
        s.init_schema()


def test_init_on_a_database_with_foreign_tables_is_a_conflict(make_store, database_url):
    s = make_store(init=False)
    if database_url.startswith("sqlite"):
        import sqlite3
        con = sqlite3.connect(database_url[len("sqlite:///"):])
        con.execute("CREATE TABLE someone_elses (x INTEGER)")
        con.commit()
        con.close()
    else:
        import pg8000.native

        from scitq_app.store.postgres import parse_url
        con = pg8000.native.Connection(**parse_url(database_url))
        con.run("CREATE TABLE someone_elses (x INTEGER)")
        con.close()
    with pytest.raises(Conflict):
        s.init_schema()
    assert s.schema_status()["current"] == 0


def test_the_default_batch_exists_after_init(store):
    default = store.get_batch("Default")
    assert default.status == "running"
    assert [b.name for b in store.list_batches()] == ["Default"]


def test_a_fresh_schema_holds_no_tasks_workers_or_tokens(store, database_url):
    tables = sorted(store.describe_schema())
    text = dump_database(database_url, [t for t in tables if t not in ("batch", "schema_migration", "event")])
    assert text == ""


@pytest.mark.parametrize("backend", ["sqlite"])  # a PostgreSQL database exists before any client
def test_stores_opening_a_new_sqlite_file_together_all_get_a_connection(tmp_path):
    # Switching a new file to WAL answers "database is locked" without waiting when another
    # connection switches it at that moment (about one round in forty with four threads, a few in thirty with six): the
    # server's threads or several `db init` started together must wait, not fail.
    import threading
    failures: list[str] = []
    for round_ in range(30):
        url = f"sqlite:///{tmp_path}/r{round_}.db"
        stores = [open_store(url) for _ in range(6)]
        barrier = threading.Barrier(len(stores))

        def first_use(s) -> None:
            barrier.wait(10)
            try:
                s.schema_status()
            except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                failures.append(f"round {round_}: {e}")
        threads = [threading.Thread(target=first_use, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for s in stores:
            s.close()
    assert failures == []
