"""Recruiters, rented machines, and what recruiting reads of the store, on both databases."""
from __future__ import annotations

import pytest

from scitq_app.errors import Conflict, NotFound
from tests.contract.conftest import LEASE

FIELDS = {"provider": "cloud", "flavor": "s4", "region": None, "tasks_per_worker": 20, "minimum_tasks": 0,
          "maximum_workers": 3, "concurrency": 4, "prefetch": 0}


def test_a_recruiter_per_batch_and_rank_updated_and_deleted(store):
    r = store.create_recruiter({"batch": "b", "rank": 1, **FIELDS}, actor="alice")
    assert (r.batch, r.rank, r.flavor, r.maximum_workers) == ("b", 1, "s4", 3)
    with pytest.raises(Conflict, match="rank 1"):
        store.create_recruiter({"batch": "b", "rank": 1, **FIELDS})
    r2 = store.create_recruiter({"batch": "b", "rank": 2, **FIELDS, "flavor": "cpu>=16"})
    assert [x.rank for x in store.list_recruiters()] == [1, 2]
    assert store.update_recruiter(r.id, {"maximum_workers": 7}).maximum_workers == 7
    store.delete_recruiter(r2.id)
    assert [x.id for x in store.list_recruiters()] == [r.id]
    with pytest.raises(NotFound):
        store.delete_recruiter(r2.id)
    store.delete_batch("b")
    assert store.list_recruiters() == [], "a batch's recruiters go with it"


def test_a_machine_goes_from_creating_to_destroyed_and_its_worker_becomes_rented(store, register):
    r = store.create_recruiter({"batch": "b", "rank": 1, **FIELDS})
    m = store.add_machine("b-1", "cloud", "r1", "s4", 0.2, "key-1", r.id, "b")
    assert (m.status, m.batch, m.instance_id) == ("creating", "b", None)
    with pytest.raises(Conflict):
        store.add_machine("b-2", "cloud", "r1", "s4", 0.2, "key-1", r.id, "b")  # the same idempotency key
    m = store.update_machine(m.id, instance_id="i-9")
    m = store.update_machine(m.id, "provisioning", address="10.0.0.9")
    w = register("b-1")
    m = store.attach_worker(m.id, w.id, concurrency=4, prefetch=1)
    assert (m.status, m.worker_id) == ("running", w.id)
    worker = store.get_worker(w.id)
    assert (worker.permanent, worker.provider, worker.flavor, worker.batch, worker.concurrency) == (
        False, "cloud", "s4", "b", 4)
    with pytest.raises(Conflict, match="cannot become creating"):
        store.update_machine(m.id, "creating")
    store.update_machine(m.id, "destroying")
    store.worker_destroyed(w.id)
    m = store.update_machine(m.id, "destroyed")
    assert m.destroyed is not None and store.get_worker(w.id).status == "destroyed"
    assert store.list_machines() == [] and [x.id for x in store.list_machines(everything=True)] == [m.id]


def test_demand_counts_pending_live_and_coming_and_idle_workers_say_since_when(store, register, submit, clock):
    store.create_recruiter({"batch": "b", "rank": 1, **FIELDS})
    for _ in range(5):
        submit(batch="b")
    m = store.add_machine("b-1", "cloud", "r1", "s4", 0.2, "key-1", None, "b")
    w = register("b-1", batch="b")
    d = store.recruit_demand()
    assert (d["pending"]["b"], d["live"].get("b", 0), d["coming"]["b"]) == (5, 1, 1)
    store.update_machine(m.id, "provisioning")
    store.attach_worker(m.id, w.id, 1, 0)
    d = store.recruit_demand()
    assert (d["live"]["b"], d["coming"]["b"]) == (1, 0)
    [idle] = [x for x in store.idle_workers() if x["id"] == w.id]
    assert (idle["machine_id"], idle["batch"]) == (m.id, "b")
    claimed = store.claim(w.id, 1, LEASE)
    assert claimed and w.id not in {x["id"] for x in store.idle_workers()}, "busy: not idle"
    clock.advance(100)
    store.report(claimed[0]["id"], w.id, {"phase": "succeeded", "return_code": 0})
    [idle] = [x for x in store.idle_workers() if x["id"] == w.id]
    assert idle["idle_since"] == clock(), "idle since its last execution ended"


def test_spend_is_the_time_each_machine_was_held_times_its_price(store, register, clock):
    m = store.add_machine("b-1", "cloud", "r1", "s4", 0.36, "key-1", None, "b")
    store.update_machine(m.id, "provisioning")
    w = register("b-1")
    store.attach_worker(m.id, w.id, 1, 0)
    other = store.add_machine("b-2", "cloud", "r1", "s4", 1.8, "key-2", None, "b")
    clock.advance(3600)
    assert {x.name: x.spend for x in store.list_machines()} == {"b-1": 0.36, "b-2": 1.8}, "an hour each so far"
    assert [x.name for x in store.list_machines()] == ["b-1", "b-2"]
    store.update_machine(other.id, "failed", message="refused")  # given back: its spend stops growing
    store.update_machine(m.id, "destroying")
    store.update_machine(m.id, "destroyed")
    assert store.list_machines() == [], "failed and destroyed ones are not rented any more"
    clock.advance(7200)
    assert {x.name: x.spend for x in store.list_machines(everything=True)} == {"b-1": 0.36, "b-2": 1.8}
    worker = store.get_worker(w.id)
    assert (worker.price, worker.spend) == (0.36, 0.36)
    [batch] = [b for b in store.list_batches() if b.name == "b"]
    assert batch.spend == round(0.36 + 1.8, 4)
    assert [x for x in store.list_workers() if x.id == w.id][0].spend == 0.36
