"""signal_task: pause / resume / stop / kill in every task state, and the
signals it queues for the worker holding the task."""
from __future__ import annotations

from typing import Any

import pytest

from scitq_app.errors import Conflict, Invalid, NotFound

from .scene import LEASE, status_of


@pytest.fixture
def make_state(store, submit, start, register):
    """make_state(state) -> (task_id, worker_id or None, execution_id or None)."""
    def make(state: str) -> tuple[int, Any, Any]:
        if state == "pending":
            return submit(), None, None
        if state == "waiting":
            return submit(requires=[submit(status="paused")]), None, None
        if state == "paused":
            return submit(status="paused"), None, None
        if state in ("assigned", "running", "uploading"):
            e = start(state)
            return e["task_id"], e["worker_id"], e["id"]
        if state == "paused-executing":
            e = start("running")
            store.signal_task(e["task_id"], "pause")
            ack(store, e["worker_id"])
            return e["task_id"], e["worker_id"], e["id"]
        e = start("running")
        if state == "canceled":
            store.signal_task(e["task_id"], "kill")
            ack(store, e["worker_id"])
            store.report(e["id"], e["worker_id"], {"phase": "failed", "failure_class": "canceled"})
        else:
            store.report(e["id"], e["worker_id"], {"phase": state, "return_code": 0 if state == "succeeded" else 1})
        return e["task_id"], e["worker_id"], e["id"]
    return make


def signals(store, worker_id: int | None) -> list[tuple[Any, str]]:
    if worker_id is None:
        return []
    reply = store.heartbeat(worker_id, {}, [], [], LEASE)
    return [(s["execution_id"], s["action"]) for s in reply["signals"]]


def ack(store, worker_id: int) -> None:
    reply = store.heartbeat(worker_id, {}, [], [], LEASE)
    store.heartbeat(worker_id, {}, [], [s["id"] for s in reply["signals"]], LEASE)


# state, action -> (new task status, signal queued for the worker) ; Conflict when refused
TABLE = {
    ("waiting", "pause"): ("paused", None), ("waiting", "resume"): ("waiting", None),
    ("waiting", "stop"): ("canceled", None), ("waiting", "kill"): ("canceled", None),
    ("pending", "pause"): ("paused", None), ("pending", "resume"): ("pending", None),
    ("pending", "stop"): ("canceled", None), ("pending", "kill"): ("canceled", None),
    ("paused", "pause"): ("paused", None), ("paused", "resume"): ("pending", None),
    ("paused", "stop"): ("canceled", None), ("paused", "kill"): ("canceled", None),
    ("assigned", "pause"): ("paused", "pause"), ("assigned", "resume"): ("assigned", None),
    ("assigned", "stop"): ("canceled", "term"), ("assigned", "kill"): ("canceled", "kill"),
    ("running", "pause"): ("paused", "pause"), ("running", "resume"): ("running", None),
    ("running", "stop"): ("canceled", "term"), ("running", "kill"): ("canceled", "kill"),
    ("uploading", "pause"): Conflict, ("uploading", "resume"): ("uploading", None),
    ("uploading", "stop"): ("canceled", "term"), ("uploading", "kill"): ("canceled", "kill"),
    ("paused-executing", "pause"): ("paused", None), ("paused-executing", "resume"): ("running", "resume"),
    ("paused-executing", "stop"): ("canceled", "term"), ("paused-executing", "kill"): ("canceled", "kill"),
    **{(s, a): Conflict for s in ("succeeded", "failed", "canceled") for a in ("pause", "resume", "stop", "kill")},
}


@pytest.mark.parametrize("state,action", sorted(TABLE), ids=[f"{s}-{a}" for s, a in sorted(TABLE)])
def test_signal_task_in_each_state(store, make_state, state, action):
    task_id, worker_id, execution_id = make_state(state)
    before = store.get_task(task_id)
    expected = TABLE[(state, action)]
    if expected is Conflict:
        with pytest.raises(Conflict):
            store.signal_task(task_id, action)
        assert store.get_task(task_id) == before
        assert signals(store, worker_id) == []
        return
    status, signal = expected
    t = store.signal_task(task_id, action)
    assert t.status == status == status_of(store, task_id)
    assert signals(store, worker_id) == ([(execution_id, signal)] if signal else [])
    if execution_id is not None:
        assert store.get_execution(execution_id).status in ("assigned", "running", "uploading")


def test_unknown_action_is_invalid(store, submit):
    task_id = submit()
    with pytest.raises(Invalid):
        store.signal_task(task_id, "explode")
    assert status_of(store, task_id) == "pending"


def test_signal_unknown_task_is_not_found(store):
    with pytest.raises(NotFound):
        store.signal_task(77_777, "pause")


def test_paused_task_is_not_claimed_until_resumed(store, submit, register):
    w = register()
    task_id = submit()
    store.signal_task(task_id, "pause")
    assert store.claim(w.id, 5, LEASE) == []
    store.signal_task(task_id, "resume")
    assert [e["task_id"] for e in store.claim(w.id, 5, LEASE)] == [task_id]


def test_paused_execution_reporting_progress_keeps_the_task_paused(store, start):
    e = start("assigned")
    store.signal_task(e["task_id"], "pause")
    store.report(e["id"], e["worker_id"], {"phase": "running"})
    assert status_of(store, e["task_id"]) == "paused"
    assert store.signal_task(e["task_id"], "resume").status == "running"


def test_resuming_a_paused_task_whose_requirements_are_unmet_makes_it_wait(store, submit):
    a = submit()
    b = submit(requires=[a])
    store.signal_task(b, "pause")
    assert store.signal_task(b, "resume").status == "waiting"


@pytest.mark.parametrize("failure_class", ["app", "canceled", "lost"])
def test_a_canceled_task_stays_canceled_whatever_its_failed_attempt_reports(store, start, failure_class):
    e = start("running", max_retries=3)
    store.signal_task(e["task_id"], "stop")
    store.report(e["id"], e["worker_id"], {"phase": "failed", "failure_class": failure_class, "return_code": 1})
    assert status_of(store, e["task_id"]) == "canceled"
    assert store.get_execution(e["id"]).status == "failed"


def test_a_stop_that_arrives_after_the_command_exited_0_records_the_success(store, start, submit):
    e = start("uploading")
    dependent = submit(requires=[e["task_id"]])
    store.signal_task(e["task_id"], "stop")
    store.report(e["id"], e["worker_id"], {"phase": "succeeded", "return_code": 0})
    assert status_of(store, e["task_id"]) == "succeeded"
    assert store.get_execution(e["id"]).status == "succeeded"
    assert status_of(store, dependent) == "pending"


def test_a_canceled_attempt_does_not_spend_a_retry(store, start):
    e = start("running", max_retries=0)
    store.signal_task(e["task_id"], "kill")
    store.report(e["id"], e["worker_id"], {"phase": "failed", "failure_class": "canceled", "return_code": -9})
    t = store.get_task(e["task_id"])
    assert (t.status, t.retries_used) == ("canceled", 0)
    assert store.relaunch_task(t.id).status == "pending"
