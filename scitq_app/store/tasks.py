"""Tasks, their dependencies, executions and output, as people see them."""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Sequence

from ..errors import Conflict, Invalid, NotFound
from ..models import (
    ACTIVE_EXECUTION_STATUSES,
    FINAL_TASK_STATUSES,
    TASK_ANYTIME_FIELDS,
    TASK_DEFINITION_FIELDS,
    TASK_EDITABLE_STATUSES,
    Batch,
    BatchStatus,
    Execution,
    OutputSlice,
    SignalAction,
    Task,
    TaskStatus,
    check_task_transition,
    unique,
)
from . import admin, batches
from .admin import DEFAULT_BATCH
from .backend import Tx, dumps

_ACTIVE_EXEC = {s.value for s in ACTIVE_EXECUTION_STATUSES}
_FINAL = {s.value for s in FINAL_TASK_STATUSES}
_BLOCKING = {TaskStatus.FAILED.value, TaskStatus.CANCELED.value}
_LOCK_CHUNK = 5000  # ids per locking statement (locks stay in ascending order across chunks)


def spec_row(task_id: int, batch_id: int, spec: Mapping[str, Any], status: str, now: float,
             key: str | None = None) -> dict[str, Any]:
    """The task table's columns for a validated spec."""
    return {
        "id": task_id, "batch_id": batch_id, "name": spec.get("name"), "command": spec["command"],
        "shell": spec.get("shell") or "none", "container": spec.get("container"),
        "container_options": spec.get("container_options"), "inputs": dumps(list(spec.get("inputs") or [])),
        "resources": dumps(list(spec.get("resources") or [])), "output": spec.get("output"),
        "status": status, "priority": int(spec.get("priority") or 0), "cpu": spec.get("cpu"),
        "mem": spec.get("mem"), "gpu": spec.get("gpu"), "disk": spec.get("disk"),
        "max_retries": int(spec.get("max_retries") or 0), "download_timeout": spec.get("download_timeout"),
        "run_timeout": spec.get("run_timeout"), "use_cache": 1 if spec.get("use_cache") else 0, "now": now,
        "submit_key": key,
    }


def submit_key(scope: str, key: str) -> str:
    """The task column's form of a scoped key: the separator is a control character, which
    validated keys cannot hold, so two scopes never share a stored key."""
    return f"{scope}\x1f{key}"


def _find_cycle(edges: dict[int, list[int]]) -> list[int] | None:
    """Return one cycle of the graph {node: [nodes it requires]}, or None."""
    state: dict[int, int] = {}
    for start in edges:
        if state.get(start):
            continue
        stack = [(start, iter(edges.get(start, ())))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(edges.get(nxt, ()))))
                path.append(nxt)
    return None



# --- creation -----------------------------------------------------------
_CREATE_CHUNK = 5000  # tasks validated, turned into rows and inserted at a time


class Resubmitted(Exception):
    """A concurrent first try of this idempotent submission committed while this one inserted
    its tasks: this transaction rolls back, and the request gets the first try's ids."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(f"{len(ids)} tasks already submitted under this key")
        self.ids = ids


def _digest(specs: Iterable[Mapping[str, Any]]) -> Any:
    """sha256 of dumps(list(specs)), hashed spec by spec (the same digest, without the text)."""
    h = hashlib.sha256(b"[")
    for i, s in enumerate(specs):
        h.update((b"," if i else b"") + dumps(s).encode("utf-8"))
    return h


def create_tasks(tx: Tx, specs: Sequence[Mapping[str, Any]], actor: str | None = None,
                 key: str | None = None, scope: str = "") -> list[int]:
    """Insert the tasks `specs`, all or none, reading them once and in chunks (`specs` may
    validate each task as it is read: schema.LazyItems), so that no more than a chunk's rows
    are held at a time. A bad task anywhere raises, and the transaction inserts nothing."""
    if not specs:
        return []
    where_one = len(specs) == 1
    if key is not None:
        prior = tx.value("submission_digest", scope=scope, key=key)
        if prior is not None:
            # A retried submission: the same request gets the same ids, another one is
            # refused rather than answered with ids that are not its tasks.
            return _resubmitted(tx, scope, key, prior, None, specs)
    hasher = hashlib.sha256(b"[") if key is not None else None
    stored_key = submit_key(scope, key) if key is not None else None
    batch_ids: dict[str, int] = {}
    refs: dict[str, int] = {}  # ref -> index of its task
    ids: list[int] = []
    known: dict[int, str] = {}  # status of the tasks named by id in requires
    ref_edges: dict[int, list[str]] = {}  # index -> refs it requires (resolved at the end)
    index = 0
    chunk: list[Mapping[str, Any]] = []
    it = iter(specs)
    while True:
        chunk.clear()
        for s in it:
            chunk.append(s)
            if len(chunk) == _CREATE_CHUNK:
                break
        if not chunk:
            break
        if hasher is not None:
            for n, s in enumerate(chunk, index):
                hasher.update((b"," if n else b"") + dumps(s).encode("utf-8"))
        _insert_chunk(tx, chunk, index, stored_key, where_one, batch_ids, refs, ids, known, ref_edges)
        index += len(chunk)
    deps: list[dict[str, int]] = []
    for i, wanted in ref_edges.items():
        where = "requires" if where_one else f"tasks[{i}].requires"
        for r in wanted:
            if r not in refs:  # like an unknown id: the task it names does not exist (404)
                raise NotFound(f"{where}: no task with ref {r!r} in this request", field=where)
    cycle = _find_cycle({i: [refs[r] for r in wanted] for i, wanted in ref_edges.items()})
    if cycle:
        raise Invalid("requirements form a cycle: " + " -> ".join(f"tasks[{i}]" for i in cycle),
                      field="requires")
    for i, wanted in ref_edges.items():
        deps.extend({"task_id": ids[i], "required_id": ids[refs[r]]} for r in unique(wanted))
    if deps:
        tx.many("dependency_insert", deps)
    if key is not None and hasher is not None:
        hasher.update(b"]")
        digest = hasher.hexdigest()
        if not tx.run("submission_insert", scope=scope, key=key, digest=digest, now=tx.now):
            # a concurrent first try holding the key made this insert wait for its commit
            mine = set(ids)  # this transaction sees its own tasks under the key too
            raise Resubmitted([i for i in _resubmitted(tx, scope, key, tx.value("submission_digest", scope=scope,
                                                                                 key=key), digest, specs)
                               if i not in mine])
    detail: dict[str, Any] = {"count": len(ids), "first": ids[0], "last": ids[-1]}
    admin.event(tx, "task.create", f"batch:{','.join(batch_ids)}"[:200], detail, actor)
    return ids


def _resubmitted(tx: Tx, scope: str, key: str, prior: Any, digest: str | None,
                 specs: Sequence[Mapping[str, Any]]) -> list[int]:
    if digest is None:
        h = _digest(specs)
        h.update(b"]")
        digest = h.hexdigest()
    if prior != digest:
        raise Conflict(f"idempotency key {key!r} was already used by this token for a different "
                       "request: use a new key for new tasks", key=key)
    return [int(r["id"]) for r in tx.all("task_ids_by_key", key=submit_key(scope, key))]


def _insert_chunk(tx: Tx, chunk: Sequence[Mapping[str, Any]], first: int, key: str | None, where_one: bool,
                  batch_ids: dict[str, int], refs: dict[str, int], ids: list[int], known: dict[int, str],
                  ref_edges: dict[int, list[str]]) -> None:
    """Insert the tasks `chunk`, the first of which is the request's task `first`."""
    for name in unique(s.get("batch") or DEFAULT_BATCH for s in chunk):
        if name not in batch_ids:
            batch_ids[name] = batches.batch_id(tx, name, create=True)
    for i, s in enumerate(chunk, first):
        ref = s.get("ref")
        if ref:
            if ref in refs:
                raise Invalid(f"ref {ref!r} is used by tasks {refs[ref]} and {i}", field=f"tasks[{i}].ref")
            refs[ref] = i
    wanted = [r for r in unique(r for s in chunk for r in (s.get("requires") or []) if isinstance(r, int))
              if r not in known]
    if wanted:
        for row in tx.all("task_status_by_ids", ids=dumps(wanted)):
            known[int(row["id"])] = row["status"]
    rows: list[dict[str, Any]] = []
    for i, s in enumerate(chunk, first):
        requires = s.get("requires") or []
        ready = True
        for r in requires:
            if isinstance(r, str):
                ref_edges.setdefault(i, []).append(r)
                ready = False
            elif r not in known:
                # a well-formed id naming no task: the object is missing (404), the body is not invalid
                where = "requires" if where_one else f"tasks[{i}].requires"
                raise NotFound(f"{where}: no task {r}", field=where, task_id=r)
            elif known[r] != TaskStatus.SUCCEEDED.value:
                ready = False
        if s.get("status") == TaskStatus.PAUSED.value:
            status = TaskStatus.PAUSED.value
        else:
            status = TaskStatus.PENDING.value if ready else TaskStatus.WAITING.value
        rows.append(spec_row(0, batch_ids[s.get("batch") or DEFAULT_BATCH], s, status, tx.now, key))
    # The ids last: the rows above are made while the database may still insert the previous
    # chunk (PgTx.insert_tasks), and this is the first statement that waits for it.
    chunk_ids = tx.reserve_ids("task", len(chunk))
    ids.extend(chunk_ids)
    deps: list[dict[str, int]] = []
    for task_id, row, s in zip(chunk_ids, rows, chunk):
        row["id"] = task_id
        if s.get("requires"):
            deps.extend({"task_id": task_id, "required_id": r}
                        for r in unique(r for r in s["requires"] if isinstance(r, int)))
    tx.insert_tasks(rows)
    if deps:
        tx.many("dependency_insert", deps)

# --- reading ------------------------------------------------------------
def with_deps(tx: Tx, rows: list[dict[str, Any]]) -> list[Task]:
    if not rows:
        return []
    requires: dict[int, list[int]] = {}
    blocked: set[int] = set()
    for d in tx.all("dependency_list", ids=dumps([r["id"] for r in rows])):
        requires.setdefault(d["task_id"], []).append(int(d["required_id"]))
        if d["required_status"] in _BLOCKING:
            blocked.add(d["task_id"])
    return [Task.from_row(r, requires=tuple(sorted(requires.get(r["id"], ()))),
                          blocked=r["status"] == TaskStatus.WAITING.value and r["id"] in blocked)
            for r in rows]

def task_row(tx: Tx, task_id: int, lock: bool = False) -> dict[str, Any]:
    row = tx.one("task_lock" if lock else "task_get", id=task_id)
    if row is None:
        raise NotFound(f"no task {task_id}", task_id=task_id)
    return row

def task(tx: Tx, task_id: int) -> Task:
    return with_deps(tx, [task_row(tx, task_id)])[0]

def get_task(tx: Tx, task_id: int) -> Task:
    return task(tx, task_id)

def list_tasks(tx: Tx, *, batch: str | None = None, statuses: Sequence[str] | None = None,
               name: str | None = None, ids: Sequence[int] | None = None, after: int = 0,
               limit: int = 100) -> list[Task]:
    batch_id = batches.batch_id(tx, batch) if batch is not None else None
    wanted = sorted(set(statuses)) if statuses else None
    params = {"batch_id": batch_id, "statuses": dumps(wanted) if wanted else None, "name": name,
              "ids": dumps(list(ids)) if ids is not None else None, "after": after, "limit": limit}
    if ids is not None or name is not None or not wanted:
        query = "task_list_by_ids" if ids is not None else "task_list_by_name" if name is not None \
            else "task_list_by_batch" if batch_id is not None else "task_list"
        rows = tx.all(query, status=None, **params)
    else:
        # A page per status, each read in id order from index task_status (of a batch:
        # task_batch_status), merged: a page costs its rows times the statuses asked for, however
        # many tasks have them.
        query = "task_list_by_one_status" if batch_id is None else "task_list_by_batch_one_status"
        rows = sorted((r for s in wanted for r in tx.all(query, status=s, **params)),
                      key=lambda r: int(r["id"]))[:limit]
    return with_deps(tx, rows)

def count_tasks(tx: Tx, batch: str | None = None) -> dict[str, int]:
    batch_id = batches.batch_id(tx, batch) if batch is not None else None
    return {r["status"]: int(r["n"]) for r in tx.all("task_counts", batch_id=batch_id) if int(r["n"])}

# --- changes ------------------------------------------------------------
def set_status(tx: Tx, row: Mapping[str, Any], status: TaskStatus, **extra: Any) -> None:
    check_task_transition(row["id"], row["status"], status)
    tx.run("task_set_status", id=row["id"], status=status.value, now=tx.now,
           retries_used=extra.get("retries_used", row["retries_used"]))

# LOCK ORDER. Every transaction that changes a task's or an execution's status locks the
# task rows first, then the execution rows, each set in ascending id order, and never waits
# for a task lock while it holds an execution lock. Batch signals, reports, the dispatcher's
# repairs and worker deletion follow it; the heartbeat flush locks executions (ascending)
# then workers and no task; a claim waits only for its worker's row (its tasks are taken
# SKIP LOCKED). One order means no cycle, so none of them deadlocks another on PostgreSQL
# (SQLite serialises writers with BEGIN IMMEDIATE). Holding a task's lock also freezes its
# current execution's status, since every change of that status takes the task lock first.
def lock_tasks(tx: Tx, task_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Lock these tasks in ascending id order; return their rows (deleted ones left out)."""
    ids = sorted(set(task_ids))
    rows: list[dict[str, Any]] = []
    for start in range(0, len(ids), _LOCK_CHUNK):
        rows.extend(tx.all("tasks_lock", ids=dumps(ids[start:start + _LOCK_CHUNK])))
    return rows

def lock_executions(tx: Tx, execution_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Lock these executions in ascending id order; return their rows by id."""
    ids = sorted(set(execution_ids))
    rows: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), _LOCK_CHUNK):
        rows.update((int(r["id"]), r) for r in tx.all("executions_lock", ids=dumps(ids[start:start + _LOCK_CHUNK])))
    return rows

def lock_with_executions(tx: Tx, task_ids: Sequence[int]
                          ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Lock the tasks, then their current executions (the lock order above); return each
    task's row with its active execution, or None, in ascending task id order."""
    rows = lock_tasks(tx, task_ids)
    executions = lock_executions(tx, [r["current_execution_id"] for r in rows
                                            if r["current_execution_id"] is not None])
    out = []
    for r in rows:
        e = executions.get(r["current_execution_id"]) if r["current_execution_id"] is not None else None
        out.append((r, e if e is not None and e["status"] in _ACTIVE_EXEC else None))
    return out

def lock_ended(tx: Tx, found: Sequence[Mapping[str, Any]]
                ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(task, execution) pairs for rows {id, task_id} of executions to end: every task
    locked first, then every execution (the lock order in tasks.py), in ascending ids."""
    locked = {int(t["id"]): t for t in lock_tasks(tx, [r["task_id"] for r in found])}
    executions = lock_executions(tx, [r["id"] for r in found])
    return [(locked[int(e["task_id"])], e) for _, e in sorted(executions.items())
            if int(e["task_id"]) in locked]


def queued_status(tx: Tx, task_id: int) -> TaskStatus:
    """pending if every requirement succeeded, else waiting."""
    unmet = tx.value("task_unmet_count", id=task_id)
    return TaskStatus.WAITING if unmet else TaskStatus.PENDING

def active_execution(tx: Tx, row: Mapping[str, Any], lock: bool = False) -> dict[str, Any] | None:
    if row["current_execution_id"] is None:
        return None
    e = tx.one("execution_lock" if lock else "execution_get", id=row["current_execution_id"])
    return e if e is not None and e["status"] in _ACTIVE_EXEC else None

def signal(tx: Tx, execution: Mapping[str, Any], action: SignalAction) -> None:
    if execution["worker_id"] is not None:
        tx.run("signal_insert", worker_id=execution["worker_id"], execution_id=execution["id"],
               action=action.value, now=tx.now)

def resume(tx: Tx, row: Mapping[str, Any], e: Mapping[str, Any] | None) -> None:
    """Un-pause a locked task: back to its active execution `e`'s phase (and SIGCONT), or queued."""
    if row["status"] != TaskStatus.PAUSED.value:
        return
    if e is not None:
        set_status(tx, row, TaskStatus(e["status"]))
        signal(tx, e, SignalAction.RESUME)
    else:
        set_status(tx, row, queued_status(tx, row["id"]))

def update_task(tx: Tx, task_id: int, changes: Mapping[str, Any], actor: str | None = None) -> Task:
    row = dict(task_row(tx, task_id, lock=True))
    unknown = set(changes) - TASK_DEFINITION_FIELDS - TASK_ANYTIME_FIELDS
    if unknown:
        raise Invalid("cannot be changed", field=sorted(unknown)[0])
    definition = sorted(set(changes) & TASK_DEFINITION_FIELDS)
    if definition and row["status"] not in {s.value for s in TASK_EDITABLE_STATUSES}:
        raise Conflict(f"task {task_id} is {row['status']}: {', '.join(definition)} can only change while "
                       "no worker holds it (pause or stop it first)", task_id=task_id, status=row["status"])
    if row["status"] == TaskStatus.PAUSED.value and definition and active_execution(tx, row):
        raise Conflict(f"task {task_id} is paused while executing: stop it before changing "
                       f"{', '.join(definition)}", task_id=task_id, status=row["status"])
    new = dict(row)
    for k, v in changes.items():
        if k == "batch":
            new["batch_id"] = batches.batch_id(tx, v, create=True)
        elif k in ("inputs", "resources"):
            new[k] = dumps(list(v))
        elif k == "use_cache":
            new[k] = 1 if v else 0
        else:
            new[k] = v
    tx.run("task_update", now=tx.now, **{k: new[k] for k in (
        "id", "batch_id", "name", "command", "shell", "container", "container_options", "inputs",
        "resources", "output", "priority", "cpu", "mem", "gpu", "disk", "max_retries", "download_timeout",
        "run_timeout", "use_cache")})
    admin.event(tx, "task.update", f"task:{task_id}", {"fields": sorted(changes)}, actor)
    return task(tx, task_id)

def relaunch_task(tx: Tx, task_id: int, actor: str | None = None) -> Task:
    row = task_row(tx, task_id, lock=True)
    status = row["status"]
    if status == TaskStatus.PAUSED.value and active_execution(tx, row):
        raise Conflict(f"task {task_id} is paused while executing: resume or stop it", task_id=task_id,
                       status=status)
    if status == TaskStatus.CANCELED.value and active_execution(tx, row):
        # Its attempt is still current: relaunched now, its late report would land on the new one.
        raise Conflict(f"task {task_id} is canceled but its attempt has not ended yet: relaunch it once "
                       "the worker has stopped it", task_id=task_id, status=status)
    if status not in _FINAL and status != TaskStatus.PAUSED.value:
        raise Conflict(f"task {task_id} is {status}: only a finished or paused task can be relaunched",
                       task_id=task_id, status=status)
    set_status(tx, row, queued_status(tx, task_id), retries_used=0)
    admin.event(tx, "task.relaunch", f"task:{task_id}", {"from": status}, actor)
    return task(tx, task_id)

def delete_task(tx: Tx, task_id: int, actor: str | None = None) -> None:
    row = task_row(tx, task_id, lock=True)
    if active_execution(tx, row):
        raise Conflict(f"task {task_id} is executing: stop it first", task_id=task_id, status=row["status"])
    dependents = [int(r["task_id"]) for r in tx.all("task_unfinished_dependents", id=task_id)]
    if dependents:
        shown = ", ".join(map(str, dependents[:10])) + (" ..." if len(dependents) > 10 else "")
        raise Conflict(f"task {task_id} is required by unfinished task(s) {shown}: delete those first",
                       task_id=task_id, dependents=dependents[:100])
    tx.run("task_delete", id=task_id)
    admin.event(tx, "task.delete", f"task:{task_id}", {"status": row["status"]}, actor)

def signal_task(tx: Tx, task_id: int, action: str, actor: str | None = None) -> Task:
    if action not in ("pause", "resume", "stop", "kill"):
        raise Invalid(f"unknown action {action!r}", field="action")
    row = task_row(tx, task_id, lock=True)
    control(tx, row, active_execution(tx, row, lock=True), action)
    admin.event(tx, f"task.{action}", f"task:{task_id}", {"from": row["status"]}, actor)
    return task(tx, task_id)

def control(tx: Tx, row: Mapping[str, Any], execution: Mapping[str, Any] | None, action: str,
             batch: bool = False) -> bool:
    """The one behaviour of a person's pause / resume / stop / kill of one task, whose row
    and then active execution (or None) this transaction locked; True if it applied.

    A finished or canceled task is refused (Conflict), and so is pausing an upload. For a
    batch (`batch=True`) refusals are skipped instead (a batch signal never touches such
    tasks), and stop / kill interrupt the attempt without canceling the task: its canceled
    report requeues it."""
    status = row["status"]

    def refuse(message: str) -> bool:
        if batch:
            return False
        raise Conflict(message, task_id=row["id"], status=status)

    if status in _FINAL:
        return refuse(f"task {row['id']} is already {status}")
    if action == "pause":
        if status == TaskStatus.UPLOADING.value:
            return refuse(f"task {row['id']} is uploading its results and cannot be paused")
        if status != TaskStatus.PAUSED.value:
            set_status(tx, row, TaskStatus.PAUSED)
            if execution is not None:
                signal(tx, execution, SignalAction.PAUSE)
    elif action == "resume":
        resume(tx, row, execution)
    else:
        if not batch:
            set_status(tx, row, TaskStatus.CANCELED)
        if execution is not None:
            signal(tx, execution, SignalAction.TERM if action == "stop" else SignalAction.KILL)
    return True

# --- a batch's control of its tasks --------------------------------------------
# A batch's signal to its executing tasks, as the per-task action it applies: term and kill
# interrupt the attempt without canceling the task (its canceled report requeues it).
_BATCH_ACTIONS = {SignalAction.PAUSE: "pause", SignalAction.RESUME: "resume", SignalAction.TERM: "stop",
                  SignalAction.KILL: "kill"}


def set_batch_status(tx: Tx, name: str, status: str, signal: str | None, actor: str | None) -> Batch:
    status = BatchStatus(status).value
    bid = batches.batch_row(tx, name)["id"]
    tx.run("batch_set_status", id=bid, status=status, now=tx.now)
    signal = None if signal in (None, "none") else SignalAction(signal).value
    if signal is not None and SignalAction(signal) not in _BATCH_ACTIONS:
        raise Invalid(f"a batch cannot be sent {signal!r}", field="signal")
    if status == BatchStatus.RUNNING.value:
        # `go`: resume everything the batch holds paused.
        ids = [int(r["id"]) for r in tx.all("batch_paused_tasks", batch_id=bid)]
        for row, execution in lock_with_executions(tx, ids):
            control(tx, row, execution, "resume", batch=True)
    elif signal is not None:
        # The batch's executing tasks, each changed by the per-task logic (the transition
        # check included) on rows locked tasks first, then executions, as every writer does:
        # the candidate list is read without locks and may be stale by the time a row is
        # locked (a report committed in between), so each row is judged as locked.
        ids = [int(r["id"]) for r in tx.all("batch_executing_tasks", batch_id=bid)]
        for row, execution in lock_with_executions(tx, ids):
            if execution is not None:  # queued tasks: the batch's status already keeps them unclaimed
                control(tx, row, execution, _BATCH_ACTIONS[SignalAction(signal)], batch=True)
    admin.event(tx, f"batch.{ {'running': 'go', 'paused': 'pause', 'stopped': 'stop'}[status] }",
                f"batch:{name}", {"signal": signal} if signal else None, actor)
    return batches.batches(tx, name)[0]


# --- executions and output ---------------------------------------------
def list_executions(tx: Tx, task_id: int) -> list[Execution]:
    task_row(tx, task_id)
    return [Execution.from_row(r) for r in tx.all("execution_list", task_id=task_id)]

def get_execution(tx: Tx, execution_id: int) -> Execution:
    row = tx.one("execution_get", id=execution_id)
    if row is None:
        raise NotFound(f"no execution {execution_id}", execution_id=execution_id)
    return Execution.from_row(row)

def read_output(tx: Tx, execution_id: int, stream: str, offset: int = 0,
                limit: int = 1 << 20) -> OutputSlice:
    e = tx.one("execution_get", id=execution_id)
    if e is None:
        raise NotFound(f"no execution {execution_id}", execution_id=execution_id)
    size = int(e[f"{stream}_size"])
    if offset < 0:
        offset = max(0, size + offset)
    done = bool(e[f"{stream}_done"]) or e["status"] not in _ACTIVE_EXEC
    pieces: list[bytes] = []
    cuts: list[tuple[int, int]] = []
    pos = offset
    taken = 0
    for c in tx.all("output_read", execution_id=execution_id, stream_name=stream, offset=offset):
        start, data = int(c["pos"]), bytes(c["data"])
        if start + len(data) <= pos:
            continue
        if start > pos:
            cuts.append((pos, start))
            pos = start
        piece = data[pos - start:pos - start + (limit - taken)]
        pieces.append(piece)
        pos += len(piece)
        taken += len(piece)
        if taken >= limit:
            break
    if taken < limit and pos < size and done:
        # The end of the stream that was never stored (cut by the worker's cap).
        cuts.append((pos, size))
        pos = size
    return OutputSlice(execution_id, stream, offset, pos, b"".join(pieces), tuple(cuts), size,
                       done and pos >= size)


