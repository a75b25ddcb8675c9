"""Batches: create, list, pause / go / stop, delete."""
from __future__ import annotations

import pytest

from scitq_app.errors import Conflict, NotFound

from .scene import LEASE, status_of, task_spec


def signals(store, worker_id: int) -> list[tuple[int, str]]:
    return [(s["execution_id"], s["action"]) for s in store.heartbeat(worker_id, {}, [], [], LEASE)["signals"]]


def test_create_a_batch(store, clock):
    b = store.create_batch("rna", priority=3)
    assert (b.name, b.status, b.priority, b.created, b.counts, b.workers) == ("rna", "running", 3, clock(), {}, 0)
    assert store.get_batch("rna") == b


def test_a_duplicate_batch_name_is_a_conflict(store):
    store.create_batch("rna")
    with pytest.raises(Conflict):
        store.create_batch("rna", priority=9)
    with pytest.raises(Conflict):
        store.create_batch("Default")
    assert store.get_batch("rna").priority == 0


def test_an_unknown_batch_is_not_found(store):
    for call in (lambda: store.get_batch("nope"), lambda: store.update_batch("nope", 1),
                 lambda: store.set_batch_status("nope", "paused"), lambda: store.delete_batch("nope")):
        with pytest.raises(NotFound):
            call()


def test_update_batch_priority(store):
    store.create_batch("b")
    assert store.update_batch("b", -5).priority == -5
    assert store.get_batch("b").priority == -5


def test_list_batches_by_name_with_task_and_worker_counts(store, register):
    store.create_tasks([task_spec(batch="zeta"), task_spec(batch="zeta", status="paused"), task_spec(batch="alpha")])
    register(batch="zeta")
    register(batch="zeta")
    register(batch="alpha")
    register()
    batches = store.list_batches()
    assert [b.name for b in batches] == ["Default", "alpha", "zeta"]
    counts = {b.name: (b.counts, b.workers) for b in batches}
    assert counts == {"Default": ({}, 0), "alpha": ({"pending": 1}, 1), "zeta": ({"pending": 1, "paused": 1}, 2)}
    assert store.get_batch("zeta").counts == {"pending": 1, "paused": 1}
    assert store.get_batch("zeta").workers == 2


def test_a_batch_counts_the_live_workers_pinned_to_it_or_running_its_tasks(store, register, start, clock):
    pinned = register(batch="live")
    roaming = register()   # not pinned: counts only while it runs one of the batch's tasks
    assert store.get_batch("live").workers == 1
    e = start("running", worker=roaming, batch="live")
    assert store.get_batch("live").workers == 2
    assert {b.name: b.workers for b in store.list_batches()}["live"] == 2
    store.report(e["id"], roaming.id, {"phase": "succeeded", "return_code": 0})
    assert store.get_batch("live").workers == 1
    clock.advance(120)
    assert pinned.id in store.mark_offline(60)
    assert store.get_batch("live").workers == 0, "a worker gone offline is not working on the batch"


def test_a_pinned_worker_counts_for_its_batch_only_while_it_ends_tasks_of_another(store, register, start):
    w = register(batch="old")
    start("running", worker=w, batch="old")
    store.update_worker(w.id, {"batch": "new"})
    assert {b.name: b.workers for b in store.list_batches()} == {"Default": 0, "old": 0, "new": 1}
    store.update_worker(w.id, {"batch": None})  # unpinned: counts where it works
    assert {b.name: b.workers for b in store.list_batches()} == {"Default": 0, "old": 1, "new": 0}


def test_a_paused_batch_is_not_claimed_until_it_goes(store, register):
    w = register()
    [task_id] = store.create_tasks([task_spec(batch="b")])
    assert store.set_batch_status("b", "paused").status == "paused"
    assert store.claim(w.id, 1, LEASE) == []
    assert store.has_claimable(w.id) is False
    assert status_of(store, task_id) == "pending"
    assert store.set_batch_status("b", "running").status == "running"
    assert [e["task_id"] for e in store.claim(w.id, 1, LEASE)] == [task_id]


def test_pause_with_signal_pauses_executing_tasks_and_go_resumes_them(store, start, register):
    w = register(concurrency=5)
    running = start("running", worker=w, batch="b")
    assigned = start("assigned", worker=w, batch="b")
    elsewhere = start("running", worker=w)
    [queued] = store.create_tasks([task_spec(batch="b")])
    store.set_batch_status("b", "paused", signal="pause")
    assert [status_of(store, e["task_id"]) for e in (running, assigned, elsewhere)] == [
        "paused", "paused", "running"]
    assert status_of(store, queued) == "pending"
    assert sorted(signals(store, w.id)) == sorted([(running["id"], "pause"), (assigned["id"], "pause")])
    ack = [s["id"] for s in store.heartbeat(w.id, {}, [], [], LEASE)["signals"]]
    store.heartbeat(w.id, {}, [], ack, LEASE)
    store.set_batch_status("b", "running")
    assert [status_of(store, e["task_id"]) for e in (running, assigned)] == ["running", "assigned"]
    assert sorted(signals(store, w.id)) == sorted([(running["id"], "resume"), (assigned["id"], "resume")])


def test_go_resumes_the_batchs_paused_queued_tasks(store, submit):
    a = submit(batch="b", status="paused")
    b = submit(batch="b")
    c = submit(batch="b", requires=[b])
    store.signal_task(c, "pause")
    other = submit(batch="x", status="paused")
    store.set_batch_status("b", "paused")
    store.set_batch_status("b", "running")
    assert [status_of(store, t) for t in (a, b, c, other)] == ["pending", "pending", "waiting", "paused"]


def test_pause_with_signal_leaves_uploading_tasks_alone(store, start):
    e = start("uploading", batch="b")
    store.set_batch_status("b", "paused", signal="pause")
    assert status_of(store, e["task_id"]) == "uploading"


def test_stop_with_term_signals_executions_and_their_canceled_reports_requeue_them(store, start, register):
    w = register(concurrency=5)
    e1 = start("running", worker=w, batch="b", max_retries=0)
    e2 = start("assigned", worker=w, batch="b", max_retries=0)
    b = store.set_batch_status("b", "stopped", signal="term")
    assert b.status == "stopped"
    assert sorted(signals(store, w.id)) == sorted([(e1["id"], "term"), (e2["id"], "term")])
    for e in (e1, e2):
        store.report(e["id"], w.id, {"phase": "failed", "failure_class": "canceled", "return_code": -15})
        t = store.get_task(e["task_id"])
        assert (t.status, t.retries_used) == ("pending", 0)
    assert store.claim(w.id, 5, LEASE) == []  # a stopped batch is not claimed
    store.set_batch_status("b", "running")
    assert sorted(e["task_id"] for e in store.claim(w.id, 5, LEASE)) == sorted([e1["task_id"], e2["task_id"]])


def test_stop_with_kill_signals_kill(store, start):
    e = start("running", batch="b")
    store.set_batch_status("b", "stopped", signal="kill")
    assert signals(store, e["worker_id"]) == [(e["id"], "kill")]


def test_stop_without_signal_lets_executions_finish(store, start):
    e = start("running", batch="b")
    store.set_batch_status("b", "stopped", signal="none")
    assert signals(store, e["worker_id"]) == []
    store.report(e["id"], e["worker_id"], {"phase": "succeeded", "return_code": 0})
    assert status_of(store, e["task_id"]) == "succeeded"


def test_delete_batch_is_refused_while_a_task_executes(store, start):
    e = start("running", batch="b")
    with pytest.raises(Conflict):
        store.delete_batch("b")
    assert store.get_task(e["task_id"]).status == "running"
    store.report(e["id"], e["worker_id"], {"phase": "succeeded", "return_code": 0})
    assert store.delete_batch("b") == 1


def test_delete_batch_removes_its_tasks_and_unsets_its_workers(store, register, submit):
    w = register(batch="b")
    ids = [submit(batch="b") for _ in range(3)]
    keep = submit(batch="c")
    assert store.delete_batch("b") == 3
    with pytest.raises(NotFound):
        store.get_batch("b")
    for t in ids:
        with pytest.raises(NotFound):
            store.get_task(t)
    assert store.get_worker(w.id).batch is None
    assert status_of(store, keep) == "pending"


def test_delete_default_batch_keeps_the_batch_row(store, submit):
    submit()
    submit()
    assert store.delete_batch("Default") == 2
    assert store.get_batch("Default").counts == {}
    assert store.count_tasks() == {}


def test_delete_batch_is_refused_while_unfinished_tasks_elsewhere_require_its_tasks(store, submit):
    inner = submit(batch="b")
    submit(batch="b", requires=[inner])  # a dependency inside the batch goes with it
    outside = submit(batch="c", requires=[inner])
    with pytest.raises(Conflict) as info:
        store.delete_batch("b")
    assert str(outside) in info.value.message
    assert store.count_tasks("b") == {"pending": 1, "waiting": 1}
    store.release_waiting()
    assert status_of(store, outside) == "waiting"  # not released by a lost requirement
    store.signal_task(outside, "stop")
    assert store.delete_batch("b") == 2
    assert store.get_task(outside).requires == ()


@pytest.mark.parametrize("signal", ["pause", "resume", "term", "kill"])
def test_batch_signals_never_touch_a_canceled_task(store, start, signal):
    e = start("running", batch="b")
    w = e["worker_id"]
    store.signal_task(e["task_id"], "stop")
    assert signals(store, w) == [(e["id"], "term")]
    ack = [s["id"] for s in store.heartbeat(w, {}, [], [], LEASE)["signals"]]
    store.heartbeat(w, {}, [], ack, LEASE)
    store.set_batch_status("b", "stopped" if signal in ("term", "kill") else "paused", signal=signal)
    assert status_of(store, e["task_id"]) == "canceled"
    store.set_batch_status("b", "running")
    assert status_of(store, e["task_id"]) == "canceled"
    assert signals(store, w) == []
    store.report(e["id"], w, {"phase": "failed", "failure_class": "canceled", "return_code": -15})
    assert status_of(store, e["task_id"]) == "canceled"
    assert store.claim(w, 5, LEASE) == []


def test_batch_signals_never_touch_finished_tasks(store, start):
    done = start("running", batch="b")
    store.report(done["id"], done["worker_id"], {"phase": "succeeded", "return_code": 0})
    failed = start("running", batch="b", max_retries=0)
    store.report(failed["id"], failed["worker_id"], {"phase": "failed", "return_code": 1})
    for status, signal in (("paused", "pause"), ("stopped", "term"), ("running", None)):
        store.set_batch_status("b", status, signal=signal)
        assert [status_of(store, e["task_id"]) for e in (done, failed)] == ["succeeded", "failed"]
    assert store.claim(done["worker_id"], 5, LEASE) == []


def test_a_worker_level_signal_is_not_a_batch_signal(store, start):
    from scitq_app.errors import Invalid
    e = start("running", batch="b")
    with pytest.raises(Invalid):
        store.set_batch_status("b", "paused", signal="clean")
    assert (store.get_batch("b").status, status_of(store, e["task_id"])) == ("running", "running")
