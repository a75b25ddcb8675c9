"""claim and has_claimable."""
from __future__ import annotations

import pytest

from scitq_app.errors import NotFound
from scitq_app.store import protocol

from .scene import LEASE, status_of, task_spec


def claimed(store, worker_id: int, slots: int = 100) -> list[int]:
    return [e["task_id"] for e in store.claim(worker_id, slots, LEASE)]


def test_claim_takes_highest_priority_first_then_oldest(store, register):
    w = register(concurrency=100)
    ids = store.create_tasks([task_spec(priority=p) for p in (0, 5, 0, 10, 5, -1)])
    order = [claimed(store, w.id, 1)[0] for _ in ids]
    assert order == [ids[3], ids[1], ids[4], ids[0], ids[2], ids[5]]
    assert claimed(store, w.id, 1) == []


def test_one_claim_returns_its_executions_in_claim_order(store, register):
    w = register(concurrency=100)
    ids = store.create_tasks([task_spec(priority=p) for p in (1, 3, 2)])
    got = store.claim(w.id, 3, LEASE)
    assert [e["task_id"] for e in got] == [ids[1], ids[2], ids[0]]


def test_claim_creates_a_leased_execution_and_assigns_the_task(store, register, submit, clock):
    w = register(name="alpha")
    task_id = submit(name="t", batch="b", cpu=1)
    [e] = store.claim(w.id, 1, LEASE)
    assert e["task_id"] == task_id and e["worker_id"] == w.id and e["attempt"] == 1
    assert e["status"] == "assigned" and e["task_name"] == "t" and e["batch"] == "b"
    assert e["worker_name"] == "alpha"
    execution = store.get_execution(e["id"])
    assert execution.lease_expires == clock() + LEASE and execution.assigned == clock()
    t = store.get_task(task_id)
    assert (t.status, t.current_execution_id, t.attempts) == ("assigned", e["id"], 1)
    assert [x.id for x in store.list_executions(task_id)] == [e["id"]]


def test_the_execution_holds_a_frozen_copy_of_the_task(store, register, submit):
    w = register()
    task_id = submit(command="echo v1", shell="sh", container="alpine:3", container_options="--rm",
                     inputs=["s3://b/in"], resources=["s3://b/r.tgz|untar"], output="s3://b/out/",
                     run_timeout=60, download_timeout=30, max_retries=1)
    [e] = store.claim(w.id, 1, LEASE)
    frozen = {k: e[k] for k in ("command", "shell", "container", "container_options", "inputs", "resources",
                                "output", "run_timeout", "download_timeout")}
    assert frozen == {"command": "echo v1", "shell": "sh", "container": "alpine:3", "container_options": "--rm",
                      "inputs": ["s3://b/in"], "resources": ["s3://b/r.tgz|untar"], "output": "s3://b/out/",
                      "run_timeout": 60, "download_timeout": 30}
    store.report(e["id"], w.id, {"phase": "failed", "return_code": 1})
    store.update_task(task_id, {"command": "echo v2", "container": "alpine:4", "inputs": []})
    old = store.get_execution(e["id"])
    assert (old.command, old.container, old.inputs) == ("echo v1", "alpine:3", ("s3://b/in",))
    [e2] = store.claim(w.id, 1, LEASE)
    assert (e2["command"], e2["container"], e2["inputs"], e2["attempt"]) == ("echo v2", "alpine:4", [], 2)
    assert [x.id for x in store.list_executions(task_id)] == [e2["id"], e["id"]]


def test_only_running_batches_are_claimed(store, register):
    w = register(concurrency=100)
    store.create_tasks([task_spec(batch="run"), task_spec(batch="paused"), task_spec(batch="stopped")])
    store.set_batch_status("paused", "paused")
    store.set_batch_status("stopped", "stopped")
    got = store.claim(w.id, 10, LEASE)
    assert [e["batch"] for e in got] == ["run"]
    assert store.has_claimable(w.id) is False
    store.set_batch_status("paused", "running")
    assert [e["batch"] for e in store.claim(w.id, 10, LEASE)] == ["paused"]


def test_a_worker_with_a_batch_claims_only_that_batch(store, register):
    a = store.create_tasks([task_spec(batch="a", priority=9)])
    b = store.create_tasks([task_spec(batch="b")])
    w = register(batch="b", concurrency=10)
    assert claimed(store, w.id) == b
    assert store.has_claimable(w.id) is False
    store.update_worker(w.id, {"batch": None})
    assert store.has_claimable(w.id) is True
    assert claimed(store, w.id) == a


def test_only_tasks_fitting_the_worker_capacity_are_claimed(store, register):
    w = register(cpu=4, mem=8, gpu=0, concurrency=100)
    fits = store.create_tasks([task_spec(cpu=4, mem=8), task_spec(), task_spec(gpu=0, cpu=0.5)])
    store.create_tasks([task_spec(cpu=4.5), task_spec(mem=8.01), task_spec(gpu=1)])
    assert sorted(claimed(store, w.id)) == fits
    assert store.has_claimable(w.id) is False


def test_a_gpu_worker_claims_tasks_up_to_its_gpus(store, register):
    w = register(gpu=2, concurrency=100)
    ids = store.create_tasks([task_spec(gpu=g) for g in (0, 1, 2, 3)])
    assert sorted(claimed(store, w.id)) == ids[:3]


def test_a_worker_without_declared_capacity_is_not_filtered_on_cpu_or_mem(store, register):
    w = register(concurrency=100)
    ids = store.create_tasks([task_spec(cpu=64, mem=512), task_spec(gpu=1)])
    assert claimed(store, w.id) == ids[:1]  # no GPU declared means no GPU


@pytest.mark.parametrize("concurrency,prefetch", [(1, 0), (2, 1), (3, 0), (0, 2), (0, 0)])
def test_never_more_than_concurrency_plus_prefetch_active(store, register, concurrency, prefetch):
    w = register(concurrency=concurrency, prefetch=prefetch)
    store.create_tasks([task_spec() for _ in range(10)])
    limit = concurrency + prefetch
    got = store.claim(w.id, 10, LEASE)
    assert len(got) == limit
    assert store.claim(w.id, 10, LEASE) == []
    assert store.get_worker(w.id).active == limit
    if limit:
        store.report(got[0]["id"], w.id, {"phase": "succeeded", "return_code": 0})
        assert len(store.claim(w.id, 10, LEASE)) == 1
        assert store.claim(w.id, 10, LEASE) == []


def test_claim_asks_for_no_more_than_the_slots(store, register):
    w = register(concurrency=10)
    store.create_tasks([task_spec() for _ in range(5)])
    assert len(store.claim(w.id, 2, LEASE)) == 2
    assert store.claim(w.id, 0, LEASE) == []
    assert len(store.claim(w.id, 10, LEASE)) == 3


def test_raising_concurrency_lets_the_worker_claim_more(store, register):
    w = register(concurrency=1)
    store.create_tasks([task_spec() for _ in range(3)])
    assert len(store.claim(w.id, 3, LEASE)) == 1
    store.update_worker(w.id, {"concurrency": 3})
    assert len(store.claim(w.id, 3, LEASE)) == 2


@pytest.mark.parametrize("status", ["paused", "draining"])
def test_a_paused_or_draining_worker_claims_nothing(store, register, submit, status):
    w = register()
    task_id = submit()
    store.update_worker(w.id, {"status": status})
    assert store.claim(w.id, 5, LEASE) == []
    assert store.has_claimable(w.id) is False
    assert status_of(store, task_id) == "pending"
    store.update_worker(w.id, {"status": "running"})
    assert claimed(store, w.id) == [task_id]


def test_a_worker_registered_paused_claims_nothing(store, register, submit):
    w = register(status="paused")
    submit()
    assert store.claim(w.id, 5, LEASE) == []


def test_an_offline_worker_that_claims_is_back_online(store, register, submit, clock):
    w = register()
    clock.advance(120)
    assert store.mark_offline(60) == [w.id]
    assert store.get_worker(w.id).status == "offline"
    task_id = submit()
    assert claimed(store, w.id) == [task_id]
    w2 = store.get_worker(w.id)
    assert (w2.status, w2.last_seen) == ("running", clock())


def test_waiting_paused_and_assigned_tasks_are_not_claimed(store, register, submit):
    w1, w2 = register(), register()
    a = submit()
    submit(requires=[a])
    submit(status="paused")
    assert claimed(store, w1.id) == [a]
    assert claimed(store, w2.id) == []
    assert store.has_claimable(w2.id) is False


def test_claim_by_an_unknown_worker_is_not_found(store, submit):
    submit()
    with pytest.raises(NotFound):
        store.claim(999, 1, LEASE)
    assert store.count_tasks() == {"pending": 1}


def test_has_claimable_follows_what_claim_would_do(store, register, submit):
    w = register(concurrency=1)
    assert store.has_claimable(w.id) is False
    a = submit()
    assert store.has_claimable(w.id) is True
    assert claimed(store, w.id) == [a]
    assert store.has_claimable(w.id) is False
    submit()
    # the worker is full: claim would return nothing, so nothing is claimable for it
    assert store.claim(w.id, 1, LEASE) == []
    assert store.has_claimable(w.id) is False
    assert store.has_claimable(register().id) is True


def test_has_claimable_is_false_for_an_unknown_worker(store, submit):
    submit()
    assert store.has_claimable(12345) is False


def test_a_task_is_claimed_by_one_worker_only(store, register, submit):
    a, b = register(), register()
    task_id = submit()
    assert claimed(store, a.id) == [task_id]
    assert claimed(store, b.id) == []
    assert len(store.list_executions(task_id)) == 1


def test_a_claim_that_finds_nothing_writes_nothing(store, register, submit, clock):
    w = register()
    seen = store.get_worker(w.id).last_seen
    clock.advance(10)
    assert store.claim(w.id, 4, LEASE) == []
    # no transaction wrote: not even the worker's last_seen (heartbeats say it is alive)
    assert store.get_worker(w.id).last_seen == seen
    submit()
    clock.advance(10)
    assert len(store.claim(w.id, 4, LEASE)) == 1
    assert store.get_worker(w.id).last_seen == clock()


def test_a_retried_claim_with_the_same_request_id_returns_the_same_executions(store, register):
    w = register(concurrency=2)
    ids = store.create_tasks([task_spec() for _ in range(5)])
    first = store.claim(w.id, 2, LEASE, request_id="r-1")
    again = store.claim(w.id, 2, LEASE, request_id="r-1")
    assert [e["id"] for e in again] == [e["id"] for e in first] and len(first) == 2
    assert again == first
    assert [status_of(store, i) for i in ids].count("pending") == 3  # nothing more taken
    # once they progressed, a late retry still answers with them, as they are now
    store.report(first[0]["id"], w.id, {"phase": "running"})
    late = store.claim(w.id, 2, LEASE, request_id="r-1")
    assert [(e["id"], e["status"]) for e in late] == [(first[0]["id"], "running"), (first[1]["id"], "assigned")]


@pytest.mark.parametrize("pending", [3, 1], ids=["tasks-left", "none-left"])
def test_a_retried_claim_of_a_worker_with_room_returns_the_same_executions(store, register, pending):
    # the retry finds the worker able to take more (and, or not, tasks waiting): it is still
    # answered with what its first try gave, nothing more taken
    w = register(concurrency=4)
    ids = store.create_tasks([task_spec() for _ in range(pending)])
    first = store.claim(w.id, 1, LEASE, request_id="r-1")
    again = store.claim(w.id, 1, LEASE, request_id="r-1")
    assert len(first) == 1 and again == first
    assert [status_of(store, i) for i in ids].count("pending") == pending - 1


def test_request_ids_belong_to_their_worker_and_a_new_one_claims_anew(store, register):
    a, b = register(concurrency=2), register(concurrency=2)
    store.create_tasks([task_spec() for _ in range(4)])
    mine = store.claim(a.id, 1, LEASE, request_id="same")
    theirs = store.claim(b.id, 1, LEASE, request_id="same")
    assert len(mine) == len(theirs) == 1 and mine[0]["task_id"] != theirs[0]["task_id"]
    more = store.claim(a.id, 1, LEASE, request_id="next")
    assert len(more) == 1 and more[0]["id"] != mine[0]["id"]


def test_a_claim_takes_tasks_for_the_worker_as_it_is_under_its_lock_not_as_its_prospect_read_it(store, register):
    # between the read that tells a claim there is work (the prospect) and the claim itself, the
    # worker was moved to another batch: nothing of its old batch may be taken
    store.create_batch("old")
    store.create_batch("new")
    [old_task] = store.create_tasks([task_spec(batch="old")])
    [new_task] = store.create_tasks([task_spec(batch="new")])
    w = register(batch="old")
    with store.backend.transaction(write=False) as tx:
        prospect = protocol.claim_prospect(tx, w.id, None)
    assert protocol.could_claim(prospect) and prospect["batch_id"] is not None
    store.update_worker(w.id, {"batch": "new"})
    with store.backend.transaction(write=True) as tx:
        taken = protocol.claim(tx, w.id, 2, LEASE, None, prospect)
    # it took the new batch's task (SQLite: it reads the worker again under its lock), or nothing
    # (PostgreSQL: its claim statement finds the worker changed); its next claim, with a prospect
    # of its own, takes what is left of the new batch
    assert [e["task_id"] for e in taken + store.claim(w.id, 2, LEASE)] == [new_task]
    assert status_of(store, old_task) == "pending"


def test_claimable_workers_names_in_one_read_those_has_claimable_would(store, register, submit):
    idle = register(concurrency=2)
    full = register(concurrency=1)
    pinned = register(batch="quiet", concurrency=2)
    small = register(cpu=1, concurrency=2)
    paused = register(concurrency=2)
    store.update_worker(paused.id, {"status": "paused"})
    submit(batch="busy")
    submit(batch="busy")
    assert [e["task_id"] for e in store.claim(full.id, 1, LEASE)]  # it is full now
    submit(batch="busy", cpu=2)  # too big for `small`
    everyone = [idle.id, full.id, pinned.id, small.id, paused.id, 987654]  # and an unknown id
    expected = {w for w in everyone if store.has_claimable(w)}
    assert expected == {idle.id, small.id}  # small: the first task (no cpu asked) fits it
    assert store.claimable_workers(everyone) == expected
    assert store.claimable_workers([]) == set()
    claimed(store, small.id, 1)  # the one it fits: the 2-cpu task is left, too big for it
    assert store.claimable_workers(everyone) == {idle.id} == {w for w in everyone if store.has_claimable(w)}
    store.set_batch_status("busy", "paused")
    assert store.claimable_workers(everyone) == set()
