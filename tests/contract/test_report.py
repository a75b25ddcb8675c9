"""report: phases, idempotent replays, fencing, retries, dependencies."""
from __future__ import annotations

from dataclasses import replace

import pytest

from scitq_app.errors import Conflict, Fenced, Forbidden, NotFound

from .scene import LEASE, status_of, task_spec


def test_phases_in_order_move_the_execution_and_the_task(store, start, clock):
    e = start("assigned")
    task_id, w = e["task_id"], e["worker_id"]
    clock.advance(5)
    x = store.report(e["id"], w, {"phase": "running"})
    assert (x.status, x.started) == ("running", clock())
    assert status_of(store, task_id) == "running"
    clock.advance(5)
    x = store.report(e["id"], w, {"phase": "uploading"})
    assert x.status == "uploading" and status_of(store, task_id) == "uploading"
    clock.advance(5)
    x = store.report(e["id"], w, {"phase": "succeeded", "return_code": 0, "output_files": ["a.txt", "b/c.txt"],
                                  "peak_mem": 1024, "cpu_time": 2.5})
    assert (x.status, x.return_code, x.output_files, x.peak_mem, x.cpu_time) == (
        "succeeded", 0, ("a.txt", "b/c.txt"), 1024, 2.5)
    assert (x.started, x.finished, x.lease_expires, x.failure_class) == (clock() - 10, clock(), None, None)
    t = store.get_task(task_id)
    assert (t.status, t.status_changed) == ("succeeded", clock())


@pytest.mark.parametrize("final", ["succeeded", "failed"])
def test_the_reply_to_a_report_is_the_execution_as_stored(store, start, clock, final):
    e = start("assigned", max_retries=0)
    for phase in ("running", "uploading", final):
        clock.advance(3)
        reply = store.report(e["id"], e["worker_id"], {"phase": phase, "return_code": 0, "output_files": ["o"],
                                                       "peak_mem": 5, "cpu_time": 1.5, "failure_class": None})
        stored = store.get_execution(e["id"])
        assert replace(reply, worker_name=None) == replace(stored, worker_name=None), phase


def test_a_final_report_may_skip_phases(store, start):
    e = start("assigned")
    x = store.report(e["id"], e["worker_id"], {"phase": "failed", "return_code": 127})
    assert (x.status, x.failure_class, x.return_code) == ("failed", "app", 127)
    assert status_of(store, e["task_id"]) == "failed"


@pytest.mark.parametrize("phase", ["running", "uploading", "succeeded", "failed"])
def test_the_same_report_twice_changes_nothing(store, start, clock, phase):
    e = start("assigned", max_retries=0)
    body = {"phase": phase, "return_code": 0 if phase != "failed" else 2}
    first = store.report(e["id"], e["worker_id"], body)
    task = store.get_task(e["task_id"])
    clock.advance(30)
    again = store.report(e["id"], e["worker_id"], body)
    assert again == first
    assert store.get_task(e["task_id"]) == task


@pytest.mark.parametrize("late,after", [("running", "uploading"), ("running", "succeeded"),
                                        ("uploading", "succeeded"), ("running", "failed")])
def test_an_earlier_phase_after_a_later_one_is_accepted_and_ignored(store, start, late, after):
    e = start("assigned")
    reached = store.report(e["id"], e["worker_id"], {"phase": after, "return_code": 0})
    task = store.get_task(e["task_id"])
    assert store.report(e["id"], e["worker_id"], {"phase": late}) == reached
    assert store.get_task(e["task_id"]) == task


def test_a_contradicting_final_report_is_refused(store, start):
    e = start("running")
    store.report(e["id"], e["worker_id"], {"phase": "succeeded", "return_code": 0})
    with pytest.raises(Conflict):
        store.report(e["id"], e["worker_id"], {"phase": "failed", "return_code": 1})
    assert status_of(store, e["task_id"]) == "succeeded"


@pytest.mark.parametrize("phase", ["running", "uploading", "succeeded", "failed"])
def test_a_report_on_an_execution_whose_lease_expired_is_fenced(store, start, clock, phase):
    e = start("running")
    clock.advance(LEASE + 1)
    assert store.expire_leases() == [e["id"]]
    with pytest.raises(Fenced) as info:
        store.report(e["id"], e["worker_id"], {"phase": phase, "return_code": 0})
    assert info.value.http_status == 409
    x = store.get_execution(e["id"])
    assert (x.status, x.failure_class) == ("failed", "lost")
    assert status_of(store, e["task_id"]) == "pending"


def test_a_report_from_an_old_attempt_is_fenced(store, start, register, clock):
    e = start("running", max_retries=0)
    clock.advance(LEASE + 1)
    store.expire_leases()
    [e2] = store.claim(register().id, 1, LEASE)  # the next attempt
    assert e2["task_id"] == e["task_id"] and e2["attempt"] == 2
    for phase in ("running", "uploading", "succeeded", "failed"):
        with pytest.raises(Fenced):
            store.report(e["id"], e["worker_id"], {"phase": phase, "return_code": 0})
    assert status_of(store, e["task_id"]) == "assigned"
    store.report(e2["id"], e2["worker_id"], {"phase": "succeeded", "return_code": 0})
    assert status_of(store, e["task_id"]) == "succeeded"


def test_a_worker_reporting_another_workers_execution_is_forbidden(store, start, register):
    e = start("running")
    intruder = register()
    with pytest.raises(Forbidden):
        store.report(e["id"], intruder.id, {"phase": "succeeded", "return_code": 0})
    assert store.get_execution(e["id"]).status == "running"


def test_a_report_by_a_person_names_no_worker(store, start):
    e = start("running")
    assert store.report(e["id"], None, {"phase": "succeeded", "return_code": 0}).status == "succeeded"


def test_a_report_on_an_unknown_execution_is_not_found(store):
    with pytest.raises(NotFound):
        store.report(4242, None, {"phase": "running"})


# --- retries ---------------------------------------------------------------


@pytest.mark.parametrize("fclass", ["app", "timeout", "oom", "staging"])
def test_counted_failures_spend_the_retry_budget(store, start, fclass):
    e = start("running", max_retries=2)
    w, task_id = e["worker_id"], e["task_id"]
    for used in (1, 2):
        store.report(e["id"], w, {"phase": "failed", "failure_class": fclass, "return_code": 1})
        t = store.get_task(task_id)
        assert (t.status, t.retries_used) == ("pending", used)
        [e] = store.claim(w, 1, LEASE)
        assert e["attempt"] == used + 1
    store.report(e["id"], w, {"phase": "failed", "failure_class": fclass, "return_code": 1})
    t = store.get_task(task_id)
    assert (t.status, t.retries_used, t.attempts) == ("failed", 2, 3)
    assert store.claim(w, 1, LEASE) == []


@pytest.mark.parametrize("fclass", ["lost", "evicted", "canceled", "infra"])
def test_lost_evicted_infra_and_canceled_attempts_do_not_spend_retries(store, start, fclass):
    e = start("running", max_retries=0)
    w, task_id = e["worker_id"], e["task_id"]
    for attempt in range(1, 4):
        store.report(e["id"], w, {"phase": "failed", "failure_class": fclass})
        t = store.get_task(task_id)
        assert (t.status, t.retries_used, t.attempts) == ("pending", 0, attempt)
        [e] = store.claim(w, 1, LEASE)
    store.report(e["id"], w, {"phase": "failed", "failure_class": "app"})
    assert status_of(store, task_id) == "failed"


def test_a_task_that_keeps_losing_its_worker_fails_after_the_uncounted_attempts_limit(store, start):
    from scitq_app.store.protocol import UNCOUNTED_ATTEMPTS_LIMIT
    e = start("running", max_retries=1)
    w, task_id = e["worker_id"], e["task_id"]
    for attempt in range(1, UNCOUNTED_ATTEMPTS_LIMIT):
        store.report(e["id"], w, {"phase": "failed", "failure_class": "lost"})
        assert status_of(store, task_id) == "pending", attempt
        [e] = store.claim(w, 1, LEASE)
    store.report(e["id"], w, {"phase": "failed", "failure_class": "lost"})
    t = store.get_task(task_id)
    assert (t.status, t.attempts, t.retries_used) == ("failed", UNCOUNTED_ATTEMPTS_LIMIT, 0)


def test_a_failure_without_a_class_counts_as_an_application_error(store, start):
    e = start("running", max_retries=0)
    x = store.report(e["id"], e["worker_id"], {"phase": "failed", "return_code": 3})
    assert x.failure_class == "app"
    assert status_of(store, e["task_id"]) == "failed"


def test_a_lease_expiry_does_not_spend_a_retry(store, start, clock):
    e = start("running", max_retries=0)
    clock.advance(LEASE * 2)
    store.expire_leases()
    t = store.get_task(e["task_id"])
    assert (t.status, t.retries_used) == ("pending", 0)


def test_a_paused_task_whose_attempt_fails_stays_paused(store, start):
    e = start("running", max_retries=1)
    store.signal_task(e["task_id"], "pause")
    store.report(e["id"], e["worker_id"], {"phase": "failed", "failure_class": "app"})
    t = store.get_task(e["task_id"])
    assert (t.status, t.retries_used) == ("paused", 1)
    assert store.signal_task(t.id, "resume").status == "pending"


def test_a_paused_task_whose_attempt_succeeds_is_succeeded(store, start):
    e = start("running")
    store.signal_task(e["task_id"], "pause")
    store.report(e["id"], e["worker_id"], {"phase": "succeeded", "return_code": 0})
    assert status_of(store, e["task_id"]) == "succeeded"


# --- dependencies ----------------------------------------------------------


def test_success_releases_the_tasks_waiting_for_it(store, register):
    w = register(concurrency=10)
    a, b, c, d = store.create_tasks([task_spec(ref="a", priority=10), task_spec(ref="b", priority=10),
                                     task_spec(requires=["a"]), task_spec(requires=["a", "b"])])
    by_task = {e["task_id"]: e for e in store.claim(w.id, 2, LEASE)}
    assert sorted(by_task) == [a, b]
    store.report(by_task[a]["id"], w.id, {"phase": "succeeded", "return_code": 0})
    assert (status_of(store, c), status_of(store, d)) == ("pending", "waiting")
    store.report(by_task[b]["id"], w.id, {"phase": "succeeded", "return_code": 0})
    assert status_of(store, d) == "pending"
    assert sorted(e["task_id"] for e in store.claim(w.id, 5, LEASE)) == [c, d]


def test_a_failed_requirement_leaves_dependents_waiting_and_blocked(store, start, submit):
    e = start("running", max_retries=0)
    dep = submit(requires=[e["task_id"]])
    assert store.get_task(dep).blocked is False
    store.report(e["id"], e["worker_id"], {"phase": "failed", "return_code": 1})
    t = store.get_task(dep)
    assert (t.status, t.blocked) == ("waiting", True)
    assert store.list_tasks(ids=[dep])[0].blocked is True
    assert store.release_waiting() == 0
    # relaunching the requirement unblocks it; success then releases the dependent
    store.relaunch_task(e["task_id"])
    assert store.get_task(dep).blocked is False
    [e2] = store.claim(e["worker_id"], 1, LEASE)
    store.report(e2["id"], e["worker_id"], {"phase": "succeeded", "return_code": 0})
    assert status_of(store, dep) == "pending"


def test_a_canceled_requirement_blocks_its_dependents(store, submit):
    a = submit()
    b = submit(requires=[a])
    store.signal_task(a, "stop")
    t = store.get_task(b)
    assert (t.status, t.blocked) == ("waiting", True)
