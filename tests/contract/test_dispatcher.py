"""What the dispatcher relies on: the singleton lock, lease expiry, deadlines,
dependency release, offline detection, and forgetting a worker."""
from __future__ import annotations

import pytest

from scitq_app.errors import Fenced, NotFound

from .scene import LEASE, status_of, task_spec

TTL = 15.0


def test_the_lock_has_one_holder_at_a_time(make_store, clock):
    a, b = make_store(clock), make_store(clock)
    assert a.acquire_lock("dispatcher", "A", TTL) is True
    assert b.acquire_lock("dispatcher", "B", TTL) is False
    clock.advance(TTL - 1)
    assert a.acquire_lock("dispatcher", "A", TTL) is True  # renewal pushes the expiry
    clock.advance(TTL - 1)
    assert b.acquire_lock("dispatcher", "B", TTL) is False
    assert a.acquire_lock("dispatcher", "A", TTL) is True


def test_a_lapsed_lock_is_taken_over(make_store, clock):
    a, b = make_store(clock), make_store(clock)
    assert a.acquire_lock("dispatcher", "A", TTL)
    clock.advance(TTL + 0.1)
    assert b.acquire_lock("dispatcher", "B", TTL) is True
    assert a.acquire_lock("dispatcher", "A", TTL) is False
    a.release_lock("dispatcher", "A")  # not its lock any more: releases nothing
    assert a.acquire_lock("dispatcher", "A", TTL) is False
    b.release_lock("dispatcher", "B")
    assert a.acquire_lock("dispatcher", "A", TTL) is True


def test_locks_with_different_names_are_independent(store):
    assert store.acquire_lock("one", "A", TTL)
    assert store.acquire_lock("two", "B", TTL)
    assert not store.acquire_lock("two", "A", TTL)


# --- release_waiting -------------------------------------------------------


def _succeed_without_release(store, task_id: int) -> None:
    # The state a lost release leaves behind: on PostgreSQL two requirements
    # finishing in concurrent transactions each still see the other unfinished.
    # release_waiting is the safety net for it. No contract call makes this
    # state on purpose, so it is written here through the SQL store's own query.
    store._run(lambda tx: tx.run("task_set_status", id=task_id, status="succeeded", now=tx.now, retries_used=0),
               write=True)


def test_release_waiting_releases_tasks_whose_requirements_all_succeeded(store, submit):
    a, b, c = submit(), submit(), submit()
    one = submit(requires=[a])
    both = submit(requires=[a, b])
    other = submit(requires=[c])
    assert store.release_waiting() == 0
    _succeed_without_release(store, a)
    _succeed_without_release(store, b)
    assert [status_of(store, t) for t in (one, both, other)] == ["waiting"] * 3
    assert store.release_waiting() == 2
    assert [status_of(store, t) for t in (one, both, other)] == ["pending", "pending", "waiting"]
    assert store.release_waiting() == 0


def test_release_after_looks_only_at_dependents_of_recent_successes(store, submit, clock):
    a, b = submit(), submit()
    old = submit(requires=[a])
    new = submit(requires=[b])
    _succeed_without_release(store, a)
    clock.advance(100)
    _succeed_without_release(store, b)
    assert store.release_after(clock() - 10) == 1
    assert [status_of(store, t) for t in (old, new)] == ["waiting", "pending"]
    assert store.release_after(clock() - 1000) == 1
    assert status_of(store, old) == "pending"


def test_the_dispatcher_repairs_a_lost_release_without_sweeping_waiting_tasks(store, submit, config, clock):
    from scitq_app.dispatch.loops import Dispatcher
    d = Dispatcher(store, config, clock=clock, holder="d1")
    a = submit()
    c = submit(requires=[a])
    assert d.tick()["released"] == 0
    clock.advance(1)
    _succeed_without_release(store, a)
    clock.advance(1)
    assert d.tick()["released"] == 1
    assert status_of(store, c) == "pending"


def test_release_waiting_leaves_paused_tasks_paused(store, submit):
    a = submit()
    p = submit(requires=[a], status="paused")
    _succeed_without_release(store, a)
    assert store.release_waiting() == 0
    assert status_of(store, p) == "paused"


# --- expire_leases ---------------------------------------------------------


def test_expired_leases_requeue_the_tasks_and_fence_the_attempts(store, start, clock):
    e1 = start("assigned")
    e2 = start("uploading")
    clock.advance(LEASE + 1)
    assert sorted(store.expire_leases()) == sorted([e1["id"], e2["id"]])
    for e in (e1, e2):
        x = store.get_execution(e["id"])
        assert (x.status, x.failure_class, x.lease_expires) == ("failed", "lost", None)
        t = store.get_task(e["task_id"])
        assert (t.status, t.retries_used) == ("pending", 0)
    with pytest.raises(Fenced):
        store.report(e2["id"], e2["worker_id"], {"phase": "succeeded", "return_code": 0})


def test_an_expired_lease_of_a_canceled_task_leaves_it_canceled(store, start, clock):
    e = start("running")
    store.signal_task(e["task_id"], "stop")
    clock.advance(LEASE + 1)
    assert store.expire_leases() == [e["id"]]
    assert status_of(store, e["task_id"]) == "canceled"


def test_an_expired_lease_of_a_paused_task_leaves_it_paused_and_resumable(store, start, clock):
    e = start("running")
    store.signal_task(e["task_id"], "pause")
    clock.advance(LEASE + 1)
    assert store.expire_leases() == [e["id"]]
    assert status_of(store, e["task_id"]) == "paused"
    assert store.signal_task(e["task_id"], "resume").status == "pending"


# --- enforce_deadlines -----------------------------------------------------


GRACE = 30.0


def test_a_run_past_its_timeout_and_grace_fails_as_timeout_and_is_killed(store, start, clock):
    e = start("running", run_timeout=60, max_retries=1)
    w = e["worker_id"]
    clock.advance(60 + GRACE)
    store.heartbeat(w, {}, [e["id"]], [], LEASE)
    assert store.enforce_deadlines(GRACE) == []
    clock.advance(1)
    store.heartbeat(w, {}, [e["id"]], [], LEASE)
    assert store.enforce_deadlines(GRACE) == [e["id"]]
    x = store.get_execution(e["id"])
    assert (x.status, x.failure_class) == ("failed", "timeout")
    t = store.get_task(e["task_id"])
    assert (t.status, t.retries_used) == ("pending", 1)  # a timeout spends a retry
    reply = store.heartbeat(w, {}, [e["id"]], [], LEASE)
    assert [(s["execution_id"], s["action"]) for s in reply["signals"]] == [(e["id"], "kill")]
    assert reply["fenced"] == [e["id"]]
    assert store.enforce_deadlines(GRACE) == []


def test_a_timeout_without_retries_left_fails_the_task(store, start, clock):
    e = start("running", run_timeout=10, max_retries=0)
    clock.advance(10 + GRACE + 1)
    store.heartbeat(e["worker_id"], {}, [e["id"]], [], LEASE)
    assert store.enforce_deadlines(GRACE) == [e["id"]]
    assert status_of(store, e["task_id"]) == "failed"


def test_the_deadline_counts_from_the_start_of_the_run(store, start, clock):
    e = start("assigned", run_timeout=60)
    clock.advance(1_000)  # staging inputs is not running
    store.heartbeat(e["worker_id"], {}, [e["id"]], [], LEASE)
    assert store.enforce_deadlines(GRACE) == []
    store.report(e["id"], e["worker_id"], {"phase": "running"})
    clock.advance(60 + GRACE + 1)
    assert store.enforce_deadlines(GRACE) == [e["id"]]


def test_uploading_and_untimed_executions_have_no_deadline(store, start, clock):
    up = start("uploading", run_timeout=5)
    free = start("running")
    clock.advance(10_000)
    assert store.enforce_deadlines(GRACE) == []
    assert store.get_execution(up["id"]).status == "uploading"
    assert store.get_execution(free["id"]).status == "running"


# --- mark_offline ----------------------------------------------------------


def test_silent_workers_are_marked_offline(store, register, clock):
    quiet = register()
    clock.advance(50)
    chatty = register()
    clock.advance(20)
    store.heartbeat(chatty.id, {}, [], [], LEASE)
    assert store.mark_offline(60) == [quiet.id]
    assert store.get_worker(quiet.id).status == "offline"
    assert store.get_worker(chatty.id).status == "running"
    assert store.mark_offline(60) == []  # already offline


# --- delete_worker ---------------------------------------------------------


def test_deleting_a_worker_requeues_its_executions_without_spending_retries(store, start, register):
    w = register(concurrency=3)
    e1 = start("running", worker=w, max_retries=0)
    e2 = start("assigned", worker=w, max_retries=0)
    survivor = start("running")
    store.delete_worker(w.id)
    with pytest.raises(NotFound):
        store.get_worker(w.id)
    for e in (e1, e2):
        x = store.get_execution(e["id"])
        assert (x.status, x.failure_class) == ("failed", "lost")
        t = store.get_task(e["task_id"])
        assert (t.status, t.retries_used) == ("pending", 0)
    assert store.get_execution(survivor["id"]).status == "running"
    assert [w2.id for w2 in store.list_workers()] == [survivor["worker_id"]]


def test_a_deleted_workers_token_stops_working(store):
    w, secret = store.register_worker({"name": "gone"})
    assert store.authenticate(secret).worker_id == w.id
    store.delete_worker(w.id)
    assert store.authenticate(secret) is None


def test_deleting_an_unknown_worker_is_not_found(store):
    with pytest.raises(NotFound):
        store.delete_worker(31)


# --- retention ---------------------------------------------------------------


def test_prune_forgets_old_events_and_keys_a_few_at_a_time(store, clock):
    for i in range(5):
        store.record_event("test.old", f"x:{i}")
    first = store.create_tasks([task_spec()], key="key-00000001", scope="tok")
    clock.advance(100)
    store.record_event("test.new", "x:new")
    kept = store.create_tasks([task_spec()], key="key-00000002", scope="tok")
    # 6 old events (5, and the first submission's) and 1 old key, 3 at a time at most
    assert store.prune(clock() - 50, clock() - 50, batch=3) == {"events": 3, "submissions": 1}
    assert store.prune(clock() - 50, clock() - 50, batch=3) == {"events": 3, "submissions": 0}
    assert store.prune(clock() - 50, clock() - 50, batch=3) == {"events": 0, "submissions": 0}
    assert [e.kind for e in store.list_events()] == ["test.new", "task.create"]
    # the kept key still answers with its tasks; the forgotten one, reused, creates new ones
    assert store.create_tasks([task_spec()], key="key-00000002", scope="tok") == kept
    again = store.create_tasks([task_spec()], key="key-00000001", scope="tok")
    assert again != first and store.create_tasks([task_spec()], key="key-00000001", scope="tok") == again


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL's autovacuum reclaims space by itself
def test_sqlite_gives_the_space_of_pruned_rows_back(store, clock, backend, database_url):
    import os
    import sqlite3
    path = database_url[len("sqlite:///"):]

    def size() -> int:
        con = sqlite3.connect(path)
        try:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
        return os.path.getsize(path)
    for i in range(2000):
        store.record_event("test.bulky", f"x:{i}", {"pad": "x" * 2000})
    full = size()
    clock.advance(100)
    while any(store.prune(clock() - 50, clock() - 50, batch=500).values()):
        pass
    assert size() < full / 2, (size(), full)
