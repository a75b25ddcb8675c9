"""The dispatcher's periodic repairs: expired leases, passed deadlines, waiting tasks
whose requirements succeeded, silent workers. Plain functions over a transaction."""
from __future__ import annotations

from ..models import (
    ACTIVE_EXECUTION_STATUSES,
    ExecutionStatus,
    FailureClass,
    SignalAction,
)
from . import admin, protocol, tasks
from .backend import Tx, dumps

_ACTIVE_EXEC = {s.value for s in ACTIVE_EXECUTION_STATUSES}


def expire_leases(tx: Tx) -> list[int]:
    ended = []
    for task, e in tasks.lock_ended(tx, tx.all("leases_expired", now=tx.now)):
        if e["status"] not in _ACTIVE_EXEC or e["lease_expires"] is None or e["lease_expires"] >= tx.now:
            continue
        protocol.end_execution(tx, task, e, ExecutionStatus.FAILED, FailureClass.LOST, {},
                            message="lease expired: worker silent")
        admin.event(tx, "execution.lost", f"task:{task['id']}",
                    {"execution_id": e["id"], "worker_id": e["worker_id"]}, "dispatcher")
        ended.append(int(e["id"]))
    return ended

def enforce_deadlines(tx: Tx, grace: float) -> list[int]:
    ended = []
    for task, e in tasks.lock_ended(tx, tx.all("deadlines_passed", now=tx.now - grace)):
        if e["status"] != ExecutionStatus.RUNNING.value:
            continue
        protocol.end_execution(tx, task, e, ExecutionStatus.FAILED, FailureClass.TIMEOUT, {},
                            message="run_timeout passed: ended by the server")
        tasks.signal(tx, e, SignalAction.KILL)
        admin.event(tx, "execution.timeout", f"task:{task['id']}", {"execution_id": e["id"]}, "dispatcher")
        ended.append(int(e["id"]))
    return ended

def release_waiting(tx: Tx) -> int:
    return tx.run("release_waiting", ids=None, now=tx.now)


def prune_events(tx: Tx, before: float, n: int) -> int:
    return tx.run("events_prune", before=before, n=n)


def prune_submissions(tx: Tx, before: float, n: int) -> int:
    """Forget up to n idempotency keys created before `before`; return how many."""
    expired = tx.all("submissions_expired", before=before, n=n)
    for s in expired:
        tx.run("task_forget_key", submit_key=tasks.submit_key(s["scope"], s["key"]))
        tx.run("submission_forget", scope=s["scope"], key=s["key"])
    return len(expired)


def fold_task_counts(tx: Tx) -> None:
    tx.run("task_counts_fold")
    tx.run("task_counts_drop_zero")


def release_after(tx: Tx, since: float) -> int:
    return tx.run("release_after", since=since, now=tx.now)

def mark_offline(tx: Tx, offline_after: float) -> list[int]:
    ids = [int(r["id"]) for r in tx.all("workers_silent", before=tx.now - offline_after)]
    if ids:
        tx.run("workers_set_offline", ids=dumps(ids), now=tx.now)
        for i in ids:
            admin.event(tx, "worker.offline", f"worker:{i}", None, "dispatcher")
    return ids
