"""Workers as people see them: list, show, change, signal."""
from __future__ import annotations

import pytest

from scitq_app.errors import NotFound

from .scene import LEASE


def test_list_workers_all_or_by_batch(store, register):
    a = register(batch="x")
    b = register()
    c = register(batch="x")
    assert [w.id for w in store.list_workers()] == [a.id, b.id, c.id]
    assert [w.id for w in store.list_workers(batch="x")] == [a.id, c.id]
    assert store.list_workers(batch="Default") == []
    with pytest.raises(NotFound):
        store.list_workers(batch="nope")


def test_workers_are_listed_page_by_page_after_an_id(store, register):
    ws = [register(batch="x" if i % 2 else None) for i in range(7)]
    ids = [w.id for w in ws]
    assert [w.id for w in store.list_workers(limit=3)] == ids[:3]
    assert [w.id for w in store.list_workers(after=ids[2], limit=3)] == ids[3:6]
    assert [w.id for w in store.list_workers(after=ids[5], limit=3)] == ids[6:]
    assert store.list_workers(after=ids[6], limit=3) == []
    assert [w.id for w in store.list_workers(after=ids[3])] == ids[4:], "no limit: all the rest"
    in_x = [w.id for w in ws if w.batch == "x"]
    assert [w.id for w in store.list_workers(batch="x", limit=2)] == in_x[:2]
    assert [w.id for w in store.list_workers(batch="x", after=in_x[1], limit=2)] == in_x[2:]


def test_a_worker_shows_how_many_executions_it_holds(store, register, start):
    w = register(concurrency=3)
    e = start("running", worker=w)
    start("assigned", worker=w)
    assert store.get_worker(w.id).active == 2
    store.report(e["id"], w.id, {"phase": "succeeded", "return_code": 0})
    assert store.get_worker(w.id).active == 1


def test_update_worker_changes_only_what_is_named(store, register):
    w = register(concurrency=2, prefetch=1, batch="b", cpu=4)
    w2 = store.update_worker(w.id, {"prefetch": 0})
    assert (w2.concurrency, w2.prefetch, w2.batch, w2.status, w2.cpu) == (2, 0, "b", "running", 4)
    w3 = store.update_worker(w.id, {"batch": "new", "concurrency": 0})
    assert (w3.concurrency, w3.batch) == (0, "new")
    assert store.get_batch("new").workers == 1  # a batch named here is created


def test_a_status_set_on_an_offline_worker_waits_for_it_to_come_back(store, register, clock):
    w = register()
    clock.advance(100)
    store.mark_offline(60)
    assert store.update_worker(w.id, {"status": "paused"}).status == "offline"
    assert store.heartbeat(w.id, {}, [], [], LEASE)["settings"]["status"] == "paused"
    assert store.get_worker(w.id).status == "paused"


def test_unknown_workers_are_not_found(store):
    for call in (lambda: store.get_worker(77), lambda: store.update_worker(77, {"concurrency": 1}),
                 lambda: store.signal_worker(77, "clean")):
        with pytest.raises(NotFound):
            call()


def test_changes_to_workers_are_recorded_as_events(store, register):
    w = register()
    store.update_worker(w.id, {"concurrency": 9}, actor="alice")
    [ev] = store.list_events(target=f"worker:{w.name}")[-1:]
    assert (ev.kind, ev.actor, ev.detail) == ("worker.update", "alice", {"concurrency": 9})
