"""Statuses, legal transitions and records."""
from __future__ import annotations

import json

import pytest

from scitq_app.errors import Conflict, Invalid
from scitq_app.models import (ACTIVE_EXECUTION_STATUSES, COUNTED_FAILURES, EXECUTION_TRANSITIONS,
                              FINAL_TASK_STATUSES, TASK_TRANSITIONS, Execution, ExecutionStatus, FailureClass,
                              OutputSlice, Task, TaskStatus, Worker, check_execution_transition,
                              check_task_transition, iso, parse_enum, unique)

ALLOWED = sorted((old, new) for old, targets in TASK_TRANSITIONS.items() for new in targets)
FORBIDDEN = [
    ("waiting", "assigned"), ("waiting", "running"), ("waiting", "succeeded"), ("waiting", "failed"),
    ("pending", "running"), ("pending", "succeeded"), ("pending", "failed"), ("pending", "uploading"),
    ("assigned", "waiting"), ("running", "assigned"), ("running", "waiting"),
    ("uploading", "running"), ("uploading", "assigned"), ("uploading", "paused"),
    ("succeeded", "failed"), ("succeeded", "running"), ("succeeded", "assigned"), ("succeeded", "canceled"),
    ("failed", "succeeded"), ("failed", "assigned"), ("failed", "paused"),
    ("canceled", "running"), ("canceled", "paused"), ("canceled", "failed"),
]


def test_every_task_status_has_its_transitions_listed():
    assert set(TASK_TRANSITIONS) == set(TaskStatus)
    assert set(EXECUTION_TRANSITIONS) == set(ExecutionStatus)


@pytest.mark.parametrize("old,new", ALLOWED, ids=[f"{o.value}->{n.value}" for o, n in ALLOWED])
def test_every_listed_task_transition_is_allowed(old, new):
    check_task_transition(1, old, new)
    check_task_transition(1, old.value, new.value)  # the DB strings work too


@pytest.mark.parametrize("old,new", FORBIDDEN, ids=[f"{o}->{n}" for o, n in FORBIDDEN])
def test_forbidden_task_transitions_raise_conflict(old, new):
    assert TaskStatus(new) not in TASK_TRANSITIONS[TaskStatus(old)]
    with pytest.raises(Conflict) as info:
        check_task_transition(7, old, new)
    assert info.value.data == {"task_id": 7, "status": old}
    assert info.value.http_status == 409
    assert f"{old} to {new}" in info.value.message


@pytest.mark.parametrize("status", list(TaskStatus))
def test_staying_in_a_status_is_not_a_transition(status):
    check_task_transition(1, status, status)


def test_finished_tasks_only_go_back_to_the_queue():
    for s in FINAL_TASK_STATUSES:
        # canceled may also end succeeded: its attempt exited 0 before the stop reached it
        extra = {TaskStatus.SUCCEEDED} if s == TaskStatus.CANCELED else set()
        assert TASK_TRANSITIONS[s] == {TaskStatus.PENDING, TaskStatus.WAITING} | extra


def test_people_can_pause_and_cancel_from_waiting_pending_assigned_running():
    for s in ("waiting", "pending", "assigned", "running"):
        assert {TaskStatus.PAUSED, TaskStatus.CANCELED} <= TASK_TRANSITIONS[TaskStatus(s)]


def test_an_unknown_status_is_refused():
    with pytest.raises(ValueError):
        check_task_transition(1, "pending", "exploded")


def test_execution_transitions_only_move_forward():
    for old, targets in EXECUTION_TRANSITIONS.items():
        for new in ExecutionStatus:
            if new in targets or new == old:
                check_execution_transition(1, old, new)
            else:
                with pytest.raises(Conflict):
                    check_execution_transition(1, old, new)
    assert EXECUTION_TRANSITIONS[ExecutionStatus.SUCCEEDED] == frozenset()
    assert set(ACTIVE_EXECUTION_STATUSES) == {ExecutionStatus.ASSIGNED, ExecutionStatus.RUNNING,
                                              ExecutionStatus.UPLOADING}


def test_only_the_tasks_own_failures_count_against_retries():
    assert COUNTED_FAILURES == {FailureClass.APP, FailureClass.TIMEOUT, FailureClass.OOM, FailureClass.STAGING}
    assert not {FailureClass.LOST, FailureClass.EVICTED, FailureClass.CANCELED, FailureClass.INFRA} & COUNTED_FAILURES


def test_status_values_are_the_database_strings():
    assert TaskStatus.PENDING == "pending" and TaskStatus("uploading") is TaskStatus.UPLOADING
    assert json.dumps(TaskStatus.FAILED) == '"failed"'


def test_iso_times_are_utc_with_milliseconds():
    assert iso(None) is None
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1_800_000_000.25) == "2027-01-15T08:00:00.250Z"
    # milliseconds truncated, as strftime's %f cut to three digits gave them
    assert [iso(t) for t in (1.9995, 1.0009, 59.9999996, 1e9 + 0.999)] == [
        "1970-01-01T00:00:01.999Z", "1970-01-01T00:00:01.000Z", "1970-01-01T00:01:00.000Z", "2001-09-09T01:46:40.999Z"]


def test_records_come_from_rows_and_go_to_json():
    row = {"id": 3, "batch": "b", "name": None, "command": "true", "status": "pending", "inputs": '["s3://a/b"]',
           "resources": "[]", "use_cache": 1, "created": 0.0, "status_changed": 1.5, "modified": None,
           "unknown_column": "ignored"}
    t = Task.from_row(row, requires=(1, 2))
    assert t.inputs == ("s3://a/b",) and t.use_cache is True and t.requires == (1, 2)
    d = t.to_dict()
    assert d["inputs"] == ["s3://a/b"] and d["requires"] == [1, 2]
    assert d["created"] == "1970-01-01T00:00:00.000Z" and d["modified"] is None
    json.dumps(d)
    with pytest.raises(AttributeError):
        t.status = "running"  # type: ignore[misc]


def test_worker_and_execution_records_parse_json_columns():
    w = Worker.from_row({"id": 1, "name": "w", "hostname": None, "status": "running", "stats": '{"load": 1}',
                         "permanent": 0})
    assert w.stats == {"load": 1} and w.permanent is False
    e = Execution.from_row({"id": 1, "task_id": 2, "attempt": 1, "worker_id": None, "status": "assigned",
                            "output_files": None})
    assert e.output_files == () and e.to_dict()["output_files"] == []


def test_output_slice_json_is_text_with_cuts():
    s = OutputSlice(1, "stdout", 0, 10, b"ab\xffc", ((2, 5),), 10, True)
    assert s.to_dict() == {"execution_id": 1, "stream": "stdout", "offset": 0, "next_offset": 10, "size": 10,
                           "complete": True, "data": "ab\ufffdc", "cuts": [[2, 5]]}


def test_parse_enum_names_the_field_and_choices():
    assert parse_enum(FailureClass, "oom", "failure_class") is FailureClass.OOM
    with pytest.raises(Invalid) as info:
        parse_enum(FailureClass, "meh", "failure_class")
    assert info.value.data["field"] == "failure_class" and "app" in info.value.message


def test_unique_keeps_the_first_of_each_in_order():
    assert unique([3, 1, 3, 2, 1]) == [3, 1, 2]
